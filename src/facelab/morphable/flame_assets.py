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
        dump_pickle_with_chumpy({k: np.asarray(v, dtype=np.int64) for k, v in a.masks.items()}, out / FLAME_FILES["masks"])
    for key in ("l_eyelid", "r_eyelid"):
        if getattr(a, key) is not None:
            np.save(out / FLAME_FILES[key], getattr(a, key).astype(np.float32))
    if a.uv is not None:
        write_obj(out / FLAME_FILES["template"], a.v_template, a.faces, uv=a.uv, faces_uv=a.faces_uv)
    return out
