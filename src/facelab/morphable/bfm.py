"""The Basel Face Model in the two layouts users have: Deep3DFaceRecon's ``BFM_model_front.mat`` and Basel's ``.h5``.

``BFM_model_front.mat`` (Deep3DFaceRecon_pytorch, ``util/load_mats.py: transferBFM09``; read by its
``models/bfm.py: ParametricFaceModel``) is BFM 2009 cropped to the 35,709 front-face vertices, with the expression
basis of Guo et al. (``Exp_Pca.bin``), everything divided by 1e5 (BFM 2009 is in micrometres, so the result is in
**decimetres**) and each basis pre-multiplied by its standard deviations, so coefficients are in units of one
standard deviation. Keys (MATLAB v5 file, ``scipy.io.loadmat``):

=================  ==============  ===================================================================
``meanshape``      (1, 3N)         mean shape, xyz interleaved per vertex (x0, y0, z0, x1, ...)
``idBase``         (3N, 80)        identity basis (first 80 of BFM 2009's 199, scaled by std)
``exBase``         (3N, 64)        expression basis (first 64 of Guo et al.'s 79, scaled by std)
``meantex``        (1, 3N)         mean albedo, RGB in 0..255
``texBase``        (3N, 80)        albedo basis, 0..255 units
``tri``            (F, 3)          triangles, **1-based**
``point_buf``      (N, 8)          faces adjacent to each vertex, 1-based, padded with F + 1 (a zero-normal face
                                   appended at F when normals are averaged)
``keypoints``      (1, 68)         iBUG-68 landmark vertices, 1-based
``frontmask2_idx`` (M, 1)          optional: vertices of the smaller face region of the photometric loss, 1-based
``tri_mask2``      (F', 3)         optional: triangles inside that region (full-mesh vertex ids), 1-based
``skinmask``       (1, N)          optional: per-vertex 0/1 skin mask of the albedo regularizer
=================  ==============  ===================================================================

The Basel ``.h5`` files (BFM 2017 ``model2017-1_bfm_nomouth.h5`` / ``model2017-1_face12_nomouth.h5``, BFM 2019
``model2019_*.h5``; statismo layout, also readable for ``model2009-publicmm1-bfm.h5`` which has no expressions) hold
one group per model part, ``shape``, ``expression`` (optional) and ``color`` (optional)::

    <part>/model/mean             (3N,)    float32, xyz interleaved; millimetres (colour: RGB in [0, 1])
    <part>/model/pcaBasis         (3N, K)  **orthonormal** columns (unit norm, see eos' convert-bfm2017-to-eos.py)
    <part>/model/pcaVariance      (K,)     variance of each component
    <part>/representer/points     (3, N)   the reference mesh
    <part>/representer/cells      (3, F)   triangles, 0-based

Here the orthonormal bases are multiplied by ``sqrt(pcaVariance)`` at load, so coefficients are in standard
deviations as in the ``.mat``, and the expression mean (the mean expression offset) is added to the shape mean.

Both become the same :class:`BfmArrays` (numpy, 0-based, (N, 3) / (N, 3, K) layout) and the same :class:`Bfm`
module. The frame is BFM's: +y up, the face looks along +z.

**UVs.** Neither model file has texture coordinates; the layouts users have are read by :func:`read_bfm_uv`:

- 3DMMasSTN's ``BFM_UV.mat`` (Bas et al., "3D Morphable Models as Spatial Transformer Networks", 2017): key
  ``UV``, (53490, 2) in [0, 1], one row per vertex of the full BFM 2009 topology (face3d's processed copy holds
  the (53215, 2) rows of the 3DDFA/Guo et al. trimmed topology);
- a ``.npy`` (V, 2) per-vertex array, or an ``.obj`` with ``vt`` records and ``f v/vt`` corners.

A table with more rows than the model's vertices is mapped onto them with Deep3DFaceRecon's index files
(``util/load_mats.py: transferBFM09``): ``BFM_exp_idx.mat`` ``trimIndex`` (53215 ids into the 53490 BFM 2009
vertices, 1-based) then ``BFM_front_idx.mat`` ``idx`` (35709 ids into those 53215, 1-based), looked up beside
the model (the ``BFM/`` folder of Deep3DFaceRecon holds both) or given as ``uv_index``. The BFM front face is
one disc, so the UVs are per vertex (``faces_uv = faces``) unless an OBJ of the same triangles carries seams.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from facelab.errors import AssetFormatError
from facelab.io.assets import require_file
from facelab.io.obj import read_obj
from facelab.morphable.base import MeshOutput, MorphableModel, MorphableParams

#: The file name of Deep3DFaceRecon's model, also the main file of the synthetic stand-in.
BFM_MAT_NAME = "BFM_model_front.mat"
#: 3DMMasSTN's UV file name (looked up beside the model when ``uv_path`` is not given).
BFM_UV_NAME = "BFM_UV.mat"
#: Deep3DFaceRecon's vertex index files: (file, key, rows it selects from), applied in this order.
BFM_INDEX_FILES = (("BFM_exp_idx.mat", "trimIndex", 53490), ("BFM_front_idx.mat", "idx", 53215))
NUM_LANDMARKS = 68
#: Radians: jaw rotation of one standard deviation of the stand-in's jaw-opening mode (component 0).
SYNTHETIC_JAW_OPEN_RAD = 0.12
_MAT_REQUIRED = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "keypoints")
_UV_KEYS = ("UV", "uv", "uv_coords")
_UV_TOLERANCE = 1e-4  # UVs this far outside [0, 1] are rounding, further is a wrong file


@dataclass
class BfmParams(MorphableParams):
    """Coefficients of a BFM face, each in units of one standard deviation of its component.

    Attributes:
        identity: (B, K_id) identity coefficients (Deep3DFaceRecon: K_id = 80).
        expression: (B, K_exp) expression coefficients (Deep3DFaceRecon: 64).
        albedo: (B, K_tex) albedo coefficients (Deep3DFaceRecon: 80); None skips the albedo.
    """


@dataclass
class BfmArrays:
    """A BFM model as numpy arrays, whatever file it came from.

    Attributes:
        mean_shape: (N, 3) mean shape in ``units``.
        id_basis: (N, 3, K_id) identity basis scaled by the standard deviations.
        exp_basis: (N, 3, K_exp) expression basis scaled by the standard deviations (K_exp may be 0).
        faces: (F, 3) int64 triangles, 0-based.
        mean_albedo: (N, 3) mean per-vertex albedo, RGB in [0, 1]; None when the file has no colour model.
        albedo_basis: (N, 3, K_tex) albedo basis in [0, 1] units scaled by the standard deviations; None likewise.
        keypoints: (68,) int64 iBUG-68 landmark vertex ids, 0-based; None when unknown.
        regions: name -> (M,) int64 vertex ids (``front``, ``skin`` from the ``.mat`` when present).
        units: length unit of the shapes: ``"dm"`` for Deep3DFaceRecon's file, ``"mm"`` for the Basel ``.h5``.
    """

    mean_shape: np.ndarray
    id_basis: np.ndarray
    exp_basis: np.ndarray
    faces: np.ndarray
    mean_albedo: np.ndarray | None = None
    albedo_basis: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    units: str = "dm"

    @property
    def num_verts(self) -> int:
        return int(self.mean_shape.shape[0])


# ----------------------------------------------------------------------------------------------------------- checks
def _check(cond: bool, path: Path, msg: str) -> None:
    if not cond:
        raise AssetFormatError(f"{path}: {msg}")


def _as_index(arr, path: Path, key: str, n: int, one_based: bool) -> np.ndarray:
    """Integer index array from a (possibly float, MATLAB-style) array, converted to 0-based and range-checked."""
    a = np.asarray(arr)
    _check(a.size == 0 or np.issubdtype(a.dtype, np.number), path, f"'{key}' is not numeric (dtype {a.dtype})")
    if a.size and np.issubdtype(a.dtype, np.floating):
        _check(bool(np.all(a == np.round(a))), path, f"'{key}' holds non-integer indices")
    a = a.astype(np.int64) - (1 if one_based else 0)
    if a.size:
        base = 1 if one_based else 0
        _check(a.min() >= 0 and a.max() < n, path,
               f"'{key}' indices span [{a.min() + base}, {a.max() + base}], outside the valid {base}-based range "
               f"[{base}, {n - 1 + base}] for {n} entries")
    return a


def _basis(arr, path: Path, key: str, rows: int) -> np.ndarray:
    a = np.asarray(arr)
    _check(a.ndim == 2, path, f"'{key}' has shape {a.shape}, expected (3N, K) = ({rows}, K)")
    _check(a.shape[0] == rows, path,
           f"'{key}' has {a.shape[0]} rows but the mean has {rows} values (3 x {rows // 3} vertices): "
           "a truncated or mismatched basis")
    return a


# ----------------------------------------------------------------------------------------------------------- .mat
def read_bfm_mat(path: str | os.PathLike) -> BfmArrays:
    """Read Deep3DFaceRecon's ``BFM_model_front.mat`` (layout in the module docstring).

    Raises:
        AssetFormatError: missing keys, inconsistent shapes or indices out of range.
    """
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError as err:  # MATLAB v7.3 files are HDF5
        raise AssetFormatError(f"{path}: a MATLAB v7.3 (HDF5) file; re-save it with -v7 or scipy.io.savemat") from err
    except (ValueError, OSError, TypeError) as err:
        raise AssetFormatError(f"{path}: not a readable MATLAB .mat file ({err})") from err
    missing = [k for k in _MAT_REQUIRED if k not in mat]
    found = sorted(k for k in mat if not k.startswith("__"))
    _check(not missing, path, f"not Deep3DFaceRecon's BFM_model_front.mat: missing keys {missing} (found {found})")

    mean = np.asarray(mat["meanshape"], dtype=np.float64).reshape(-1)
    _check(mean.size % 3 == 0 and mean.size > 0, path, f"'meanshape' has {mean.size} values, not a multiple of 3")
    n, rows = mean.size // 3, mean.size
    id_basis = _basis(mat["idBase"], path, "idBase", rows)
    exp_basis = _basis(mat["exBase"], path, "exBase", rows)
    tex_basis = _basis(mat["texBase"], path, "texBase", rows)
    mean_tex = np.asarray(mat["meantex"], dtype=np.float64).reshape(-1)
    _check(mean_tex.size == rows, path, f"'meantex' has {mean_tex.size} values, expected {rows}")

    tri = np.asarray(mat["tri"])
    _check(tri.ndim == 2 and tri.shape[1] == 3, path, f"'tri' has shape {tri.shape}, expected (F, 3)")
    faces = _as_index(tri, path, "tri", n, one_based=True)
    keypoints = _as_index(np.asarray(mat["keypoints"]).reshape(-1), path, "keypoints", n, one_based=True)
    _check(keypoints.size == NUM_LANDMARKS, path, f"'keypoints' has {keypoints.size} entries, expected 68")
    if "point_buf" in mat:  # not needed here (normals are computed from faces), but a wrong one means a wrong file
        pb = np.asarray(mat["point_buf"])
        _check(pb.ndim == 2 and pb.shape[0] == n, path, f"'point_buf' has shape {pb.shape}, expected ({n}, 8)")
        _as_index(pb, path, "point_buf", len(faces) + 1, one_based=True)

    regions = {}
    if "frontmask2_idx" in mat:
        regions["front"] = _as_index(np.asarray(mat["frontmask2_idx"]).reshape(-1), path, "frontmask2_idx", n, True)
    if "skinmask" in mat:
        skin = np.asarray(mat["skinmask"]).reshape(-1)
        _check(skin.size == n, path, f"'skinmask' has {skin.size} entries, expected one per vertex ({n})")
        regions["skin"] = np.flatnonzero(skin > 0).astype(np.int64)

    return BfmArrays(
        mean_shape=mean.reshape(n, 3),
        id_basis=id_basis.reshape(n, 3, -1),
        exp_basis=exp_basis.reshape(n, 3, -1),
        faces=faces,
        mean_albedo=mean_tex.reshape(n, 3) / 255.0,
        albedo_basis=tex_basis.reshape(n, 3, -1) / 255.0,
        keypoints=keypoints,
        regions=regions,
        units="dm",
    )


def vertex_face_table(faces: np.ndarray, num_verts: int, width: int = 8) -> np.ndarray:
    """Deep3DFaceRecon's ``point_buf``: the faces around each vertex, 0-based, padded with ``F``.

    Args:
        faces: (F, 3) 0-based triangles.
        num_verts: N.
        width: minimum number of columns (the file has 8); widened to the largest vertex valence so that no
            adjacent face is dropped.

    Returns:
        (N, max(width, max valence)) int64; entry ``F`` means "no face" (Deep3DFaceRecon appends a zero normal there).
    """
    faces = np.asarray(faces, dtype=np.int64)
    n_faces = len(faces)
    vert = faces.reshape(-1)
    face_of = np.repeat(np.arange(n_faces), 3)
    order = np.argsort(vert, kind="stable")
    vert, face_of = vert[order], face_of[order]
    counts = np.bincount(vert, minlength=num_verts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(vert)) - starts[vert]
    table = np.full((num_verts, max(width, int(counts.max(initial=0)))), n_faces, dtype=np.int64)
    table[vert, rank] = face_of
    return table


def write_bfm_mat(
    path: str | os.PathLike,
    *,
    mean_shape: np.ndarray,
    id_base: np.ndarray,
    exp_base: np.ndarray,
    mean_tex: np.ndarray,
    tex_base: np.ndarray,
    faces: np.ndarray,
    keypoints: np.ndarray,
    skin_mask: np.ndarray | None = None,
    front_mask: np.ndarray | None = None,
) -> Path:
    """Write a model in Deep3DFaceRecon's ``BFM_model_front.mat`` layout (see the module docstring).

    Args:
        path: output file.
        mean_shape: (N, 3) in the model's units (Deep3DFaceRecon: decimetres).
        id_base: (N, 3, K_id) identity basis, already scaled by the standard deviations.
        exp_base: (N, 3, K_exp) expression basis, likewise.
        mean_tex: (N, 3) mean albedo, RGB in 0..255.
        tex_base: (N, 3, K_tex) albedo basis in 0..255 units.
        faces: (F, 3) 0-based triangles (written 1-based as ``tri``; ``point_buf`` is derived from them).
        keypoints: (68,) 0-based landmark vertex ids.
        skin_mask: optional (N,) bool mask or (M,) vertex ids of the skin region (``skinmask``).
        front_mask: optional (N,) bool mask or (M,) vertex ids of the photometric region (``frontmask2_idx``,
            and ``tri_mask2`` = the triangles with all three corners inside it).

    Returns:
        The written path.
    """
    import scipy.io

    mean_shape = np.asarray(mean_shape, dtype=np.float32)
    n = mean_shape.shape[0]
    faces = np.asarray(faces, dtype=np.int64)
    keypoints = np.asarray(keypoints, dtype=np.int64).reshape(-1)
    if mean_shape.shape != (n, 3) or faces.ndim != 2 or faces.shape[1] != 3 or keypoints.shape != (NUM_LANDMARKS,):
        raise ValueError(f"expected mean_shape (N, 3), faces (F, 3), keypoints (68,); got {mean_shape.shape}, "
                         f"{faces.shape}, {keypoints.shape}")
    if faces.min() < 0 or faces.max() >= n or keypoints.min() < 0 or keypoints.max() >= n:
        raise ValueError(f"faces / keypoints must be 0-based vertex ids in [0, {n})")

    def basis(b, name):
        b = np.asarray(b, dtype=np.float32)
        if b.ndim != 3 or b.shape[:2] != (n, 3):
            raise ValueError(f"{name} must be (N, 3, K) = ({n}, 3, K), got {b.shape}")
        return b.reshape(3 * n, -1)

    data = {
        "meanshape": mean_shape.reshape(1, -1),
        "idBase": basis(id_base, "id_base"),
        "exBase": basis(exp_base, "exp_base"),
        "meantex": np.asarray(mean_tex, dtype=np.float32).reshape(1, -1),
        "texBase": basis(tex_base, "tex_base"),
        "tri": (faces + 1).astype(np.int32),
        "point_buf": (vertex_face_table(faces, n) + 1).astype(np.int32),
        "keypoints": (keypoints + 1).astype(np.int32).reshape(1, -1),
    }
    if data["meantex"].size != 3 * n:
        raise ValueError(f"mean_tex must be (N, 3) = ({n}, 3)")
    if skin_mask is not None:
        data["skinmask"] = _as_mask(skin_mask, n).astype(np.float64).reshape(1, -1)
    if front_mask is not None:
        front = _as_mask(front_mask, n)
        data["frontmask2_idx"] = (np.flatnonzero(front) + 1).astype(np.int32).reshape(-1, 1)
        data["tri_mask2"] = (faces[front[faces].all(axis=1)] + 1).astype(np.int32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), data, do_compression=False)
    return path


def _as_mask(mask_or_ids: np.ndarray, n: int) -> np.ndarray:
    a = np.asarray(mask_or_ids)
    if a.dtype == bool:
        if a.shape != (n,):
            raise ValueError(f"a boolean vertex mask must have shape ({n},), got {a.shape}")
        return a
    mask = np.zeros(n, dtype=bool)
    mask[a.astype(np.int64).reshape(-1)] = True
    return mask


# ----------------------------------------------------------------------------------------------------------- .h5
def _read_h5_part(h5, part: str, path: Path, rows: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean (3N,), basis (3N, K) scaled by sqrt(variance)) of one statismo model group, or None if absent."""
    if part not in h5:
        return None
    keys = [f"{part}/model/mean", f"{part}/model/pcaBasis", f"{part}/model/pcaVariance"]
    missing = [k for k in keys if k not in h5]
    _check(not missing, path, f"group '{part}' lacks {missing} (not a Basel/statismo .h5 model)")
    mean = np.asarray(h5[keys[0]], dtype=np.float64).reshape(-1)
    rows = mean.size if rows is None else rows
    _check(mean.size == rows, path, f"'{keys[0]}' has {mean.size} values, expected {rows}")
    basis = _basis(h5[keys[1]], path, keys[1], rows)  # kept in the file's precision (float32: ~130 MB for 2017)
    var = np.asarray(h5[keys[2]], dtype=np.float64).reshape(-1)
    _check(var.size == basis.shape[1], path,
           f"'{keys[2]}' has {var.size} entries but '{keys[1]}' has {basis.shape[1]} columns")
    _check(bool(np.all(var >= 0)), path, f"'{keys[2]}' has negative variances")
    return mean, basis * np.sqrt(var).astype(basis.dtype)[None]


