"""The FLAME asset folder as users have it (FLAME 2020 + the companion files DECA and SMIRK use).

Files (names as distributed; each path can also be given one by one):

===============================  ==========================================================================
``generic_model.pkl``            FLAME 2020, a Python-2 chumpy pickle: ``v_template`` (V,3), ``f`` (F,3),
                                 ``shapedirs`` (V,3,400 = 300 shape + 100 expression, chumpy),
                                 ``posedirs`` (V,3,36), ``J_regressor`` (J,V scipy.sparse),
                                 ``weights`` (V,J), ``kintree_table`` (2,J), ``J`` (J,3, chumpy), ...
``landmark_embedding.npy``       DECA's pickled dict: ``static_lmk_faces_idx`` (51,), ``static_lmk_bary_coords``
                                 (51,3), ``dynamic_lmk_faces_idx`` (79,17), ``dynamic_lmk_bary_coords``
                                 (79,17,3), ``full_lmk_faces_idx`` (1,68), ``full_lmk_bary_coords`` (1,68,3)
``mediapipe_landmark_embedding.npz``  SMIRK's: ``lmk_face_idx`` (105,), ``lmk_b_coords`` (105,3),
                                 ``landmark_indices`` (105,) indices into mediapipe's 478-point mesh
``FLAME_masks.pkl``              dict region name -> vertex ids (``face``, ``eye_region``, ``lips``, ...)
``l_eyelid.npy``, ``r_eyelid.npy``  (V,3) per-vertex offsets closing each upper eyelid at weight 1
``head_template.obj``            the template with UVs (``vt`` and per-corner ``f v/vt`` indices)
===============================  ==========================================================================

The 79 dynamic-contour rows are indexed by the head's yaw in whole degrees: row ``a`` for yaw ``a`` in
[0, 39] and row ``39 - a`` for yaw ``a`` in [-39, -1] (DECA's convention; yaw clamped to +-39).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse

from facelab.errors import AssetFormatError
from facelab.io.assets import require_file
from facelab.io.obj import read_obj, write_obj
from facelab.io.safe_pickle import ChumpyArray, dump_pickle_with_chumpy, load_npy, load_pickle

FLAME_FILES = {
    "model": "generic_model.pkl",
    "landmarks": "landmark_embedding.npy",
    "mediapipe": "mediapipe_landmark_embedding.npz",
    "masks": "FLAME_masks.pkl",
    "l_eyelid": "l_eyelid.npy",
    "r_eyelid": "r_eyelid.npy",
    "template": "head_template.obj",
}
NUM_SHAPE_TOTAL = 300  # FLAME 2020/2023: shapedirs[..., :300] identity, [..., 300:] expression


@dataclass
class FlameArrays:
    """Everything in a FLAME asset folder, as numpy arrays (0-based indices).

    Attributes:
        v_template: (V, 3) float, metres.
        faces: (F, 3) int.
        shapedirs: (V, 3, 300 + E) identity then expression blendshapes.
        posedirs: (V, 3, 9 * (J - 1)) pose correctives, driven by (R_j - I) of joints 1..J-1.
        j_regressor: (J, V) joint regressor (dense here; written as a scipy sparse matrix).
        weights: (V, J) skinning weights.
        parents: (J,) parent joint of each joint, -1 for the root.
        static_lmk_faces, static_lmk_bary: (51,), (51, 3) iBUG landmarks 17..67.
        dynamic_lmk_faces, dynamic_lmk_bary: (79, 17), (79, 17, 3) iBUG contour 0..16 per yaw bin.
        mp_faces, mp_bary, mp_indices: (105,), (105, 3), (105,) the mediapipe embedding.
        masks: region name -> vertex ids.
        l_eyelid, r_eyelid: (V, 3) eyelid-closing offsets.
        uv, faces_uv: (T, 2), (F, 3) the template's UVs.
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    j_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    static_lmk_faces: np.ndarray
    static_lmk_bary: np.ndarray
    dynamic_lmk_faces: np.ndarray
    dynamic_lmk_bary: np.ndarray
    mp_faces: np.ndarray | None = None
    mp_bary: np.ndarray | None = None
    mp_indices: np.ndarray | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    l_eyelid: np.ndarray | None = None
    r_eyelid: np.ndarray | None = None
    uv: np.ndarray | None = None
    faces_uv: np.ndarray | None = None

    @property
    def num_verts(self) -> int:
        return int(self.v_template.shape[0])


