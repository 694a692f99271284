"""The ICT-FaceKit face model (USC ICT, "ICT Face Model Light", MIT) read from its ``FaceXModel`` OBJ folder.

The folder as distributed (github.com/ICT-VGL/ICT-FaceKit, ``FaceXModel/``):

- ``generic_neutral_mesh.obj``: the mean head, 26,719 vertices, 26,384 polygons (mostly quads) with UVs;
- one OBJ per expression (``jawOpen.obj``, ``eyeBlink_L.obj``, ... ARKit names, plus ``cheekRaiser_L/R`` and
  ``PupilDilate_L/R``) and per identity component (``identity000.obj`` ... ``identity099.obj``), each the *full*
  mesh at weight 1 of that shape, same vertex order: the blendshape is ``mesh - generic_neutral_mesh``
  (ICT's ``Scripts/face_model_io.py: _compute_shape_mode_deltas``);
- ``vertex_indices.json``: ``expressions`` (the 53 expressions ICT's own loader reads), ``idx_to_landmark_verts``
  (68 iBUG landmark vertices), rigid/fitting vertex lists.

``verts = neutral + identity @ B_id + expression @ B_exp`` (ICT's ``FaceModel.deform_mesh``); ICT samples
identities from N(0, I) (``randomize_identity``). Units are centimetres, +y up, the face looks along +z; ``_L``
names the subject's left (+x) side.

Choices made here:
- default expressions: ``vertex_indices.json['expressions']``, the 53 that ICT's own loader reads (ARKit's 52
  with ``browInnerUp`` and ``cheekPuff`` split into ``_L``/``_R`` and without ``tongueOut``); the other files of the
  folder, ``cheekRaiser_L/R`` and ``PupilDilate_L/R`` (which move essentially only an eyeball), come with
  ``expressions="all"``;
- identities: ``identity000``, ``identity001``, ... up to the first missing number (as ICT's loader);
- quads are fan-triangulated by :func:`facelab.io.obj.read_obj`, UV seams kept per corner;
- only the ``v`` records of the ~70 basis OBJs are parsed, and the assembled bases are cached as an ``.npz`` under
  ``cache_dir()/ict``, keyed by the folder's path and every file's size and modification time (a changed file
  is a cache miss; a cache that cannot be written is skipped with a warning).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from facelab.errors import AssetFormatError, MissingAssetError
from facelab.io.assets import cache_dir, require_file
from facelab.io.obj import read_obj, read_obj_vertices
from facelab.morphable.base import MeshOutput, MorphableModel, MorphableParams

NEUTRAL_NAME = "generic_neutral_mesh.obj"
CONFIG_NAME = "vertex_indices.json"
NUM_VERTS = 26719
_IDENTITY_RE = re.compile(r"^identity(\d{3})\.obj$")
_CACHE_VERSION = 1

#: Vertex ranges [start, stop) of the parts, from the model's documentation (README of the asset folder).
ICT_REGIONS: dict[str, tuple[int, int]] = {
    "face": (0, 9409),
    "face_narrow": (0, 6706),
    "head_neck": (9409, 11248),
    "mouth_socket": (11248, 13294),
    "left_eye_socket": (13294, 13678),
    "right_eye_socket": (13678, 14062),
    "gums_tongue": (14062, 17039),
    "teeth": (17039, 21451),
    "left_eyeball": (21451, 23021),
    "right_eyeball": (23021, 24591),
    "eye_extras": (24591, 26719),  # lacrimal fluid, eye blend, eye occlusion, eyelashes
}
#: Unions of the parts above.
ICT_REGION_GROUPS: dict[str, tuple[str, ...]] = {
    "eye_sockets": ("left_eye_socket", "right_eye_socket"),
    "eyeballs": ("left_eyeball", "right_eyeball"),
    "skin": ("face", "head_neck"),
}
#: ``face_only`` keeps vertices [0, FACE_HEAD_END): the face, head and neck surface.
FACE_HEAD_END = 11248


@dataclass
class IctParams(MorphableParams):
    """ICT-FaceKit coefficients.

    Attributes:
        identity: (B, K_id) identity weights (N(0, 1) prior), K_id <= the identity OBJs loaded (100 in the full model).
        expression: (B, E) expression weights in [0, 1], ordered as the model's ``expression_names``.
        albedo: unused (ICT-FaceKit has no colour basis); must stay None.
    """


@dataclass
class IctArrays:
    """Everything read from a FaceXModel folder (all expressions and identities present).

    Attributes:
        neutral: (V, 3) float64 centimetres.
        faces: (F, 3) int64 triangles; uv: (T, 2); faces_uv: (F, 3); polygon_ids: (F,) source polygon of each.
        expression_names: (E,) names, ``vertex_indices.json`` order first, then the other files sorted.
        expression_deltas: (E, V, 3) float32 ``expression.obj - neutral``.
        identity_deltas: (K, V, 3) float32 ``identityNNN.obj - neutral``.
        config_expressions: the ``expressions`` list of ``vertex_indices.json``.
        landmarks: (68,) int64 landmark vertex ids.
    """

    neutral: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    faces_uv: np.ndarray
    polygon_ids: np.ndarray
    expression_names: list[str]
    expression_deltas: np.ndarray
    identity_deltas: np.ndarray
    config_expressions: list[str]
    landmarks: np.ndarray


# ----------------------------------------------------------------------------------------------------------- files
def _folder_files(folder: Path) -> tuple[list[str], list[str]]:
    """(expression names, identity file stems) present in the folder."""
    objs = sorted(p.name for p in folder.glob("*.obj"))
    ids = sorted(name for name in objs if _IDENTITY_RE.match(name))
    consecutive = []
    for i, name in enumerate(ids):  # ICT's loader stops at the first missing number
        if int(_IDENTITY_RE.match(name).group(1)) != i:
            break
        consecutive.append(name[:-4])
    expressions = [name[:-4] for name in objs if name != NEUTRAL_NAME and not _IDENTITY_RE.match(name)]
    return expressions, consecutive


def _read_config(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AssetFormatError(f"{path}: not valid JSON ({err})") from err
    missing = [k for k in ("expressions", "idx_to_landmark_verts") if k not in config]
    if missing:
        raise AssetFormatError(f"{path}: missing keys {missing} (found {sorted(config)})")
    landmarks = np.asarray(config["idx_to_landmark_verts"], dtype=np.int64).reshape(-1)
    if landmarks.shape != (68,):
        raise AssetFormatError(f"{path}: 'idx_to_landmark_verts' has {landmarks.size} entries, expected 68")
    return [str(e) for e in config["expressions"]], landmarks


def _cache_file(folder: Path, files: list[Path]) -> Path:
    """Cache path: ``<folder hash>_<content hash>.npz``; the content hash covers every file's size and mtime."""
    folder_key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]
    stamp = [(_CACHE_VERSION,)] + [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    content_key = hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:16]
    return cache_dir() / "ict" / f"{folder_key}_{content_key}.npz"


