"""FaceScape's bilinear face model (Yang et al., "FaceScape", CVPR 2020), in its two distributed layouts.

A bilinear model is a Tucker-2 core ``C`` with an identity and an expression mode (FaceScape reduced only the
identity mode, keeping the 52 expressions as semantic blendshapes)::

    verts = C ×_id w_id ×_exp w_exp            (3V,) = (3V, 52, K) contracted with (K,) then (52,)

**As distributed, the core holds absolute shapes**: ``C[:, e, :]`` is expression ``e`` of every identity component,
``e = 0`` the neutral face. FaceScape's toolkit (``toolkit/src/facescape_bm.py``, the version with "Calculating the
residual converts the shape core into the residual representation", and the fitting code around the v1.3 core)
converts it at load to the **residual** form ``R[:, 0] = C[:, 0]``, ``R[:, e] = C[:, e] - C[:, 0]``, so that with
``w_exp = [1, b_1, ..., b_51]`` the mesh is the neutral face plus blendshape deltas weighted by ``b``; its fitter
keeps ``w_exp[0] = 1`` and optimises only ``b``. This module does the same (``residual_core=True`` skips the
conversion for a file that is already residual) and parameterises a face by

    ``identity``   (B, K): offset of the identity factors from ``id_mean`` in units of ``sqrt(id_var)`` (so 0 is
                   the mean identity and ``identity ~ N(0, I)`` samples FaceScape's identity prior, as its fitter's
                   prior term does);
    ``expression`` (B, 51): the blendshape weights ``b`` in [0, 1] (the neutral weight ``w_exp[0] = 1`` is
                   implicit).

**v1.6** ``facescape_bm_v1.6_847_50_52_id_front.npz`` (keys as read by ``facescape_bm.py``):

======================  ================  =================================================================
``shape_bm_core``       (3V, 52, K)       the core, axes (xyz-interleaved vertex coords, expression, identity)
``fv_indices``          (F, 3)            triangles, **1-based** (the toolkit writes them verbatim to OBJ and
                                          subtracts 1 where it indexes vertices)
``ft_indices``          (F, 3)            per-corner UV indices into ``texcoords``, 1-based
``texcoords``           (T, 2)            UVs, v up (OBJ convention); some exports name it ``vt_list``
``id_mean``, ``id_var`` (K,)              mean and variance of the 847 subjects' identity factors
``lm_list_v16``         (68,)             iBUG-68 landmark vertex ids, 0-based
``v_indices_front``     (V_f,)            vertices of the frontal face, 0-based (region ``front``)
``fv_indices_front``    (F_f, 3)          triangles of the frontal mesh, 1-based into ``v_indices_front``
``vert_num``, ...       scalars           counts; colour model (``color_bm_core``/``color_bm_mean``), symmetry and
                                          v1.0<->v1.6 vertex maps, expression GMM: not used here
======================  ================  =================================================================

**v1.0-1.3** ``core_847_50_52.npy``: the bare core stored with axes **(identity K, expression 52, 3V)** (the official
``demo_bilinear.py`` does ``core.transpose((2, 1, 0))`` to get (3V, 52, K)); the triangles and UVs come from a
mesh of that topology (``topology``: an OBJ such as one of FaceScape's TU models of the same release), the identity
statistics from ``factors_id_847_50_52.npy`` ((847, K), one row per subject; found next to the core if not given).

Units: millimetres. Frame: +y up, the face looks along +z.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from facelab.errors import AssetFormatError
from facelab.io.assets import require_file
from facelab.io.obj import read_obj
from facelab.morphable.base import MeshOutput, MorphableModel, MorphableParams

#: The v1.6 file FaceScape recommends, also the main file of the synthetic stand-in.
FACESCAPE_NPZ_NAME = "facescape_bm_v1.6_847_50_52_id_front.npz"
NUM_EXPRESSIONS = 52  # the neutral face + 51 blendshapes
NUM_LANDMARKS = 68
#: Radians: the stand-in's jaw-opening blendshape (component 0) at weight 1 (~17 degrees).
SYNTHETIC_JAW_OPEN_RAD = 0.3


@dataclass
class BilinearParams(MorphableParams):
    """Coefficients of a FaceScape face (see the module docstring for the units).

    Attributes:
        identity: (B, K_id) identity offset from ``id_mean`` in standard deviations (K_id <= the file's K, usually
            50).
        expression: (B, 51) blendshape weights (FaceScape's expression vector without its leading neutral weight 1).
        albedo: unused (FaceScape's colour model is not read); must stay None.
    """


@dataclass
class BilinearArrays:
    """A FaceScape bilinear model as numpy arrays, whatever file it came from.

    Attributes:
        core: (3V, 52, K) **residual** core: ``[:, 0]`` the neutral face, ``[:, e]`` the delta of blendshape e
            (in the file's float precision).
        faces: (F, 3) int64 triangles, 0-based.
        id_mean: (K,) mean identity factors.
        id_var: (K,) their variance; None when unknown (coefficients are then raw factor offsets).
        uv: (T, 2) UVs in [0, 1], v up; (0, 2) when absent. faces_uv: (F, 3) 0-based; (0, 3) when absent.
        landmarks: (68,) int64 landmark vertex ids, 0-based; None when absent.
        regions: name -> vertex ids (``front`` from ``v_indices_front``).
    """

    core: np.ndarray
    faces: np.ndarray
    id_mean: np.ndarray
    id_var: np.ndarray | None = None
    uv: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    faces_uv: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    landmarks: np.ndarray | None = None
    regions: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_verts(self) -> int:
        return self.core.shape[0] // 3


def core_to_residual(core: np.ndarray) -> np.ndarray:
    """(3V, 52, K) absolute core (as stored) -> residual core (neutral, then blendshape deltas)."""
    res = core - core[:, :1]
    res[:, 0] = core[:, 0]
    return res


def core_to_absolute(core: np.ndarray) -> np.ndarray:
    """Inverse of :func:`core_to_residual`: (3V, 52, K) residual core -> absolute core (the stored form)."""
    out = core + core[:, :1]
    out[:, 0] = core[:, 0]
    return out


def _to_residual_inplace(core: np.ndarray) -> np.ndarray:
    """:func:`core_to_residual` without a copy (the real v1.6 core is ~0.8 GB as float32)."""
    core[:, 1:] -= core[:, :1]
    return core


def _float_array(a) -> np.ndarray:
    """The array in its own float precision (FaceScape ships float32 or float64), writable, ints as float32."""
    a = np.asarray(a)
    a = a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float32)
    return a if a.flags.writeable else a.copy()


# ----------------------------------------------------------------------------------------------------------- checks
def _check(cond: bool, path: Path, msg: str) -> None:
    if not cond:
        raise AssetFormatError(f"{path}: {msg}")


def _index(a, path: Path, key: str, n: int, one_based: bool, shape: tuple | None = None) -> np.ndarray:
    a = np.asarray(a)
    if shape is not None:
        _check(a.ndim == len(shape) and all(s in (-1, d) for s, d in zip(shape, a.shape)), path,
               f"'{key}' has shape {a.shape}, expected {tuple('N' if s == -1 else s for s in shape)}")
    _check(np.issubdtype(a.dtype, np.number), path, f"'{key}' is not numeric (dtype {a.dtype})")
    a = np.round(a).astype(np.int64) - (1 if one_based else 0)
    if a.size:
        base = 1 if one_based else 0
        _check(a.min() >= 0 and a.max() < n, path,
               f"'{key}' indices span [{a.min() + base}, {a.max() + base}], outside the valid {base}-based range "
               f"[{base}, {n - 1 + base}] for {n} entries")
    return a


def _check_core(core: np.ndarray, path: Path, key: str) -> None:
    _check(core.ndim == 3, path, f"'{key}' has shape {core.shape}, expected (3V, 52, K)")
    _check(core.shape[1] == NUM_EXPRESSIONS, path,
           f"'{key}' has {core.shape[1]} expressions on axis 1, expected 52 (the neutral face + 51 blendshapes)")
    _check(core.shape[0] % 3 == 0 and core.shape[0] > 0, path,
           f"'{key}' axis 0 has {core.shape[0]} entries, not 3 x V vertex coordinates")


def _id_stats(id_mean, id_var, k: int, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    mean = np.asarray(id_mean, dtype=np.float64).reshape(-1)
    _check(mean.size == k, path, f"'id_mean' has {mean.size} entries but the core has {k} identity components")
    if id_var is None:
        return mean, None
    var = np.asarray(id_var, dtype=np.float64).reshape(-1)
    _check(var.size == k, path, f"'id_var' has {var.size} entries but the core has {k} identity components")
    _check(bool(np.all(var >= 0)), path, "'id_var' has negative variances")
    return mean, var


# ----------------------------------------------------------------------------------------------------------- v1.6
def read_facescape_npz(path: str | os.PathLike, residual_core: bool = False) -> BilinearArrays:
    """Read FaceScape's v1.6 ``.npz`` (layout in the module docstring).

    Args:
        path: the ``.npz``.
        residual_core: the file's core is already residual (skip the absolute -> residual conversion).

    Raises:
        AssetFormatError: missing keys, inconsistent shapes or indices out of range.
    """
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise AssetFormatError(f"{path}: not a readable .npz archive ({err})") from err
    with npz:
        keys = set(npz.files)
        missing = [k for k in ("shape_bm_core", "fv_indices") if k not in keys]
        _check(not missing, path, f"not a FaceScape v1.6 bilinear model: missing keys {missing} (found {sorted(keys)})")
        _check("id_mean" in keys, path, "no 'id_mean': the mean identity is needed to define the mean face")
        core = _float_array(npz["shape_bm_core"])
        _check_core(core, path, "shape_bm_core")
        n, k = core.shape[0] // 3, core.shape[2]
        faces = _index(npz["fv_indices"], path, "fv_indices", n, one_based=True, shape=(-1, 3))
        id_mean, id_var = _id_stats(npz["id_mean"], npz["id_var"] if "id_var" in keys else None, k, path)
        uv_key = next((key for key in ("texcoords", "vt_list") if key in keys), None)
        uv, faces_uv = np.zeros((0, 2)), np.zeros((0, 3), dtype=np.int64)
        if uv_key is not None and "ft_indices" in keys:
            uv = np.asarray(npz[uv_key], dtype=np.float64)
            _check(uv.ndim == 2 and uv.shape[1] == 2, path, f"'{uv_key}' has shape {uv.shape}, expected (T, 2)")
            faces_uv = _index(npz["ft_indices"], path, "ft_indices", len(uv), one_based=True, shape=(len(faces), 3))
        landmarks = None
        if "lm_list_v16" in keys:
            landmarks = _index(npz["lm_list_v16"], path, "lm_list_v16", n, one_based=False, shape=(NUM_LANDMARKS,))
        regions = {}
        if "v_indices_front" in keys:
            regions["front"] = _index(np.asarray(npz["v_indices_front"]).reshape(-1), path, "v_indices_front", n, False)
    return BilinearArrays(
        core=core if residual_core else _to_residual_inplace(core),
        faces=faces, id_mean=id_mean, id_var=id_var, uv=uv, faces_uv=faces_uv, landmarks=landmarks, regions=regions,
    )


def write_facescape_npz(
    path: str | os.PathLike,
    *,
    core: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray | None = None,
    faces_uv: np.ndarray | None = None,
    id_mean: np.ndarray | None = None,
    id_var: np.ndarray | None = None,
    landmarks: np.ndarray | None = None,
    front_vertices: np.ndarray | None = None,
    compress: bool = False,
) -> Path:
    """Write FaceScape's v1.6 ``.npz`` layout (the keys its ``facescape_bm.py`` reads for geometry).

    Written: ``shape_bm_core`` (float32), ``fv_indices``/``ft_indices`` (1-based), ``texcoords``, ``vert_num``,
    ``face_num``, ``id_mean``, ``id_var``, ``lm_list_v16`` and the frontal-mesh keys ``v_indices_front``,
    ``fv_indices_front``, ``ft_indices_front``, ``frontal_vert_num``, ``frontal_face_num`` when given. Not written:
    the colour model, ``facial_mask``, ``sym_dict``, the v1.0<->v1.6 vertex maps and the expression GMM.

    Args:
        path: output file.
        core: (3V, 52, K) core **in the stored, absolute form** (use :func:`core_to_absolute` on a residual core).
        faces: (F, 3) 0-based triangles.
        uv: (T, 2) UVs, v up. faces_uv: (F, 3) 0-based indices into ``uv``.
        id_mean: (K,) mean identity factors (default: zeros). id_var: (K,) their variance (default: ones).
        landmarks: (68,) 0-based landmark vertex ids. front_vertices: (V_f,) 0-based frontal-face vertex ids.
        compress: zip-deflate the arrays (``np.savez_compressed``; ``np.load`` reads both transparently).

    Returns:
        The written path.
    """
    core = np.asarray(core, dtype=np.float32)
    if core.ndim != 3 or core.shape[1] != NUM_EXPRESSIONS or core.shape[0] % 3:
        raise ValueError(f"core must be (3V, 52, K), got {core.shape}")
    n, k = core.shape[0] // 3, core.shape[2]
    faces = np.asarray(faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= n:
        raise ValueError(f"faces must be (F, 3) 0-based vertex ids in [0, {n})")
    data = {
        "shape_bm_core": core,
        "fv_indices": (faces + 1).astype(np.int32),
        "vert_num": np.int64(n),
        "face_num": np.int64(len(faces)),
        "id_mean": np.zeros(k) if id_mean is None else np.asarray(id_mean, dtype=np.float64),
        "id_var": np.ones(k) if id_var is None else np.asarray(id_var, dtype=np.float64),
    }
    if uv is not None:
        data["texcoords"] = np.asarray(uv, dtype=np.float64)
        data["ft_indices"] = (np.asarray(faces_uv, dtype=np.int64) + 1).astype(np.int32)
    if landmarks is not None:
        data["lm_list_v16"] = np.asarray(landmarks, dtype=np.int64).reshape(-1)
    if front_vertices is not None:
        front = np.asarray(front_vertices, dtype=np.int64).reshape(-1)
        new_id = np.full(n, -1, dtype=np.int64)
        new_id[front] = np.arange(len(front))
        keep = (new_id[faces] >= 0).all(axis=1)
        data.update(v_indices_front=front, fv_indices_front=(new_id[faces[keep]] + 1).astype(np.int32),
                    frontal_vert_num=np.int64(len(front)), frontal_face_num=np.int64(int(keep.sum())))
        if uv is not None:
            data["ft_indices_front"] = data["ft_indices"][keep]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compress else np.savez)(path, **data)
    return path


# ----------------------------------------------------------------------------------------------------------- v1.3
def read_facescape_core_npy(
    path: str | os.PathLike,
    topology: str | os.PathLike,
    identity_factors: str | os.PathLike | None = None,
    residual_core: bool = False,
) -> BilinearArrays:
    """Read the pre-v1.6 ``core_847_K_52.npy`` with its topology OBJ and identity factors.

    Args:
        path: the core, axes (K identity, 52 expressions, 3V); a (3V, 52, K) array is also accepted.
        topology: an OBJ with the model's V vertices (triangles and UVs are taken from it).
        identity_factors: ``factors_id_847_K_52.npy`` (subjects, K); None looks for it next to the core.
        residual_core: the core is already residual.

    Raises:
        MissingAssetError: the topology or identity factors cannot be found.
        AssetFormatError: the core's shape does not match the topology or the factors.
    """
    path = Path(path)
    try:
        core = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise AssetFormatError(f"{path}: not a readable .npy array ({err})") from err
    mesh = read_obj(require_file(topology, what="FaceScape topology OBJ (a mesh with the bilinear model's vertices)",
                                 config_key="topology", family="bilinear"))
    n = len(mesh.verts)
    _check(core.ndim == 3 and core.shape[1] == NUM_EXPRESSIONS, path,
           f"core has shape {core.shape}, expected (K, 52, 3V) as FaceScape v1.0-1.3 stores it")
    if core.shape[2] == 3 * n:
        core = core.transpose(2, 1, 0)  # (K, 52, 3V) -> (3V, 52, K), as the official demo does
    _check(core.shape[0] == 3 * n, path,
           f"core has shape {core.shape} but the topology OBJ has {n} vertices (expected an axis of {3 * n})")
    core = np.ascontiguousarray(_float_array(core))
    k = core.shape[2]
    if identity_factors is None:
        guess = path.with_name(re.sub(r"^core_", "factors_id_", path.name))
        identity_factors = guess if guess != path else path.with_name("factors_id.npy")
    fpath = require_file(identity_factors, what="FaceScape identity factors (factors_id_847_*_52.npy), needed for "
                         "the mean identity", config_key="identity_factors", family="bilinear")
    factors = np.load(fpath, allow_pickle=False)
    _check(factors.ndim == 2 and factors.shape[1] == k, fpath,
           f"identity factors have shape {factors.shape}, expected (subjects, {k})")
    return BilinearArrays(
        core=core if residual_core else _to_residual_inplace(core),
        faces=mesh.faces, id_mean=factors.mean(axis=0), id_var=factors.var(axis=0),
        uv=mesh.uv, faces_uv=mesh.faces_uv,
    )


def _resolve_model_path(model_path: str | os.PathLike) -> Path:
    spec = str(model_path)
    if spec.startswith("synthetic"):
        from facelab.morphable.synthetic import synthetic_asset_dir

        size = spec.split(":", 1)[1] if ":" in spec else "full"
        return synthetic_asset_dir("bilinear", size=size) / FACESCAPE_NPZ_NAME
    return require_file(model_path, what="FaceScape bilinear model (v1.6 .npz or core_*.npy)",
                        config_key="model_path", family="bilinear")


# ----------------------------------------------------------------------------------------------------------- module
class BilinearModel(MorphableModel):
    """FaceScape's bilinear model as a module; the bilinear form is one GEMM on the Kronecker product of the codes.

    ``verts = (w_exp ⊗ w_id) @ core`` with ``w_exp = [1, exp]`` (B, 52), ``w_id = id_mean + id * id_std`` (B, K) and
    ``core`` the residual core laid out as (52 K, 3V): the (B, 52 K) Kronecker product is tiny, and the product with
    the core is a single (B, 52K) x (52K, 3V) matrix multiply.

    Buffers (left out of ``state_dict``; rebuilt from the file): ``core`` (52 K, 3V), ``id_mean`` (K,), ``id_std``
    (K,) (ones when the file has no ``id_var``), ``landmark_ids`` (68,) ((0,) when absent), ``faces``, ``uv``,
    ``faces_uv``.
    Regions: ``head`` (every vertex), ``front`` when the file lists the frontal vertices.

    Args:
        model_path: v1.6 ``.npz`` or v1.0-1.3 ``core_*.npy``; ``"synthetic"`` (or ``"synthetic:tiny"``) for the
            generated stand-in.
        num_id: identity components exposed as coefficients (None: all K); the others stay at their mean.
        topology: the OBJ giving triangles/UVs of a ``.npy`` core (ignored for ``.npz``).
        identity_factors: ``factors_id_*.npy`` of a ``.npy`` core (default: next to it).
        residual_core: the file's core is already residual (see the module docstring).
    """

    units = "mm"
    params_type = BilinearParams
    expression_range = (0.0, 1.0)
    _synthetic_expression_start = 1  # the stand-in's blendshape 1 (component 0) opens the jaw
    _synthetic_jaw_open = (0, SYNTHETIC_JAW_OPEN_RAD)

    def __init__(
        self,
        model_path: str = "synthetic",
        num_id: int | None = None,
        topology: str | None = None,
        identity_factors: str | None = None,
        residual_core: bool = False,
    ) -> None:
        super().__init__()
        path = _resolve_model_path(model_path)
        self.is_synthetic = str(model_path).startswith("synthetic")
        if path.suffix.lower() == ".npy":
            if topology is None:
                raise AssetFormatError(f"{path}: a bare FaceScape core needs 'topology' (an OBJ of its mesh)")
            arrays = read_facescape_core_npy(path, topology, identity_factors, residual_core)
        else:
            arrays = read_facescape_npz(path, residual_core)
        n, k = arrays.num_verts, arrays.core.shape[2]
        self.num_id = k if num_id is None else int(num_id)
        if not 0 <= self.num_id <= k:
            raise AssetFormatError(f"{path}: num_id={num_id} but the core has {k} identity components")
        self.num_identity, self.num_expression = self.num_id, self.num_exp
        # (3V, 52, K) -> (52, K, 3V) -> (52 K, 3V): row e * K + k multiplies w_exp[e] * w_id[k].
        core = arrays.core.transpose(1, 2, 0).reshape(NUM_EXPRESSIONS * k, 3 * n)
        self.register_constant("core", core)
        self.register_constant("id_mean", arrays.id_mean)
        self.register_constant("id_std", np.ones(k) if arrays.id_var is None else np.sqrt(arrays.id_var))
        landmarks = np.zeros(0) if arrays.landmarks is None else arrays.landmarks
        self.register_constant("landmark_ids", landmarks, torch.long)
        self.register_topology(arrays.faces, arrays.uv, arrays.faces_uv)
        self.register_regions({"head": np.arange(n), **arrays.regions})

    @property
    def num_verts(self) -> int:
        return self.core.shape[1] // 3

    @property
    def num_exp(self) -> int:
        """Number of blendshape weights in :class:`BilinearParams` ``expression`` (51)."""
        return NUM_EXPRESSIONS - 1

    def _like(self) -> Tensor:
        return self.core

    def identity_factors(self, identity: Tensor) -> Tensor:
        """(B, K) FaceScape identity factors ``w_id`` of coefficients ``identity`` (B, K_id) (inverse of
        :meth:`coefficients_from_factors`)."""
        pad = self.id_mean.shape[0] - identity.shape[1]
        return self.id_mean + torch.nn.functional.pad(identity, (0, pad)) * self.id_std

    def coefficients_from_factors(self, id_factors: Tensor, exp_vector: Tensor) -> BilinearParams:
        """BilinearParams from FaceScape's own vectors (e.g. its fitter's output).

        Args:
            id_factors: (B, K) identity factors ``w_id``; components beyond ``num_id`` are dropped.
            exp_vector: (B, 52) expression vector whose first entry (the neutral weight) must be 1.
        """
        if not torch.allclose(exp_vector[:, 0], torch.ones_like(exp_vector[:, 0])):
            raise ValueError("FaceScape expression vectors start with the neutral weight 1; got other values")
        offset = (id_factors - self.id_mean) / self.id_std.clamp_min(torch.finfo(self.id_std.dtype).tiny)
        return BilinearParams(identity=offset[:, : self.num_id], expression=exp_vector[:, 1:])

    def forward(self, params: BilinearParams) -> MeshOutput:
        """Vertices and 68 landmarks of a batch of faces.

        Args:
            params: identity (B, K_id), expression (B, 51).

        Returns:
            MeshOutput with verts (B, V, 3) in millimetres and landmarks68 (B, 68, 3) (None if the file has none).
        """
        params = self.as_params(params)
        if params.expression.dim() == 2 and params.expression.shape[1] == NUM_EXPRESSIONS:
            raise ValueError(f"BilinearParams.expression must be (B, {self.num_exp}) blendshape weights (FaceScape's "
                             f"neutral weight 1 is implicit), got {tuple(params.expression.shape)}")
        self.check_params(params)
        b = params.batch_size
        w_id = self.identity_factors(params.identity)
        w_exp = torch.cat([params.expression.new_ones(b, 1), params.expression], dim=1)
        kron = (w_exp[:, :, None] * w_id[:, None, :]).reshape(b, -1)
        verts = (kron @ self.core).view(b, -1, 3)
        landmarks = verts[:, self.landmark_ids] if self.landmark_ids.numel() else None
        return MeshOutput(verts=verts, landmarks68=landmarks)

    def extra_repr(self) -> str:
        return f"verts={self.num_verts}, faces={self.num_faces}, num_id={self.num_id}, num_exp={self.num_exp}"

