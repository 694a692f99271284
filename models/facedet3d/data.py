"""FaceDet3D's inputs (paper Eq. 1) on any data, and the DataModules of its three trained stages.

Per image :class:`FaceDetailBatch` carries what Eq. 1-3 consume: the AU vector ``x`` (17 OpenFace intensities / 5,
ordered as :data:`facelab.data.wrinkles.AU_NAMES`), the BFM identity / expression / albedo coefficients
``alpha_s, alpha_e, gamma``, SH lighting ``l`` (27, Deep3DFaceRecon layout), the camera ``c``, the head rotation,
the image, the texture map ``T(I_x)`` (the image unwrapped into the BFM UV layout) with its visibility, the detail
map ``D(I_x)`` (UV displacement in millimetres, negative = groove) with its validity mask, and the image-space skin
mask. :meth:`FaceDetailBatch.proxy_mesh` rebuilds the proxy geometry ``G_P`` (the fitted BFM mesh, details zeroed)
from the coefficients for the rendering network.

Sources:

* **The synthetic world** (:class:`SyntheticDetailDataset`): faces of the synthetic BFM stand-in rendered by
  :class:`facelab.data.synthetic.SyntheticFaceDataset` with everything known. In pair mode every sample is a
  2-frame sequence whose two frames are independent keyframes (``keyframe_interval = 1``): the same identity,
  albedo, lighting and camera with two unrelated expressions, the stand-in for the sparse MUG / ADFES frames of the
  paper's weak supervision. The target frame's true wrinkle map is the ground truth of the learning proof.
* **User detail maps** (FDS, Chen et al. 2019): :func:`read_fds_map` reads the 4096^2 uint16 PNGs,
  ``(d + 1) / 2 * 65535``, with a validity mask, in any UV layout (:func:`remap_uv_layout` resamples into ours).
* **Real photos**: ``facelab prepare --method facedet3d`` (:mod:`facedet3d.prepare`) fits the BFM
  (:class:`facelab.fitting.MorphableFitter`) and writes one ``.npz`` per face, read back by
  :class:`CachedDetailDataset`.

Shapes: ``B`` batch, ``H = W`` image side, ``S_t`` texture side, ``S_d`` detail-map side.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from facelab.data.cache import write_npz_atomic
from facelab.data.image_io import DataError
from facelab.data.sampler import resumable_train_loader
from facelab.data.synthetic import SEGMENTATION_LABELS, SceneConfig, SyntheticFaceBatch, SyntheticFaceDataset
from facelab.data.wrinkles import AU_NAMES
from facelab.morphable import MeshOutput, MorphableModel
from facelab.render import PerspectiveCamera, WeakPerspectiveCamera
from facelab.uv import UVMapper
from facelab.uv.texture import unwrap_texture

__all__ = [
    "AU_NAMES",
    "FDS_SIZE",
    "SKIN_LABELS",
    "CachedDetailDataset",
    "DetailMapError",
    "DetailPairBatch",
    "DetailPatchBatch",
    "FaceDetailBatch",
    "FaceDetailDataModule",
    "FdsMapDataset",
    "RcanPatchDataModule",
    "SyntheticDetailDataset",
    "SyntheticMapDataset",
    "decode_fds",
    "downsample_map",
    "encode_fds",
    "random_patch",
    "read_fds_map",
    "read_openface_action_units",
    "remap_uv_layout",
    "save_detail_npz",
]

#: Side of FDS detail maps.
FDS_SIZE = 4096
#: Segmentation labels of the synthetic world counted as skin (the Detailed Shading Loss region, Eq. 16).
SKIN_LABELS = ("face", "forehead", "eye_region", "nose", "ear", "neck")


class DetailMapError(DataError):
    """A detail map (or its mask) cannot be used: wrong size, dtype, layout or non-finite values."""


# ------------------------------------------------------------------------------------------------ the batch types
def _map_tensors(obj, fn):
    out = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = fn(v) if isinstance(v, Tensor) else (v._map(fn) if hasattr(v, "_map") else v)
    return replace(obj, **out)


@dataclass
class FaceDetailBatch:
    """The Eq. 1 inputs of ``B`` faces (a single sample has the same fields without ``B``).

    Attributes:
        image: (B, 3, H, W) RGB in [0, 1], the face crop ``I_x``.
        action_units: (B, 17) AU vector ``x`` in [0, 1] (OpenFace intensity / 5, :data:`AU_NAMES` order).
        shape: (B, K_id) BFM identity coefficients ``alpha_s``.
        expression: (B, K_exp) BFM expression coefficients ``alpha_e``.
        albedo: (B, K_alb) BFM albedo coefficients ``gamma``.
        sh: (B, 27) SH lighting ``l`` (Deep3DFaceRecon layout: 9 red, 9 green, 9 blue; no ambient offset).
        camera: (B, 3) weak perspective ``[s, tx, ty]`` or (B, 7) perspective ``[fx, fy, cx, cy, tx, ty, tz]``
            (pixels of ``image``), the camera ``c``.
        rotation: (B, 3) axis-angle head rotation about the model origin.
        texture: (B, 3, S_t, S_t) ``T(I_x)``: the image unwrapped into the BFM UV layout (0 where unseen).
        texture_mask: (B, 1, S_t, S_t) 1 where the texel was seen.
        detail: (B, 1, S_d, S_d) ``D(I_x)``: UV displacement along the normal in millimetres (negative = groove).
        detail_mask: (B, 1, S_d, S_d) 1 where ``detail`` is valid (inside the UV charts and the source's mask).
        skin_mask: (B, 1, H, W) 1 on skin pixels (no eyes, lips, hair, occluders, background).
        face_id: (B, 512) FaceNet embedding ``FaceID(I_x)`` when precomputed (caches), else None (the DetH module
            computes it from ``image``).
        age: (B, A) age features ``Age(I_x)`` when precomputed, else None.
        camera_model: ``"weak"`` or ``"perspective"``.
    """

    image: Tensor
    action_units: Tensor
    shape: Tensor
    expression: Tensor
    albedo: Tensor
    sh: Tensor
    camera: Tensor
    rotation: Tensor
    texture: Tensor
    texture_mask: Tensor
    detail: Tensor
    detail_mask: Tensor
    skin_mask: Tensor
    face_id: Tensor | None = None
    age: Tensor | None = None
    camera_model: str = "weak"

    def _map(self, fn):
        return _map_tensors(self, fn)

    def to(self, *args, **kwargs) -> FaceDetailBatch:
        """A copy with every tensor moved / cast by ``Tensor.to`` (Lightning moves batches by itself)."""
        return self._map(lambda x: x.to(*args, **kwargs))

    def pin_memory(self) -> FaceDetailBatch:
        return self._map(lambda x: x.pin_memory())

    @property
    def batch_size(self) -> int:
        return self.image.shape[0]

    @classmethod
    def collate(cls, samples: list[FaceDetailBatch]) -> FaceDetailBatch:
        """Stack single samples (the ``collate_fn`` of a DataLoader)."""
        return _stack(cls, samples)

    def camera_object(self) -> WeakPerspectiveCamera | PerspectiveCamera:
        """The batch's cameras (:mod:`facelab.render.camera` conventions)."""
        if self.camera_model == "weak":
            return WeakPerspectiveCamera.from_params(self.camera)
        c, b = self.camera, self.camera.shape[0]
        return PerspectiveCamera(focal=c[:, 0:2], principal_point=c[:, 2:4], image_size=tuple(self.image.shape[-2:]),
                                 rotation=torch.eye(3, dtype=c.dtype, device=c.device).expand(b, 3, 3),
                                 translation=c[:, 4:7])

    def proxy_mesh(self, model: MorphableModel, expression: Tensor | None = None) -> MeshOutput:
        """The proxy geometry ``G_P`` (Eq. 11): the posed BFM mesh of ``alpha_s`` and ``expression`` (default the
        batch's own ``alpha_e``; the target ``hat alpha_e`` for Eq. 3), with its albedo ``gamma``, in the camera's
        world frame. ``verts`` (B, V, 3), ``albedo`` (B, V, 3)."""
        exp = self.expression if expression is None else expression
        params = model.make_params(self.shape, exp, self.albedo)
        return model.forward_posed(params, head_pose=self.rotation)


@dataclass
class DetailPairBatch:
    """DetH training pairs: a source face and a target expression (Eq. 2).

    Attributes:
        source: the input face ``I_x`` (its map ``D(I_x)``, AUs ``x``, shape, image).
        target: a face with the target expression ``y = target.action_units``. Where ``same_identity`` it is the
            same person (another frame of the same sequence / video, the weak supervision of §3.2.1): its detail
            map is the true ``D(I_y)``.
        same_identity: (B,) bool.
    """

    source: FaceDetailBatch
    target: FaceDetailBatch
    same_identity: Tensor

    def _map(self, fn):
        return _map_tensors(self, fn)

    def to(self, *args, **kwargs) -> DetailPairBatch:
        return self._map(lambda x: x.to(*args, **kwargs))

    def pin_memory(self) -> DetailPairBatch:
        return self._map(lambda x: x.pin_memory())

    @property
    def batch_size(self) -> int:
        return self.source.batch_size

    @classmethod
    def collate(cls, samples: list[DetailPairBatch]) -> DetailPairBatch:
        return DetailPairBatch(source=FaceDetailBatch.collate([s.source for s in samples]),
                               target=FaceDetailBatch.collate([s.target for s in samples]),
                               same_identity=torch.stack([s.same_identity for s in samples]))


@dataclass
class DetailPatchBatch:
    """RCAN training patches (Eq. 8).

    Attributes:
        low: (B, 1, P / r, P / r) the downsampled patch ``D(I_x)^P_256`` (mm).
        high: (B, 1, P, P) the full-resolution patch ``D(I_x)^P_1024`` (mm).
        mask: (B, 1, P, P) validity of ``high``.
    """

    low: Tensor
    high: Tensor
    mask: Tensor

    def _map(self, fn):
        return _map_tensors(self, fn)

    def to(self, *args, **kwargs) -> DetailPatchBatch:
        return self._map(lambda x: x.to(*args, **kwargs))

    @classmethod
    def collate(cls, samples: list[DetailPatchBatch]) -> DetailPatchBatch:
        return _stack(cls, samples)


def _stack(cls, samples):
    first, out = samples[0], {}
    for f in fields(first):
        v = getattr(first, f.name)
        if isinstance(v, Tensor):
            out[f.name] = torch.stack([getattr(s, f.name) for s in samples])
        elif v is None:
            if any(getattr(s, f.name) is not None for s in samples):
                raise ValueError(f"cannot collate samples where only some have {f.name}")
            out[f.name] = None
        else:
            if any(getattr(s, f.name) != v for s in samples):
                raise ValueError(f"cannot collate samples with different {f.name}")
            out[f.name] = v
    return cls(**out)


# ------------------------------------------------------------------------------------------------ map utilities
def downsample_map(detail: Tensor, size: int) -> Tensor:
    """Area-average (B, C, S, S) maps to (B, C, size, size) (``S`` a multiple of ``size``; else bilinear with
    antialiasing). Masks go through the same function (then threshold them)."""
    s = detail.shape[-1]
    if s == size:
        return detail
    if s % size == 0:
        return F.avg_pool2d(detail, s // size)
    return F.interpolate(detail, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def decode_fds(values: np.ndarray) -> np.ndarray:
    """FDS uint16 texels -> float32 displacement ``d = v / 65535 * 2 - 1`` (FDS units)."""
    return values.astype(np.float32) / 65535.0 * 2.0 - 1.0


def encode_fds(displacement: np.ndarray) -> np.ndarray:
    """float displacement in FDS units ([-1, 1], clipped) -> uint16 ``(d + 1) / 2 * 65535`` (round to nearest)."""
    return np.round((np.clip(displacement, -1.0, 1.0) + 1.0) / 2.0 * 65535.0).astype(np.uint16)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.array(im)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DetailMapError("corrupt_detail_map", f"unreadable image ({err})", path) from err
    if mode in ("I;16", "I;16B", "I;16L") or arr.dtype == np.uint16:
        return arr.astype(np.uint16)
    if mode == "I":  # PIL opens some 16-bit PNGs as 32-bit integer images
        if arr.min() < 0 or arr.max() > 65535:
            raise DetailMapError("wrong_dtype", f"32-bit integer image with values outside uint16 ({mode})", path)
        return arr
    return arr


def read_fds_map(path: str | os.PathLike, mask_path: str | os.PathLike | None = None, size: int | None = FDS_SIZE,
                 scale_mm: float = 1.0) -> tuple[Tensor, Tensor]:
    """Read a user detail map: an FDS PNG (uint16, ``(d + 1) / 2 * 65535``) or a float ``.npy`` in millimetres.

    Args:
        path: ``.png`` (16-bit grey) or ``.npy`` ((S, S) or (1, S, S) float).
        mask_path: validity mask (8/16-bit PNG or bool/uint8 ``.npy``, nonzero = valid), same size; None: for a
            PNG every texel whose value is not the code of 0 (FDS leaves unused texels at zero displacement), for a
            ``.npy`` every texel (all must then be finite).
        size: required side (FDS: 4096); None accepts any square size.
        scale_mm: millimetres per FDS unit (``.png`` only).

    Returns:
        ``(detail (1, S, S) float32 mm, mask (1, S, S) float32 in {0, 1})``.

    Raises:
        DetailMapError: ``missing_detail_map``, ``corrupt_detail_map``, ``wrong_dtype`` (an 8-bit or colour PNG,
            an integer ``.npy``), ``wrong_size`` (not square / not ``size``; mask of another size), ``nan_detail_map``
            (non-finite values inside the mask), ``empty_mask``.
    """
    path = Path(path)
    if not path.is_file():
        raise DetailMapError("missing_detail_map", "no such detail map", path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DetailMapError("corrupt_detail_map", f"unreadable .npy ({err})", path) from err
        if not np.issubdtype(arr.dtype, np.floating):
            raise DetailMapError("wrong_dtype", f".npy detail maps hold float millimetres, got {arr.dtype}", path)
        detail = np.asarray(arr, np.float32).squeeze()
    else:
        arr = _read_png(path)
        if arr.dtype != np.uint16 or arr.ndim != 2:
            raise DetailMapError("wrong_dtype", f"FDS maps are single-channel 16-bit PNGs ((d+1)/2*65535), got "
                                 f"{arr.dtype} with shape {arr.shape}", path)
        detail = decode_fds(arr) * scale_mm
        code0 = np.uint16(round(0.5 * 65535))
    if detail.ndim != 2 or detail.shape[0] != detail.shape[1]:
        raise DetailMapError("wrong_size", f"detail maps are square (S, S), got {detail.shape}", path)
    if size is not None and detail.shape[0] != size:
        raise DetailMapError("wrong_size", f"expected a {size}x{size} map, got {detail.shape[0]}x{detail.shape[1]}",
                             path)
    finite = np.isfinite(detail)
    if mask_path is not None:
        mask = _read_mask(Path(mask_path), detail.shape)
    elif path.suffix.lower() == ".npy":
        mask = np.ones_like(finite)  # without a mask every texel must be a number
    else:
        mask = np.abs(arr.astype(np.int64) - int(code0)) > 1
    if not mask.any():
        raise DetailMapError("empty_mask", "the validity mask selects no texel", mask_path or path)
    if not finite[mask].all():
        raise DetailMapError("nan_detail_map", f"{int((~finite[mask]).sum())} non-finite texels inside the mask",
                             path)
    detail = np.where(mask, detail, 0.0).astype(np.float32)
    return torch.from_numpy(detail)[None], torch.from_numpy(mask.astype(np.float32))[None]


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    if not path.is_file():
        raise DetailMapError("missing_detail_mask", "no such mask file", path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DetailMapError("corrupt_detail_mask", f"unreadable .npy ({err})", path) from err
    else:
        arr = _read_png(path)
    arr = np.asarray(arr).squeeze()
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.shape != tuple(shape):
        raise DetailMapError("wrong_size", f"mask {arr.shape} does not match its map {tuple(shape)}", path)
    return arr != 0


def remap_uv_layout(detail: Tensor, mask: Tensor, src_uv: Tensor, src_faces_uv: Tensor, dst: UVMapper) -> tuple[
        Tensor, Tensor]:
    """Resample a map from another UV layout of the same mesh (e.g. FDS's eos "isomap") into ``dst``'s layout.

    Each texel of ``dst`` lies in a face with barycentric coordinates; the same face and barycentrics in the source
    layout give the UV to sample (bilinear; the mask too, kept where it samples >= 0.5).

    Args:
        detail: (B, 1, S_src, S_src) in the source layout (v up, as :class:`UVMapper`).
        mask: (B, 1, S_src, S_src) its validity.
        src_uv: (T_src, 2) the source layout's UVs in [0, 1], v up. src_faces_uv: (F, 3) long, the same faces as
            ``dst.faces``.
        dst: the target layout.

    Returns:
        ``(detail, mask)`` (B, 1, S_h, S_w) in ``dst``'s layout.
    """
    if src_faces_uv.shape != dst.faces_uv.shape:
        raise DetailMapError("wrong_layout", f"the source layout has {src_faces_uv.shape[0]} faces, the BFM layout "
                             f"{dst.faces_uv.shape[0]}: a map of another mesh topology cannot be remapped")
    corners = src_uv.to(detail)[src_faces_uv.to(detail.device)[dst.texel_face]]  # (M, 3, 2)
    uv = torch.einsum("mk,mkc->mc", dst.texel_bary.to(detail), corners)
    grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], dim=-1)[None, None].expand(detail.shape[0], -1, -1, -1)
    both = torch.cat([detail * mask, mask], dim=1)
    vals = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, :, 0]
    h, w = dst.size
    flat = detail.new_zeros(detail.shape[0], 2, h * w)
    flat[:, :, dst.texel_idx] = vals
    maps = flat.view(-1, 2, h, w)
    valid = (maps[:, 1:] >= 0.5).to(detail)
    return torch.where(valid > 0, maps[:, :1] / maps[:, 1:].clamp(min=1e-6), 0.0), valid


def read_openface_action_units(path: str | os.PathLike, row: int = 0) -> Tensor:
    """The AU vector ``x`` of one OpenFace CSV row (``FeatureExtraction`` / ``FaceLandmarkImg`` output): the 17
    ``AUxx_r`` intensities (0..5) divided by 5, clipped to [0, 1] (GANimation's convention). Returns (17,).

    Raises:
        DataError: ``missing_action_units`` (no file / row), ``bad_action_units`` (columns missing, not numbers).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("missing_action_units", "no OpenFace CSV", path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = [{k.strip(): v for k, v in r.items() if k is not None} for r in csv.DictReader(f)]
    if row >= len(rows):
        raise DataError("missing_action_units", f"row {row} of {len(rows)}", path)
    try:
        values = [float(rows[row][f"{name}_r"]) for name in AU_NAMES]
    except (KeyError, ValueError) as err:
        raise DataError("bad_action_units", f"need columns {', '.join(n + '_r' for n in AU_NAMES)} ({err})",
                        path) from err
    return (torch.tensor(values) / 5.0).clamp(0.0, 1.0)


def save_detail_npz(path: str | os.PathLike, sample: FaceDetailBatch, source: str = "") -> None:
    """Write one face's inputs (a single, un-batched :class:`FaceDetailBatch`) atomically as ``.npz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f.name: getattr(sample, f.name).detach().cpu().numpy() for f in fields(sample)
              if isinstance(getattr(sample, f.name), Tensor)}
    arrays.update(camera_model=np.str_(sample.camera_model), source=np.str_(source))
    write_npz_atomic(path, arrays)


def load_detail_npz(path: str | os.PathLike) -> FaceDetailBatch:
    """Read a face written by :func:`save_detail_npz` (no pickles). Raises ``DataError("corrupt_cache")``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            values = {f.name: torch.from_numpy(z[f.name]) for f in fields(FaceDetailBatch)
                      if f.name in z.files and f.name != "camera_model"}
            return FaceDetailBatch(camera_model=str(z["camera_model"]), **values)
    except (OSError, KeyError, ValueError, EOFError, TypeError) as err:
        raise DataError("corrupt_cache", f"unreadable facedet3d cache entry ({err})", path) from err


# ------------------------------------------------------------------------------------------ the synthetic world
def _skin(segmentation: Tensor) -> Tensor:
    ids = torch.tensor([SEGMENTATION_LABELS.index(n) for n in SKIN_LABELS], device=segmentation.device)
    return torch.isin(segmentation, ids).float().unsqueeze(-3)


class SyntheticDetailDataset(Dataset):
    """FaceDet3D inputs from the synthetic world (BFM family), single faces or same-identity pairs.

    Args:
        num_samples: length of the split.
        split: ``train`` | ``val`` | ``test``.
        pairs: items are :class:`DetailPairBatch` (two independent keyframes of one 2-frame sequence: the same
            identity, albedo, light and camera, unrelated expressions and head poses) instead of
            :class:`FaceDetailBatch`.
        model_path: the BFM asset (``"synthetic"``: the stand-in shipped with facelab).
        image_size: image side.
        texture_size: side of ``T(I_x)``.
        map_size: side of ``D(I_x)`` (DetH: 256 in the paper), area-averaged from the world's native map
            (``displacement_size``).
        displacement_size: side at which the world evaluates its wrinkles (None: its default, 512 for the BFM).
        seed: dataset seed.
        scene: scene distributions (None: :class:`SceneConfig` with fewer occluders).
        model: an already built BFM (shared between splits).
    """

    def __init__(self, num_samples: int = 1000, split: Literal["train", "val", "test"] = "train", pairs: bool = True,
                 model_path: str = "synthetic", image_size: int = 128, texture_size: int = 256, map_size: int = 256,
                 displacement_size: int | None = None, seed: int = 0, scene: SceneConfig | None = None,
                 model: MorphableModel | None = None) -> None:
        super().__init__()
        scene = scene or SceneConfig(occluder_prob=0.1)
        if pairs:
            scene = replace(scene, keyframe_interval=1)
        self.pairs, self.map_size, self.texture_size = pairs, int(map_size), int(texture_size)
        self.world = SyntheticFaceDataset(
            family="bfm", model_path=model_path, num_samples=num_samples, split=split, seed=seed,
            image_size=image_size, camera="weak", uv_size=texture_size, displacement_size=displacement_size,
            sequence_length=2 if pairs else 0, scene=scene, return_vertices=True, albedo_source="model", model=model,
            synthetic=str(model_path).startswith("synthetic"))
        m = self.world.model
        self.texture_mapper = UVMapper(m.faces, m.uv, m.faces_uv, self.texture_size, num_verts=m.num_verts)
        native = self.world.displacement_size
        native_mapper = UVMapper(m.faces, m.uv, m.faces_uv, native, num_verts=m.num_verts)
        self.native_mask = native_mapper.mask.float().reshape(1, 1, native, native)
        self.map_mask = (downsample_map(self.native_mask, self.map_size) > 0.5).float()[0]

    @property
    def model(self) -> MorphableModel:
        return self.world.model

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]):
        samples = self.world.generate([int(i) for i in indices])
        batch = SyntheticFaceSample_collate(samples)
        if not self.pairs:
            faces = self._faces(batch)
            return [_index(faces, n) for n in range(len(indices))]
        flat = _flatten_frames(batch)  # (2B) frames: b0 f0, b0 f1, b1 f0, ...
        faces = self._faces(flat)
        src = [_index(faces, 2 * n) for n in range(len(indices))]
        tgt = [_index(faces, 2 * n + 1) for n in range(len(indices))]
        return [DetailPairBatch(source=s, target=t, same_identity=torch.tensor(True)) for s, t in zip(src, tgt)]

    @torch.no_grad()
    def _faces(self, b: SyntheticFaceBatch) -> FaceDetailBatch:
        """Per-frame (non-temporal) world batch -> :class:`FaceDetailBatch` (texture unwrapped here)."""
        cams = b.camera_object()
        verts_ndc = cams.project(b.verts)
        from facelab.render.shading import vertex_normals

        normals = vertex_normals(cams.to_view(b.verts), self.model.faces)
        tex = unwrap_texture(b.image, verts_ndc, self.texture_mapper, normals_view=normals, min_cos=0.1)
        detail = downsample_map(b.displacement_uv * self.native_mask, self.map_size)
        coverage = downsample_map(self.native_mask.expand_as(b.displacement_uv), self.map_size)
        detail = torch.where(coverage > 0, detail / coverage.clamp(min=1e-6), 0.0) * self.map_mask
        n = b.image.shape[0]
        return FaceDetailBatch(
            image=b.image, action_units=b.action_units, shape=b.shape, expression=b.expression, albedo=b.albedo,
            sh=b.sh_coeffs, camera=b.camera, rotation=b.global_pose, texture=tex.texture,
            texture_mask=tex.visibility, detail=detail, detail_mask=self.map_mask.expand(n, -1, -1, -1).clone(),
            skin_mask=_skin(b.segmentation), camera_model=b.camera_model)


def SyntheticFaceSample_collate(samples) -> SyntheticFaceBatch:  # noqa: N802  (a collate function of the world)
    from facelab.data.synthetic import SyntheticFaceSample

    return SyntheticFaceSample.collate(samples)


def _flatten_frames(b: SyntheticFaceBatch) -> SyntheticFaceBatch:
    """A temporal (B, T) world batch as B * T single frames (static fields repeated)."""
    t = b.image.shape[1]
    out = {}
    for f in fields(b):
        v = getattr(b, f.name)
        if not isinstance(v, Tensor):
            out[f.name] = v
        elif v.dim() >= 2 and v.shape[1] == t and f.name in _PER_FRAME:
            out[f.name] = v.flatten(0, 1)
        else:
            out[f.name] = v.repeat_interleave(t, dim=0)
    return SyntheticFaceBatch(**out)


_PER_FRAME = {"image", "expression", "global_pose", "neck_pose", "jaw_pose", "eye_pose", "eyelids", "landmarks68_3d",
              "landmarks68_pix", "landmarks68_ndc", "hull_mask", "render_mask", "segmentation", "action_units",
              "action_channels", "landmarks_mp_pix", "landmarks_mp_ndc", "displacement_uv", "verts", "position_uv",
              "position_neutral_uv"}


def _index(b: FaceDetailBatch, n: int) -> FaceDetailBatch:
    return b._map(lambda x: x[n].clone())


# ------------------------------------------------------------------------------------------ caches of real photos
class CachedDetailDataset(Dataset):
    """Faces of a ``facelab prepare --method facedet3d`` cache (:mod:`facedet3d.prepare`).

    Args:
        root: the cache directory.
        pairs: items are :class:`DetailPairBatch` whose target is another face of the cache, drawn
            deterministically per (index, epoch seed); ``same_identity`` where both come from the same video /
            identity folder (``--identity-from parent``), the weak supervision.
        seed: pairing seed.
    """

    def __init__(self, root: str | os.PathLike, pairs: bool = True, seed: int = 0) -> None:
        from facedet3d.prepare import cache_entries

        self.root, self.pairs, self.seed = Path(root), pairs, int(seed)
        self.entries = cache_entries(self.root)
        if not self.entries:
            raise DataError("empty_cache", "no prepared face in this cache (see its report.json)", self.root)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        face = load_detail_npz(self.entries[index].path)
        if not self.pairs:
            return face
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        same = [i for i, e in enumerate(self.entries) if e.identity and e.identity == self.entries[index].identity
                and i != index]
        if same and torch.rand((), generator=g) < 0.5:
            j = same[int(torch.randint(len(same), (), generator=g))]
        else:
            j = (index + 1 + int(torch.randint(max(1, len(self) - 1), (), generator=g))) % len(self)
        other = load_detail_npz(self.entries[j].path)
        ident = self.entries[index].identity
        return DetailPairBatch(source=face, target=other,
                               same_identity=torch.tensor(bool(ident) and ident == self.entries[j].identity))


# --------------------------------------------------------------------------------------------- RCAN map sources
class SyntheticMapDataset(Dataset):
    """Full-resolution wrinkle maps of the synthetic world (the embedded stand-in for FDS's 4096^2 maps).

    The world's wrinkle model is evaluated at ``full_size`` texels (e.g. 1024) on the BFM layout; images are
    rendered tiny (they are not used). Items are (detail (1, S, S) mm, mask (1, S, S)).
    """

    def __init__(self, num_samples: int = 1000, split: Literal["train", "val", "test"] = "train",
                 full_size: int = 1024, model_path: str = "synthetic", seed: int = 0,
                 model: MorphableModel | None = None) -> None:
        self.world = SyntheticFaceDataset(family="bfm", model_path=model_path, num_samples=num_samples, split=split,
                                          seed=seed, image_size=32, displacement_size=full_size, render_wrinkles=False,
                                          scene=SceneConfig(occluder_prob=0.0), model=model,
                                          synthetic=str(model_path).startswith("synthetic"))
        m = self.world.model
        mapper = UVMapper(m.faces, m.uv, m.faces_uv, full_size, num_verts=m.num_verts)
        self.mask = mapper.mask.float().reshape(1, full_size, full_size)

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        return [(s.displacement_uv * self.mask, self.mask) for s in self.world.generate([int(i) for i in indices])]


class FdsMapDataset(Dataset):
    """User-supplied full-resolution detail maps (FDS PNGs or float ``.npy``), each with an optional
    ``<stem>_mask.png`` beside it. Unreadable maps raise :class:`DetailMapError` when listed (``validate=True``)
    rather than mid-training."""

    def __init__(self, root: str | os.PathLike, size: int | None = FDS_SIZE, scale_mm: float = 1.0,
                 validate: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DetailMapError("missing_detail_map", "no such folder of detail maps", self.root)
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in (".png", ".npy")
                            and not p.stem.endswith("_mask"))
        if not self.paths:
            raise DetailMapError("missing_detail_map", "no .png / .npy detail maps in this folder", self.root)
        self.size, self.scale_mm = size, scale_mm
        if validate:
            for i in range(len(self)):
                self[i]

    def mask_path(self, path: Path) -> Path | None:
        for ext in (".png", ".npy"):
            candidate = path.with_name(f"{path.stem}_mask{ext}")
            if candidate.is_file():
                return candidate
        return None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        p = self.paths[index]
        return read_fds_map(p, self.mask_path(p), self.size, self.scale_mm)


def random_patch(detail: Tensor, mask: Tensor, patch: int, scale: int, g: torch.Generator,
                 min_valid: float = 0.25, tries: int = 8) -> DetailPatchBatch:
    """A random ``patch``^2 crop of a (1, S, S) map (mostly inside the mask) and its ``scale``-times area-
    downsampled version (Eq. 8). Returns an un-batched :class:`DetailPatchBatch`."""
    s = detail.shape[-1]
    if patch > s or patch % scale:
        raise ValueError(f"patch {patch} must be <= the map side {s} and divisible by the scale {scale}")
    for _ in range(tries):
        y, x = (int(torch.randint(0, s - patch + 1, (), generator=g)) for _ in range(2))
        m = mask[:, y:y + patch, x:x + patch]
        if m.mean() >= min_valid:
            break
    high = detail[:, y:y + patch, x:x + patch]
    low = F.avg_pool2d(high[None], scale)[0]
    return DetailPatchBatch(low=low, high=high, mask=m)


class _PatchDataset(Dataset):
    def __init__(self, maps: Dataset, patch: int, scale: int, seed: int, patches_per_map: int) -> None:
        self.maps, self.patch, self.scale, self.seed, self.per_map = maps, patch, scale, seed, patches_per_map

    def __len__(self) -> int:
        return len(self.maps) * self.per_map

    def __getitem__(self, index: int) -> DetailPatchBatch:
        detail, mask = self.maps[index // self.per_map]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return random_patch(detail, mask, self.patch, self.scale, g)


# --------------------------------------------------------------------------------------------------- DataModules
def _train_loader(ds: Dataset, module: LightningDataModule, batch_size: int, workers: int, seed: int, collate):
    return resumable_train_loader(ds, module, seed, batch_size=batch_size, num_workers=workers,
                                  collate_fn=collate, persistent_workers=workers > 0)


class _Memo(Dataset):
    """Keeps generated items in memory (the synthetic world regenerates identical items; CPU runs reuse them)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds, self.items = ds, {}

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]):
        todo = [i for i in indices if i not in self.items]
        if todo:
            fetch = self.ds.__getitems__(todo) if hasattr(self.ds, "__getitems__") else [self.ds[i] for i in todo]
            self.items.update(zip(todo, fetch))
        return [self.items[i] for i in indices]