def _parse_folder(folder: Path, expressions: list[str], identities: list[str]) -> dict[str, np.ndarray]:
    """Parse the neutral OBJ fully and only the ``v`` records of the blendshape OBJs; deltas in float32."""
    mesh = read_obj(folder / NEUTRAL_NAME)
    n = len(mesh.verts)

    def deltas(names: list[str]) -> np.ndarray:
        out = np.empty((len(names), n, 3), dtype=np.float32)
        for i, name in enumerate(names):
            verts = read_obj_vertices(folder / f"{name}.obj")
            if verts.shape != (n, 3):
                raise AssetFormatError(f"{folder / name}.obj: {len(verts)} vertices, but {NEUTRAL_NAME} has {n}; "
                                       "every blendshape OBJ must be the full mesh in the same vertex order")
            out[i] = verts - mesh.verts
        return out

    return dict(neutral=mesh.verts, faces=mesh.faces, uv=mesh.uv, faces_uv=mesh.faces_uv,
                polygon_ids=mesh.polygon_ids, expression_names=np.asarray(expressions, dtype=str),
                expression_deltas=deltas(expressions), identity_names=np.asarray(identities, dtype=str),
                identity_deltas=deltas(identities))


def _save_cache(path: Path, data: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **data)
        os.replace(tmp, path)  # atomic: concurrent readers (DDP ranks) never see a partial file
        for stale in path.parent.glob(path.name.split("_")[0] + "_*.npz"):  # older versions of this folder
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError as err:
        warnings.warn(f"could not write the ICT-FaceKit cache {path} ({err}); the next load parses the OBJs again",
                      stacklevel=3)


def _load_cache(path: Path, n_exp: int, n_id: int) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # a damaged cache is rebuilt
        return None
    ok = (data.get("expression_deltas", np.zeros(0)).shape[:1] == (n_exp,)
          and data.get("identity_deltas", np.zeros(0)).shape[:1] == (n_id,))
    return data if ok else None