def write_flame_folder(out_dir: str | os.PathLike, arrays: FlameArrays) -> Path:
    """Write ``arrays`` as a FLAME asset folder in the official file formats (see module doc).

    ``shapedirs`` and ``J`` are written as chumpy arrays and ``J_regressor`` as a ``scipy.sparse.csc_matrix``,
    as in the distributed ``generic_model.pkl``. Returns the folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a = arrays
    joints = a.j_regressor @ a.v_template
    parents = np.where(a.parents < 0, 4294967295, a.parents).astype(np.int64)
    model = {
        "f": a.faces.astype(np.uint32),
        "v_template": a.v_template.astype(np.float64),
        "shapedirs": ChumpyArray(a.shapedirs.astype(np.float64)),
        "posedirs": a.posedirs.astype(np.float64),
        "J_regressor": scipy.sparse.csc_matrix(a.j_regressor.astype(np.float64)),
        "J": ChumpyArray(joints.astype(np.float64)),
        "weights": a.weights.astype(np.float64),
        "kintree_table": np.stack([parents, np.arange(len(parents))]),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    dump_pickle_with_chumpy(model, out / FLAME_FILES["model"])
    lmk = {
        "static_lmk_faces_idx": a.static_lmk_faces.astype(np.int64),
        "static_lmk_bary_coords": a.static_lmk_bary.astype(np.float64),
        "dynamic_lmk_faces_idx": a.dynamic_lmk_faces.astype(np.int64),
        "dynamic_lmk_bary_coords": a.dynamic_lmk_bary.astype(np.float64),
        "full_lmk_faces_idx": np.concatenate([a.dynamic_lmk_faces[0], a.static_lmk_faces])[None].astype(np.int64),
        "full_lmk_bary_coords": np.concatenate([a.dynamic_lmk_bary[0], a.static_lmk_bary])[None],
    }
    np.save(out / FLAME_FILES["landmarks"], lmk, allow_pickle=True)
    if a.mp_faces is not None:
        np.savez(
            out / FLAME_FILES["mediapipe"],
            lmk_face_idx=a.mp_faces.astype(np.int64),
            lmk_b_coords=a.mp_bary.astype(np.float64),
            landmark_indices=a.mp_indices.astype(np.int64),
        )
    if a.masks:
        masks = {k: np.asarray(v, dtype=np.int64) for k, v in a.masks.items()}
        dump_pickle_with_chumpy(masks, out / FLAME_FILES["masks"])
    for key in ("l_eyelid", "r_eyelid"):
        if getattr(a, key) is not None:
            np.save(out / FLAME_FILES[key], getattr(a, key).astype(np.float32))
    if a.uv is not None:
        write_obj(out / FLAME_FILES["template"], a.v_template, a.faces, uv=a.uv, faces_uv=a.faces_uv)
    return out


def _as_dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if scipy.sparse.issparse(x) else x)


def _check(cond: bool, path: Path, msg: str) -> None:
    if not cond:
        raise AssetFormatError(f"{path}: {msg}")


def _read_model_pickle(path: Path) -> dict:
    data = load_pickle(path)
    _check(isinstance(data, dict), path, "expected a FLAME model dict")
    missing = [k for k in ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
               if k not in data]
    _check(not missing, path, f"not a FLAME model pickle: missing keys {missing}")
    v = _as_dense(data["v_template"]).astype(np.float64)
    n = v.shape[0]
    _check(v.ndim == 2 and v.shape[1] == 3, path, f"v_template has shape {v.shape}, expected (V, 3)")
    faces = _as_dense(data["f"]).astype(np.int64)
    _check(faces.ndim == 2 and faces.shape[1] == 3, path, f"f has shape {faces.shape}, expected (F, 3)")
    _check(faces.min() >= 0 and faces.max() < n, path, f"face indices outside [0, {n})")
    shapedirs = _as_dense(data["shapedirs"]).astype(np.float64)
    _check(shapedirs.ndim == 3 and shapedirs.shape[:2] == (n, 3), path,
           f"shapedirs has shape {shapedirs.shape}, expected ({n}, 3, K)")
    _check(shapedirs.shape[2] > NUM_SHAPE_TOTAL, path,
           f"shapedirs has {shapedirs.shape[2]} components; FLAME 2020 has {NUM_SHAPE_TOTAL} shape + 100 expression"
           " (a truncated or pre-2020 file?)")
    weights = _as_dense(data["weights"]).astype(np.float64)
    n_joints = weights.shape[1] if weights.ndim == 2 else -1
    _check(weights.shape == (n, n_joints), path, f"weights has shape {weights.shape}, expected ({n}, J)")
    posedirs = _as_dense(data["posedirs"]).astype(np.float64)
    _check(posedirs.shape == (n, 3, 9 * (n_joints - 1)), path,
           f"posedirs has shape {posedirs.shape}, expected ({n}, 3, {9 * (n_joints - 1)})")
    j_reg = _as_dense(data["J_regressor"]).astype(np.float64)
    _check(j_reg.shape == (n_joints, n), path, f"J_regressor has shape {j_reg.shape}, expected ({n_joints}, {n})")
    kintree = _as_dense(data["kintree_table"]).astype(np.int64)
    _check(kintree.shape == (2, n_joints), path, f"kintree_table has shape {kintree.shape}, expected (2, {n_joints})")
    parents = kintree[0].copy()
    parents[(parents < 0) | (parents >= n_joints)] = -1  # the root's parent is stored as uint32 max
    _check((parents[1:] >= 0).all() and (parents[1:] < np.arange(1, n_joints)).all(), path,
           f"kintree_table parents {parents.tolist()} are not a tree ordered root-first")
    return dict(v_template=v, faces=faces, shapedirs=shapedirs, posedirs=posedirs, j_regressor=j_reg,
                weights=weights, parents=parents)


def _read_landmarks(path: Path, n_faces: int) -> dict:
    lmk = load_npy(path)
    keys = ("static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords")
    _check(isinstance(lmk, dict) and all(k in lmk for k in keys), path,
           f"expected DECA's landmark embedding dict with keys {keys}")
    out = dict(
        static_lmk_faces=np.asarray(lmk["static_lmk_faces_idx"], dtype=np.int64).reshape(-1),
        static_lmk_bary=np.asarray(lmk["static_lmk_bary_coords"], dtype=np.float64).reshape(-1, 3),
        dynamic_lmk_faces=np.asarray(lmk["dynamic_lmk_faces_idx"], dtype=np.int64),
        dynamic_lmk_bary=np.asarray(lmk["dynamic_lmk_bary_coords"], dtype=np.float64),
    )
    _check(out["static_lmk_faces"].shape == (51,) and out["static_lmk_bary"].shape == (51, 3), path,
           "static landmarks must be 51 faces with (51, 3) barycentrics")
    _check(out["dynamic_lmk_faces"].shape == (79, 17) and out["dynamic_lmk_bary"].shape == (79, 17, 3), path,
           f"dynamic contour must be (79, 17) faces and (79, 17, 3) barycentrics, got "
           f"{out['dynamic_lmk_faces'].shape} and {out['dynamic_lmk_bary'].shape}")
    for k in ("static_lmk_faces", "dynamic_lmk_faces"):
        _check(out[k].min() >= 0 and out[k].max() < n_faces, path, f"{k} outside [0, {n_faces})")
    return out


def _read_mediapipe(path: Path, n_faces: int) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            out = dict(mp_faces=z["lmk_face_idx"].astype(np.int64).reshape(-1),
                       mp_bary=z["lmk_b_coords"].astype(np.float64).reshape(-1, 3),
                       mp_indices=z["landmark_indices"].astype(np.int64).reshape(-1))
    except (KeyError, ValueError, OSError) as err:
        raise AssetFormatError(f"{path}: not a mediapipe landmark embedding (lmk_face_idx, lmk_b_coords, "
                               f"landmark_indices): {err}") from err
    n = len(out["mp_faces"])
    _check(out["mp_bary"].shape == (n, 3) and out["mp_indices"].shape == (n,), path, "inconsistent counts")
    _check(out["mp_faces"].min() >= 0 and out["mp_faces"].max() < n_faces, path, f"faces outside [0, {n_faces})")
    return out


def read_flame_folder(
    model_path: str | os.PathLike,
    landmark_path: str | os.PathLike | None = None,
    mediapipe_path: str | os.PathLike | None = None,
    masks_path: str | os.PathLike | None = None,
    l_eyelid_path: str | os.PathLike | None = None,
    r_eyelid_path: str | os.PathLike | None = None,
    template_path: str | os.PathLike | None = None,
    config_prefix: str = "",
) -> FlameArrays:
    """Read and validate FLAME asset files. Only ``model_path`` and ``landmark_path`` are required.

    Args:
        model_path: ``generic_model.pkl``.
        landmark_path: DECA's ``landmark_embedding.npy``.
        mediapipe_path, masks_path, l_eyelid_path, r_eyelid_path, template_path: optional companions; None skips.
        config_prefix: prefix of the config keys, for error messages (e.g. ``"model.init_args.flame."``).

    Raises:
        MissingAssetError: a given file does not exist (the message says where to get it).
        AssetFormatError: a file has unexpected keys, shapes or index ranges.
        UnsafePickleError: a pickle references anything but numpy/scipy/chumpy arrays.
    """

    def need(p, what, key):
        return require_file(p, what=what, config_key=config_prefix + key, family="flame")

    model_path = need(model_path, "FLAME model pickle", "model_path")
    arrays = _read_model_pickle(model_path)
    n_verts, n_faces = len(arrays["v_template"]), len(arrays["faces"])
    if landmark_path is None:
        raise AssetFormatError(f"{config_prefix}landmark_path is required (DECA's landmark_embedding.npy)")
    arrays.update(_read_landmarks(need(landmark_path, "FLAME landmark embedding", "landmark_path"), n_faces))
    if mediapipe_path is not None:
        path = need(mediapipe_path, "FLAME mediapipe landmark embedding", "mediapipe_path")
        arrays.update(_read_mediapipe(path, n_faces))
    if masks_path is not None:
        path = need(masks_path, "FLAME_masks.pkl", "masks_path")
        masks = load_pickle(path)
        _check(isinstance(masks, dict), path, "expected a dict of region name -> vertex ids")
        arrays["masks"] = {str(k): np.asarray(v, dtype=np.int64).reshape(-1) for k, v in masks.items()}
        for k, ids in arrays["masks"].items():
            _check(len(ids) == 0 or (ids.min() >= 0 and ids.max() < n_verts), path, f"region {k} out of range")
    for side, p in (("l_eyelid", l_eyelid_path), ("r_eyelid", r_eyelid_path)):
        if p is not None:
            path = need(p, f"FLAME {side} blendshape", f"{side}_path")
            arr = np.asarray(load_npy(path), dtype=np.float64)
            arr = arr.reshape(-1, 3) if arr.size == 3 * n_verts else arr  # SMIRK's are (V, 3); accept (1, V, 3)
            _check(arr.shape == (n_verts, 3), path, f"expected ({n_verts}, 3) offsets, got {arr.shape}")
            arrays[side] = arr
    if template_path is not None:
        path = need(template_path, "FLAME head template OBJ", "template_path")
        obj = read_obj(path)
        _check(len(obj.verts) == n_verts and len(obj.faces) == n_faces, path,
               f"template has {len(obj.verts)} vertices / {len(obj.faces)} faces, the model {n_verts} / {n_faces}")
        if len(obj.uv):
            arrays["uv"], arrays["faces_uv"] = obj.uv, obj.faces_uv
    return FlameArrays(**arrays)


def flame_folder_paths(folder: str | os.PathLike) -> dict[str, Path | None]:
    """The standard file paths inside a FLAME asset folder; optional companions that are absent map to None."""
    folder = Path(folder)
    paths: dict[str, Path | None] = {}
    for key, name in FLAME_FILES.items():
        p = folder / name
        paths[key] = p if (p.exists() or key in ("model", "landmarks")) else None
    return paths