def read_bfm_h5(path: str | os.PathLike) -> BfmArrays:
    """Read a Basel Face Model ``.h5`` (BFM 2017/2019 layout, see the module docstring). Units: millimetres.

    Raises:
        AssetFormatError: missing groups, inconsistent shapes or triangle indices out of range.
    """
    import h5py

    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise AssetFormatError(f"{path}: not a readable HDF5 file ({err})") from err
    with h5:
        _check("shape" in h5, path, f"no 'shape' group (found {sorted(h5.keys())}); not a Basel Face Model .h5")
        mean, id_basis = _read_h5_part(h5, "shape", path, None)
        rows = mean.size
        _check(rows % 3 == 0, path, f"'shape/model/mean' has {rows} values, not a multiple of 3")
        n = rows // 3
        expression = _read_h5_part(h5, "expression", path, rows)
        color = _read_h5_part(h5, "color", path, rows)
        cells_key = next((k for k in ("shape/representer/cells", "representer/cells") if k in h5), None)
        _check(cells_key is not None, path, "no 'shape/representer/cells' triangle list")
        cells = np.asarray(h5[cells_key])
    _check(cells.ndim == 2 and 3 in cells.shape, path, f"'{cells_key}' has shape {cells.shape}, expected (3, F)")
    faces = _as_index(cells.T if cells.shape[0] == 3 else cells, path, cells_key, n, one_based=False)
    if expression is not None:
        mean = mean + expression[0]
        exp_basis = expression[1]
    else:
        exp_basis = np.zeros((rows, 0))
    return BfmArrays(
        mean_shape=mean.reshape(n, 3),
        id_basis=id_basis.reshape(n, 3, -1),
        exp_basis=exp_basis.reshape(n, 3, -1),
        faces=faces,
        mean_albedo=None if color is None else color[0].reshape(n, 3),
        albedo_basis=None if color is None else color[1].reshape(n, 3, -1),
        units="mm",
    )