class _WithFeatures(Dataset):
    """Adds the frozen FaceID / age features (:class:`facedet3d.networks.FaceFeatures`) to generated items, one
    batched forward per fetch (items without ``face_id`` otherwise get them in the training step)."""

    def __init__(self, ds: Dataset, features) -> None:
        self.ds, self.features = ds, features

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]):
        items = self.ds.__getitems__(indices) if hasattr(self.ds, "__getitems__") else [self.ds[i] for i in indices]
        faces = [f for it in items for f in ((it.source, it.target) if isinstance(it, DetailPairBatch) else (it,))]
        face_id, age = self.features(torch.stack([f.image for f in faces]))
        done = iter(range(len(faces)))
        out = []
        for it in items:
            if isinstance(it, DetailPairBatch):
                i, j = next(done), next(done)
                out.append(replace(it, source=replace(it.source, face_id=face_id[i], age=age[i]),
                                   target=replace(it.target, face_id=face_id[j], age=age[j])))
            else:
                i = next(done)
                out.append(replace(it, face_id=face_id[i], age=age[i]))
        return out


class FaceDetailDataModule(LightningDataModule):
    """Loaders of FaceDet3D inputs: DetH pairs (``pairs=True``) or single faces (the detail regressor, R).

    Args:
        pairs: :class:`DetailPairBatch` batches (DetH) or :class:`FaceDetailBatch` (regressor / renderer).
        cache_roots: ``facelab prepare --method facedet3d`` caches to train on; None: the synthetic world.
        val_roots: validation caches (with ``cache_roots``).
        model_path: the BFM asset of the synthetic world.
        image_size, texture_size, map_size: see :class:`SyntheticDetailDataset`.
        num_train, num_val: synthetic samples per split.
        batch_size: per process.
        num_workers: DataLoader workers.
        seed: data seed (sample identities, pairing, shuffling).
        memory_cache: keep generated synthetic samples in memory (fast CPU runs over few samples).
        precompute_features: compute the FaceID / age features with the data (once per sample with
            ``memory_cache``) instead of in every training step.
        facenet_weights, age_weights: their local weights (see :class:`facedet3d.networks.FaceFeatures`).
    """

    def __init__(self, pairs: bool = True, cache_roots: list[str] | None = None, val_roots: list[str] | None = None,
                 model_path: str = "synthetic", image_size: int = 128, texture_size: int = 256, map_size: int = 256,
                 num_train: int = 20000, num_val: int = 256, batch_size: int = 8, num_workers: int = 2,
                 seed: int = 0, memory_cache: bool = False, precompute_features: bool = False,
                 facenet_weights: str | None = None, age_weights: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.datasets: dict[str, Dataset] = {}
        self.collate = DetailPairBatch.collate if pairs else FaceDetailBatch.collate

    def _synthetic(self, split: str, n: int) -> Dataset:
        hp = self.hparams
        model = getattr(self, "synthetic_model", None)
        ds = SyntheticDetailDataset(num_samples=n, split=split, pairs=hp.pairs, model_path=hp.model_path,
                                    image_size=hp.image_size, texture_size=hp.texture_size, map_size=hp.map_size,
                                    seed=hp.seed, model=model)
        return ds

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if hp.cache_roots:
            from torch.utils.data import ConcatDataset

            self.datasets.setdefault("train", ConcatDataset([CachedDetailDataset(r, hp.pairs, hp.seed)
                                                             for r in hp.cache_roots]))
            if hp.val_roots:
                self.datasets.setdefault("val", ConcatDataset([CachedDetailDataset(r, hp.pairs, hp.seed + 1)
                                                               for r in hp.val_roots]))
            return
        features = None
        for split, n in (("train", hp.num_train), ("val", hp.num_val)):
            if split not in self.datasets and n > 0:
                ds = self._synthetic(split, n)
                self.synthetic_model = ds.model
                if hp.precompute_features:
                    if features is None:
                        from facedet3d.networks import FaceFeatures

                        features = FaceFeatures(hp.facenet_weights, hp.age_weights, config_prefix="data.init_args.")
                    ds = _WithFeatures(ds, features)
                self.datasets[split] = ds
        if hp.memory_cache:
            self.memo = {k: v if isinstance(v, _Memo) else _Memo(v) for k, v in self.datasets.items()}
            self.datasets.update(self.memo)

    @property
    def model(self) -> MorphableModel | None:
        """The synthetic world's BFM (None on caches)."""
        return getattr(self, "synthetic_model", None)

    def train_dataloader(self):
        if "train" not in self.datasets:
            self.setup("fit")
        hp = self.hparams
        return _train_loader(self.datasets["train"], self, hp.batch_size, hp.num_workers, hp.seed, self.collate)

    def val_dataloader(self):
        if "val" not in self.datasets:
            return []
        return DataLoader(self.datasets["val"], batch_size=self.hparams.batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers, collate_fn=self.collate)


class RcanPatchDataModule(LightningDataModule):
    """Random patches of full-resolution detail maps for RCAN (Eq. 8): ``high`` ``patch_size``^2 crops and their
    ``scale``-times downsampled ``low`` versions (paper: 1024 -> 256 from FDS's 4096^2 maps).

    Args:
        map_root: a folder of FDS maps (:class:`FdsMapDataset`); None: the synthetic world's wrinkle maps at
            ``full_size`` (:class:`SyntheticMapDataset`).
        map_size: required side of the user maps (FDS 4096; None accepts any square size).
        scale_mm: millimetres per FDS unit.
        full_size: side of the synthetic maps.
        patch_size: side of the high-resolution patches (paper 1024).
        scale: RCAN's up-scaling factor (4).
        patches_per_map: patches drawn per map and epoch.
        num_train, num_val: synthetic maps per split.
        val_fraction: share of the user maps held out for validation.
        batch_size, num_workers, seed: loader settings.
    """

    def __init__(self, map_root: str | None = None, map_size: int | None = FDS_SIZE, scale_mm: float = 1.0,
                 full_size: int = 1024, patch_size: int = 1024, scale: int = 4, patches_per_map: int = 4,
                 num_train: int = 2000, num_val: int = 32, val_fraction: float = 0.05, batch_size: int = 4,
                 num_workers: int = 2, seed: int = 0, model_path: str = "synthetic") -> None:
        super().__init__()
        if patch_size % scale:
            raise ValueError(f"patch_size {patch_size} must be divisible by scale {scale}")
        self.save_hyperparameters()
        self.datasets: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        if hp.map_root is not None:
            maps = FdsMapDataset(hp.map_root, hp.map_size, hp.scale_mm)
            n_val = int(round(len(maps) * hp.val_fraction))
            idx = list(range(len(maps)))
            train = torch.utils.data.Subset(maps, idx[n_val:])
            val = torch.utils.data.Subset(maps, idx[:n_val]) if n_val else None
        else:
            train = SyntheticMapDataset(hp.num_train, "train", hp.full_size, hp.model_path, hp.seed)
            val = (SyntheticMapDataset(hp.num_val, "val", hp.full_size, hp.model_path, hp.seed, model=train.world.model)
                   if hp.num_val else None)
        self.datasets["train"] = _PatchDataset(train, hp.patch_size, hp.scale, hp.seed, hp.patches_per_map)
        if val is not None:
            self.datasets["val"] = _PatchDataset(val, hp.patch_size, hp.scale, hp.seed + 1, 1)

    def train_dataloader(self):
        self.setup("fit")
        hp = self.hparams
        return _train_loader(self.datasets["train"], self, hp.batch_size, hp.num_workers, hp.seed,
                             DetailPatchBatch.collate)

    def val_dataloader(self):
        self.setup("fit")
        if "val" not in self.datasets:
            return []
        return DataLoader(self.datasets["val"], batch_size=self.hparams.batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers, collate_fn=DetailPatchBatch.collate)