def read_ict_folder(model_dir: str | os.PathLike, use_cache: bool = True) -> IctArrays:
    """Read every expression and identity of a FaceXModel folder (through the cache when allowed).

    Args:
        model_dir: the ``FaceXModel`` folder.
        use_cache: read/write the assembled bases under ``cache_dir()/ict``.

    Raises:
        MissingAssetError: the folder or its neutral mesh / ``vertex_indices.json`` is missing.
        AssetFormatError: a blendshape OBJ has a different vertex count, or the JSON lacks keys.
    """
    folder = Path(model_dir).expanduser()
    neutral = require_file(folder / NEUTRAL_NAME, what="ICT-FaceKit neutral mesh (FaceXModel/generic_neutral_mesh.obj)",
                           config_key="model_dir", family="ict")
    config_path = require_file(folder / CONFIG_NAME, what="ICT-FaceKit vertex_indices.json", config_key="model_dir",
                               family="ict")
    config_expressions, landmarks = _read_config(config_path)
    present, identities = _folder_files(folder)
    names = [e for e in config_expressions if e in present] + sorted(set(present) - set(config_expressions))
    files = [neutral, config_path] + [folder / f"{x}.obj" for x in names + identities]
    data = None
    cache = _cache_file(folder, files) if use_cache else None
    if cache is not None and cache.is_file():
        data = _load_cache(cache, len(names), len(identities))
    if data is None:
        data = _parse_folder(folder, names, identities)
        if cache is not None:
            _save_cache(cache, data)
    n = len(data["neutral"])
    if landmarks.min() < 0 or landmarks.max() >= n:
        raise AssetFormatError(f"{config_path}: landmark vertex ids outside [0, {n})")
    return IctArrays(
        neutral=data["neutral"], faces=data["faces"], uv=data["uv"], faces_uv=data["faces_uv"],
        polygon_ids=data["polygon_ids"], expression_names=[str(x) for x in data["expression_names"]],
        expression_deltas=data["expression_deltas"], identity_deltas=data["identity_deltas"],
        config_expressions=config_expressions, landmarks=landmarks,
    )