def write_bfm_h5(
    path: str | os.PathLike,
    *,
    mean_shape: np.ndarray,
    shape_basis: np.ndarray,
    shape_variance: np.ndarray,
    faces: np.ndarray,
    exp_mean: np.ndarray | None = None,
    exp_basis: np.ndarray | None = None,
    exp_variance: np.ndarray | None = None,
    color_mean: np.ndarray | None = None,
    color_basis: np.ndarray | None = None,
    color_variance: np.ndarray | None = None,
) -> Path:
    """Write a model in the Basel ``.h5`` layout of BFM 2017/2019 (see the module docstring).

    Args:
        path: output file.
        mean_shape: (N, 3) millimetres.
        shape_basis: (N, 3, K_id) with orthonormal columns once flattened to (3N, K_id), as Basel stores it.
        shape_variance: (K_id,) variance of each component.
        faces: (F, 3) 0-based triangles (written as the (3, F) ``representer/cells`` of every group).
        exp_mean, exp_basis, exp_variance: optional expression model: (N, 3) mean offset, (N, 3, K_exp), (K_exp,).
        color_mean, color_basis, color_variance: optional colour model: (N, 3) RGB in [0, 1], (N, 3, K_tex), (K_tex,).

    Returns:
        The written path.
    """
    import h5py

    mean_shape = np.asarray(mean_shape, dtype=np.float32)
    n = mean_shape.shape[0]
    faces = np.asarray(faces, dtype=np.int64)
    if faces.min() < 0 or faces.max() >= n:
        raise ValueError(f"faces must be 0-based vertex ids in [0, {n})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = {"shape": (mean_shape, shape_basis, shape_variance)}
    if exp_basis is not None:
        parts["expression"] = (np.zeros_like(mean_shape) if exp_mean is None else exp_mean, exp_basis, exp_variance)
    if color_basis is not None:
        parts["color"] = (color_mean, color_basis, color_variance)
    with h5py.File(path, "w") as h5:
        for part, (mean, basis, var) in parts.items():
            basis = np.asarray(basis, dtype=np.float32)
            if basis.ndim != 3 or basis.shape[:2] != (n, 3):
                raise ValueError(f"{part} basis must be (N, 3, K) = ({n}, 3, K), got {basis.shape}")
            h5[f"{part}/model/mean"] = np.asarray(mean, dtype=np.float32).reshape(-1)
            h5[f"{part}/model/pcaBasis"] = basis.reshape(3 * n, -1)
            h5[f"{part}/model/pcaVariance"] = np.asarray(var, dtype=np.float32).reshape(-1)
            h5[f"{part}/representer/points"] = mean_shape.T.copy()
            h5[f"{part}/representer/cells"] = faces.T.astype(np.uint32)
    return path


def read_bfm(path: str | os.PathLike) -> BfmArrays:
    """Read either layout, chosen by the file's extension (``.h5``/``.hdf5`` Basel, anything else ``.mat``)."""
    path = Path(path)
    return read_bfm_h5(path) if path.suffix.lower() in (".h5", ".hdf5") else read_bfm_mat(path)


def _read_keypoints(keypoints: str | os.PathLike | list[int], n: int) -> np.ndarray:
    """68 0-based vertex ids from a list, a ``.npy``, a ``.json`` list or a whitespace-separated text file."""
    if isinstance(keypoints, (str, os.PathLike)):
        p = require_file(keypoints, what="BFM landmark vertex ids", config_key="keypoints", family="bfm")
        if p.suffix == ".npy":
            ids = np.load(p, allow_pickle=False)
        elif p.suffix == ".json":
            ids = np.asarray(json.loads(p.read_text()))
        else:
            ids = np.loadtxt(p)
        source = p
    else:
        ids, source = np.asarray(keypoints), Path("keypoints")
    ids = _as_index(np.asarray(ids).reshape(-1), source, "keypoints", n, one_based=False)
    _check(ids.size == NUM_LANDMARKS, source, f"{ids.size} landmark vertex ids, expected 68 (iBUG order, 0-based)")
    return ids


def _resolve_model_path(model_path: str | os.PathLike) -> Path:
    spec = str(model_path)
    if spec.startswith("synthetic"):
        from facelab.morphable.synthetic import synthetic_asset_dir

        size = spec.split(":", 1)[1] if ":" in spec else "full"
        return synthetic_asset_dir("bfm", size=size) / BFM_MAT_NAME
    return require_file(model_path, what="BFM model (BFM_model_front.mat or a Basel .h5)", config_key="model_path",
                        family="bfm")


# ----------------------------------------------------------------------------------------------------------- UVs
def _read_index_file(path: Path, key: str | None = None) -> np.ndarray:
    """0-based vertex ids from a MATLAB index file (``idx`` / ``trimIndex``, 1-based), a ``.npy`` or a text file
    (0-based)."""
    if path.suffix.lower() == ".mat":
        import scipy.io

        try:
            mat = scipy.io.loadmat(str(path))
        except (ValueError, OSError, TypeError, NotImplementedError) as err:
            raise AssetFormatError(f"{path}: not a readable MATLAB .mat file ({err})") from err
        names = [k for k in mat if not k.startswith("__")]
        name = key if key in mat else next((k for k in ("idx", "trimIndex", "index") if k in mat), None)
        if name is None and len(names) == 1:
            name = names[0]
        _check(name is not None, path, f"no vertex index array: expected key 'idx' or 'trimIndex' (found {names})")
        ids, one_based = np.asarray(mat[name]).reshape(-1), True
    elif path.suffix.lower() == ".npy":
        ids, one_based = np.load(path, allow_pickle=False).reshape(-1), False
    else:
        ids, one_based = np.loadtxt(path).reshape(-1), False
    _check(ids.size > 0, path, "empty vertex index list")
    return _as_index(ids, path, "vertex index", int(np.max(ids)) + (0 if one_based else 1), one_based)


def _read_uv_table(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(rows (N, 2), obj_faces, obj_faces_uv): the per-vertex UV table of a ``.mat``/``.npy``/``.obj``; for an OBJ
    also its triangles and per-corner UVs (the per-vertex table then has NaN rows for vertices no face uses)."""
    suffix = path.suffix.lower()
    if suffix == ".obj":
        obj = read_obj(path)
        _check(len(obj.uv) > 0, path, "no 'vt' texture coordinates (or faces without '/vt' corners)")
        table = np.full((len(obj.verts), 2), np.nan)
        table[obj.faces.reshape(-1)] = obj.uv[obj.faces_uv.reshape(-1)]
        seams = np.abs(table[obj.faces.reshape(-1)] - obj.uv[obj.faces_uv.reshape(-1)]).max(initial=0.0)
        if seams > _UV_TOLERANCE:  # some vertex has several uvs: per-vertex transfer is impossible
            table = None
        return table, obj.faces, obj.uv[obj.faces_uv]
    if suffix == ".npy":
        table = np.load(path, allow_pickle=False)
    elif suffix == ".mat":
        import scipy.io

        try:
            mat = scipy.io.loadmat(str(path))
        except (ValueError, OSError, TypeError, NotImplementedError) as err:
            raise AssetFormatError(f"{path}: not a readable MATLAB .mat file ({err})") from err
        key = next((k for k in _UV_KEYS if k in mat), None)
        _check(key is not None, path, f"no UV array: expected key 'UV' as in 3DMMasSTN's BFM_UV.mat "
               f"(found {sorted(k for k in mat if not k.startswith('__'))})")
        table = mat[key]
    else:
        raise AssetFormatError(f"{path}: unknown UV file type '{suffix}' (expected BFM_UV.mat, a .npy (V, 2) array "
                               "or an .obj with vt records)")
    table = np.asarray(table)
    _check(np.issubdtype(table.dtype, np.number), path, f"UV array is not numeric (dtype {table.dtype})")
    if table.ndim == 2 and table.shape[0] == 2 and table.shape[1] != 2:
        table = table.T  # MATLAB (2, N) layout
    _check(table.ndim == 2 and table.shape[1] == 2, path, f"UV array has shape {table.shape}, expected (N, 2)")
    return table.astype(np.float64), None, None


def _index_chain(uv_index, n_rows: int, folders: list[Path]) -> list[tuple[Path, str | None]]:
    """The index files mapping ``n_rows`` UV rows to the model: the given ones, or Deep3DFaceRecon's found in
    ``folders`` (``trimIndex`` then ``idx`` for 53490 rows, ``idx`` alone for 53215)."""
    if uv_index is not None:
        paths = [uv_index] if isinstance(uv_index, (str, os.PathLike)) else list(uv_index)
        return [(require_file(p, what="BFM vertex index file (e.g. Deep3DFaceRecon's BFM_front_idx.mat)",
                              config_key="uv_index", family="bfm"), None) for p in paths]
    start = next((i for i, (_, _, rows) in enumerate(BFM_INDEX_FILES) if rows == n_rows), None)
    if start is None:
        return []
    chain = []
    for name, key, _ in BFM_INDEX_FILES[start:]:
        found = next((f / name for f in folders if (f / name).is_file()), None)
        if found is None:
            return []
        chain.append((found, key))
    return chain


def read_bfm_uv(
    path: str | os.PathLike,
    faces: np.ndarray,
    num_verts: int,
    uv_index: str | os.PathLike | list | None = None,
    search_dirs: list[str | os.PathLike] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """A BFM UV layout (see the module docstring) mapped onto a model's vertices.

    Args:
        path: ``BFM_UV.mat`` (key ``UV``), a ``.npy`` (N, 2) array or an ``.obj`` with ``vt`` records.
        faces: (F, 3) 0-based triangles of the model.
        num_verts: V, the model's vertex count.
        uv_index: index file(s) from the table's N rows to the V vertices, applied in order (each selects rows of
            the previous selection: ``[BFM_exp_idx.mat, BFM_front_idx.mat]`` for 3DMMasSTN's 53490 rows and the
            35709-vertex front model); None: Deep3DFaceRecon's files in ``search_dirs`` when N needs them.
        search_dirs: folders to look for Deep3DFaceRecon's index files in.

    Returns:
        uv (T, 2) in [0, 1], v up, and faces_uv (F, 3) per-corner indices into it.

    Raises:
        MissingAssetError: ``path`` or an index file does not exist (config keys ``uv_path`` / ``uv_index``).
        AssetFormatError: unreadable file, wrong shape, UVs outside [0, 1] or not finite, a table that cannot be
            mapped onto the model's vertices.
    """
    path = require_file(path, what="BFM UV layout (3DMMasSTN's BFM_UV.mat, a (V, 2) .npy or an OBJ with vt)",
                        config_key="uv_path", family="bfm")
    faces = np.asarray(faces, dtype=np.int64)
    table, obj_faces, obj_corner_uv = _read_uv_table(path)
    if obj_faces is not None and obj_faces.shape == faces.shape and np.array_equal(obj_faces, faces):
        uv, faces_uv = np.unique(obj_corner_uv.reshape(-1, 2), axis=0, return_inverse=True)
        faces_uv = faces_uv.reshape(-1, 3)  # the OBJ's own per-corner layout (seams kept)
    else:
        _check(table is not None, path, "the OBJ has UV seams (vertices with several vt) and its triangles differ "
               f"from the model's ({len(obj_faces) if obj_faces is not None else 0} vs {len(faces)}): per-vertex "
               "UVs cannot be transferred")
        n_rows = len(table)
        chain = _index_chain(uv_index, n_rows, [Path(d) for d in search_dirs])
        if n_rows != num_verts or uv_index is not None:
            _check(bool(chain), path,
                   f"{n_rows} UV rows for a model of {num_verts} vertices, and no vertex index maps them: give "
                   f"uv_index (Deep3DFaceRecon's {BFM_INDEX_FILES[0][0]} and/or {BFM_INDEX_FILES[1][0]}), or put "
                   f"those files beside the model")
            sel = np.arange(n_rows)
            for index_path, key in chain:
                ids = _read_index_file(index_path, key)
                _check(ids.max() < len(sel), index_path,
                       f"vertex ids up to {ids.max() + 1} select from only {len(sel)} rows (UV table {path}): the "
                       "index files do not match this UV table or are in the wrong order")
                sel = sel[ids]
            _check(len(sel) == num_verts, chain[-1][0],
                   f"the index files select {len(sel)} vertices but the model has {num_verts}")
            table = table[sel]
        uv, faces_uv = table.copy(), faces.copy()
        unused = np.ones(len(uv), dtype=bool)
        unused[faces.reshape(-1)] = False
        _check(bool(np.isfinite(uv[~unused]).all()), path,
               "UVs of the model's triangles hold NaN or infinite values (or a vertex of an OBJ without a vt)")
        uv[unused] = 0.0  # vertices no triangle uses
    _check(bool(np.isfinite(uv).all()), path, "UVs hold NaN or infinite values")
    lo, hi = float(uv.min()), float(uv.max())
    _check(lo >= -_UV_TOLERANCE and hi <= 1 + _UV_TOLERANCE, path,
           f"UVs span [{lo:.4g}, {hi:.4g}], expected [0, 1] (normalised texture coordinates, v up)")
    extent = uv[faces_uv.reshape(-1)].max(axis=0) - uv[faces_uv.reshape(-1)].min(axis=0)
    _check(bool((extent > 1e-6).all()), path, f"the UV layout is degenerate (extent {extent.tolist()})")
    return np.clip(uv, 0.0, 1.0), faces_uv


def write_bfm_uv(path: str | os.PathLike, uv: np.ndarray) -> Path:
    """Write per-vertex UVs (V, 2) in 3DMMasSTN's ``BFM_UV.mat`` layout (key ``UV``, float64, v up)."""
    import scipy.io

    uv = np.asarray(uv, dtype=np.float64)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"uv must be (V, 2), got {uv.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"UV": uv}, do_compression=False)
    return path


# ----------------------------------------------------------------------------------------------------------- module
class Bfm(MorphableModel):
    """The Basel Face Model as a module: ``verts = mean + [id, exp] @ shape_basis`` (one GEMM), albedo likewise.

    Buffers (moved and cast by ``.to``; left out of ``state_dict``, as they are rebuilt from the asset file):
        mean_shape: (3V,) mean shape, xyz interleaved, recentred if asked.
        shape_basis: (K_id + K_exp, 3V) identity then expression basis (standard-deviation units).
        mean_albedo: (3V,) and albedo_basis: (K_tex, 3V) in [0, 1] units; (0,) / (0, 3V) without a colour model.
        keypoints: (68,) long landmark vertex ids; (0,) when unknown.
        faces (F, 3); uv (T, 2) / faces_uv (F, 3) from ``uv_path`` (empty (0, 2) / (0, 3) without one).
    Regions: ``face`` (every vertex), plus ``front`` and ``skin`` from Deep3DFaceRecon's file when present.

    Args:
        model_path: ``BFM_model_front.mat`` or a Basel ``.h5``; ``"synthetic"`` (or ``"synthetic:tiny"``) for the
            generated stand-in.
        num_id: identity components to use (None: all in the file; at most that many).
        num_exp: expression components (None: all).
        num_tex: albedo components (None: all; 0 without a colour model).
        recenter: subtract the centroid of the mean shape (Deep3DFaceRecon's default, which its camera at distance
            10 dm assumes).
        keypoints: 68 0-based landmark vertex ids (list, ``.npy``, ``.json`` or text file); overrides the
            ``.mat``'s ``keypoints``; the ``.h5`` has none, so without it ``landmarks68`` is None.
        uv_path: the UV layout (3DMMasSTN's ``BFM_UV.mat``, a (V, 2) ``.npy`` or an ``.obj`` with ``vt``; see
            :func:`read_bfm_uv`); None: ``BFM_UV.mat`` beside the model if there is one (the synthetic stand-in
            has one), else no UVs.
        uv_index: vertex index file(s) mapping a larger UV table onto this model (see :func:`read_bfm_uv`); None:
            Deep3DFaceRecon's ``BFM_exp_idx.mat`` / ``BFM_front_idx.mat`` beside the model or the UV file.
    """

    params_type = BfmParams
    _synthetic_expression_start = 1  # the stand-in's component 0 opens the jaw
    _synthetic_jaw_open = (0, SYNTHETIC_JAW_OPEN_RAD)

    def __init__(
        self,
        model_path: str = "synthetic",
        num_id: int | None = None,
        num_exp: int | None = None,
        num_tex: int | None = None,
        recenter: bool = True,
        keypoints: str | list[int] | None = None,
        uv_path: str | None = None,
        uv_index: str | list[str] | None = None,
    ) -> None:
        super().__init__()
        path = _resolve_model_path(model_path)
        self.is_synthetic = str(model_path).startswith("synthetic")
        arrays = read_bfm(path)
        n = arrays.num_verts
        self.units = arrays.units
        self.num_id = _component_count(num_id, arrays.id_basis.shape[2], "num_id", "identity", path)
        self.num_exp = _component_count(num_exp, arrays.exp_basis.shape[2], "num_exp", "expression", path)
        k_tex = 0 if arrays.albedo_basis is None else arrays.albedo_basis.shape[2]
        self.num_tex = _component_count(num_tex, k_tex, "num_tex", "albedo", path)
        self.num_identity, self.num_expression, self.num_albedo = self.num_id, self.num_exp, self.num_tex

        mean = arrays.mean_shape - (arrays.mean_shape.mean(axis=0, keepdims=True) if recenter else 0.0)
        basis = np.concatenate([arrays.id_basis[..., : self.num_id], arrays.exp_basis[..., : self.num_exp]], axis=2)
        self.register_constant("mean_shape", mean.reshape(-1))
        self.register_constant("shape_basis", basis.reshape(3 * n, -1).T)
        if k_tex:
            self.register_constant("mean_albedo", arrays.mean_albedo.reshape(-1))
            self.register_constant("albedo_basis", arrays.albedo_basis[..., : self.num_tex].reshape(3 * n, -1).T)
        else:
            self.register_constant("mean_albedo", np.zeros(0))
            self.register_constant("albedo_basis", np.zeros((0, 3 * n)))
        kp = _read_keypoints(keypoints, n) if keypoints is not None else arrays.keypoints
        self.register_constant("keypoints", np.zeros(0) if kp is None else kp, torch.long)
        if uv_path is None and (path.parent / BFM_UV_NAME).is_file():
            uv_path = path.parent / BFM_UV_NAME
        uv = faces_uv = None
        if uv_path is not None:
            uv, faces_uv = read_bfm_uv(uv_path, arrays.faces, n, uv_index,
                                       search_dirs=[path.parent, Path(uv_path).expanduser().parent])
        self.register_topology(arrays.faces, uv, faces_uv)
        self.register_regions({"face": np.arange(n), **arrays.regions})

    @property
    def num_verts(self) -> int:
        return self.mean_shape.shape[0] // 3

    @property
    def id_basis(self) -> Tensor:
        """(K_id, 3V) view of the identity rows of ``shape_basis``."""
        return self.shape_basis[: self.num_id]

    @property
    def exp_basis(self) -> Tensor:
        """(K_exp, 3V) view of the expression rows of ``shape_basis``."""
        return self.shape_basis[self.num_id :]

    def _like(self) -> Tensor:
        return self.mean_shape

    def forward(self, params: BfmParams) -> MeshOutput:
        """Vertices, 68 landmarks and (with ``params.albedo``) per-vertex albedo.

        Args:
            params: identity (B, K_id), expression (B, K_exp), optional albedo (B, K_tex).

        Returns:
            MeshOutput with verts (B, V, 3) in ``self.units``, landmarks68 (B, 68, 3) (None without keypoints) and
            albedo (B, V, 3) in [0, 1] (clamped; None without ``params.albedo``).
        """
        params = self.as_params(params)
        self.check_params(params)
        coeffs = torch.cat([params.identity, params.expression], dim=1)
        verts = torch.addmm(self.mean_shape, coeffs, self.shape_basis).view(coeffs.shape[0], -1, 3)
        albedo = None
        if params.albedo is not None:
            albedo = torch.addmm(self.mean_albedo, params.albedo, self.albedo_basis).view_as(verts).clamp(0.0, 1.0)
        landmarks = verts[:, self.keypoints] if self.keypoints.numel() else None
        return MeshOutput(verts=verts, landmarks68=landmarks, albedo=albedo)

    def extra_repr(self) -> str:
        return (f"verts={self.num_verts}, faces={self.num_faces}, num_id={self.num_id}, num_exp={self.num_exp}, "
                f"num_tex={self.num_tex}, units={self.units!r}")


def _component_count(requested: int | None, available: int, arg: str, what: str, path: Path) -> int:
    if requested is None:
        return available
    if not 0 <= requested <= available:
        raise AssetFormatError(f"{path}: {arg}={requested} but the file has {available} {what} components")
    return int(requested)