# ----------------------------------------------------------------------------------------------------------- module
class IctFaceModel(MorphableModel):
    """ICT-FaceKit as a module: ``verts = neutral + [identity, expression] @ shape_basis`` (one GEMM).

    Buffers (left out of ``state_dict``; rebuilt from the folder): ``v_template`` (3V,) the neutral mesh;
    ``shape_basis`` (K_id + E, 3V) identity then expression deltas; ``landmark_ids`` (68,); ``faces`` (F, 3);
    ``uv`` (T, 2); ``faces_uv`` (F, 3).
    Regions: the parts of :data:`ICT_REGIONS` and the unions of :data:`ICT_REGION_GROUPS` (with ``face_only``,
    only those inside the kept vertices).

    Args:
        model_dir: the ``FaceXModel`` folder.
        expressions: expression names to use, in this order; None: ``vertex_indices.json``'s 53 (ICT's default);
            ``"all"``: every expression OBJ present (adds ``cheekRaiser_L/R``, ``PupilDilate_L/R``).
        num_identities: identity components to use (None: every ``identityNNN.obj`` found).
        face_only: keep only the face, head and neck vertices (0-11247; drops the mouth socket, gums, tongue, teeth,
            eyes and eyelashes); triangles and UVs are remapped.
        use_cache: cache the assembled bases under ``cache_dir()/ict``.
    """

    units = "cm"
    params_type = IctParams
    expression_range = (0.0, 1.0)

    def __init__(
        self,
        model_dir: str,
        expressions: list[str] | str | None = None,
        num_identities: int | None = None,
        face_only: bool = False,
        use_cache: bool = True,
    ) -> None:
        super().__init__()
        if str(model_dir).startswith("synthetic"):
            raise MissingAssetError("ICT-FaceKit has no generated stand-in: set model_dir to a FaceXModel folder "
                                    "(ICT-VGL/ICT-FaceKit on GitHub, MIT)")
        arrays = read_ict_folder(model_dir, use_cache=use_cache)
        self.expression_names = self._select_expressions(arrays, expressions, Path(model_dir))
        k_all = len(arrays.identity_deltas)
        self.num_identities = k_all if num_identities is None else int(num_identities)
        if not 0 <= self.num_identities <= k_all:
            raise AssetFormatError(f"{model_dir}: num_identities={num_identities} but {k_all} identityNNN.obj found")
        self.num_identity, self.num_expression = self.num_identities, len(self.expression_names)

        n_all = len(arrays.neutral)
        if face_only and n_all < FACE_HEAD_END:
            raise AssetFormatError(f"{model_dir}: face_only needs the full mesh ({NUM_VERTS} vertices), got {n_all}")
        keep = np.arange(FACE_HEAD_END if face_only else n_all)
        new_id = np.full(n_all, -1, dtype=np.int64)
        new_id[keep] = np.arange(len(keep))
        tri_keep = (new_id[arrays.faces] >= 0).all(axis=1)
        faces = new_id[arrays.faces[tri_keep]]
        uv, faces_uv = arrays.uv, arrays.faces_uv[tri_keep]
        if len(uv):  # drop UVs no kept corner uses
            used, faces_uv = np.unique(faces_uv, return_inverse=True)
            uv, faces_uv = uv[used], faces_uv.reshape(-1, 3)

        exp_rows = [arrays.expression_names.index(e) for e in self.expression_names]
        basis = np.concatenate([arrays.identity_deltas[: self.num_identities], arrays.expression_deltas[exp_rows]])
        self.register_constant("v_template", arrays.neutral[keep].reshape(-1))
        self.register_constant("shape_basis", basis[:, keep].reshape(len(basis), -1))
        landmarks = new_id[arrays.landmarks]
        if (landmarks < 0).any():
            raise AssetFormatError(f"{model_dir}: a landmark vertex lies outside the kept vertices")
        self.register_constant("landmark_ids", landmarks, torch.long)
        self.register_topology(faces, uv, faces_uv)
        self._register_regions(len(keep))

    @staticmethod
    def _select_expressions(arrays: IctArrays, expressions: list[str] | str | None, folder: Path) -> list[str]:
        if expressions is None:
            wanted = arrays.config_expressions
        elif isinstance(expressions, str):
            if expressions != "all":
                raise ValueError(f"expressions must be a list of names, None or 'all', got '{expressions}'")
            wanted = arrays.expression_names
        else:
            wanted = list(expressions)
        missing = [e for e in wanted if e not in arrays.expression_names]
        if missing:
            raise AssetFormatError(f"{folder}: no OBJ for expressions {missing}; available: {arrays.expression_names}")
        return list(wanted)

    def _register_regions(self, n: int) -> None:
        for name, (start, stop) in ICT_REGIONS.items():
            if stop <= n:
                self.register_region(name, np.arange(start, stop))
        for name, parts in ICT_REGION_GROUPS.items():
            if all(ICT_REGIONS[p][1] <= n for p in parts):
                self.register_region(name, np.concatenate([np.arange(*ICT_REGIONS[p]) for p in parts]))

    @property
    def num_verts(self) -> int:
        return self.v_template.shape[0] // 3

    @property
    def num_expressions(self) -> int:
        return len(self.expression_names)

    def _like(self) -> Tensor:
        return self.v_template

    @property
    def identity_basis(self) -> Tensor:
        """(K_id, 3V) view of the identity rows of ``shape_basis``."""
        return self.shape_basis[: self.num_identities]

    @property
    def expression_basis(self) -> Tensor:
        """(E, 3V) view of the expression rows of ``shape_basis``."""
        return self.shape_basis[self.num_identities :]

    def expression_index(self, name: str) -> int:
        """Column of expression ``name`` in :class:`IctParams` ``expression``."""
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise KeyError(f"no expression '{name}' in this model; it has {self.expression_names}") from None

    def forward(self, params: IctParams) -> MeshOutput:
        """Vertices and 68 landmarks.

        Args:
            params: identity (B, K_id), expression (B, E).

        Returns:
            MeshOutput with verts (B, V, 3) in centimetres and landmarks68 (B, 68, 3).
        """
        params = self.as_params(params)
        self.check_params(params)
        coeffs = torch.cat([params.identity, params.expression], dim=1)
        verts = torch.addmm(self.v_template, coeffs, self.shape_basis).view(coeffs.shape[0], -1, 3)
        return MeshOutput(verts=verts, landmarks68=verts[:, self.landmark_ids])

    def extra_repr(self) -> str:
        return (f"verts={self.num_verts}, faces={self.num_faces}, num_identities={self.num_identities}, "
                f"num_expressions={self.num_expressions}")

