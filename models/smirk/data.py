"""The batch SMIRK trains on (:class:`SmirkBatch`) and the adapters from the synthetic world and real-face caches.

The training recipe (:class:`smirk.module.SmirkModule`) reads only :class:`SmirkBatch`. Any dataset works once it
yields a ``SmirkBatch`` or something :func:`as_smirk_batch` converts:

* the synthetic face world's :class:`facelab.data.synthetic.SyntheticFaceBatch` (with FLAME ground truth);
* real faces of a ``facelab preprocess`` cache, :class:`facelab.data.datasets.FaceCropSample` batches of
  :class:`facelab.data.datasets.CachedFaceDataModule` (FFHQ, CelebA, MEAD, LRS3: ``configs/data/*.yaml``).

Frames (see :mod:`facelab.render.camera`): landmarks are **NDC** ``(x, y)`` in [-1, 1] of the crop with **+y up**,
the frame :meth:`facelab.render.WeakPerspectiveCamera.project` produces, so the landmark loss compares like with
like. The cache (and the public SMIRK code) normalizes pixel landmarks to [-1, 1] with +y *down*
(:func:`facelab.data.crop.normalize_points`); those convert by negating y. Detections in pixels convert with
:func:`facelab.render.pixels_to_ndc`.

Mediapipe subset: SMIRK fits 105 of mediapipe's 478 face-mesh points, the ones FLAME's mediapipe embedding names in
its ``landmark_indices`` (``mediapipe_landmark_embedding.npz``, :attr:`facelab.morphable.Flame.mp_indices`); the
order of that list is the order of :attr:`facelab.morphable.MeshOutput.landmarks_mp`, so a batch must be subset
with the indices of the FLAME it is compared with (:func:`flame_mediapipe_indices`).

Shapes: ``B`` batch, ``H, W`` image size, ``L`` landmarks.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor

from facelab.data.datasets import FaceCropSample
from facelab.data.synthetic import SyntheticFaceBatch
from facelab.errors import AssetFormatError
from facelab.io.assets import require_file
from facelab.metrics.identity import arcface_crop_batch
from facelab.morphable.flame import resolve_flame_paths
from facelab.morphable.flame_assets import FLAME_FILES

__all__ = ["FlameGroundTruth", "SmirkBatch", "as_smirk_batch", "flame_mediapipe_indices"]

#: SMIRK's mediapipe subset size (smirk_reference.md "FLAME").
N_MEDIAPIPE = 105


@dataclass
class FlameGroundTruth:
    """Ground-truth FLAME parameters of a batch (synthetic data only), for validation metrics.

    Attributes:
        shape: (B, K_shape). expression: (B, K_exp) (may hold more components than the trained model).
        jaw_pose: (B, 3). eyelids: (B, 2). global_pose: (B, 3).
    """

    shape: Tensor
    expression: Tensor
    jaw_pose: Tensor
    eyelids: Tensor
    global_pose: Tensor


@dataclass
class SmirkBatch:
    """One training/validation batch for SMIRK.

    Attributes:
        image: (B, 3, H, W) RGB face crops in [0, 1].
        landmarks_mp: (B, 105, 2) mediapipe landmarks (SMIRK's 105-point subset), NDC +y up.
        landmarks_fan: (B, 68, 2) FAN/iBUG landmarks, NDC +y up, or None (the contour loss is then skipped).
        fan_valid: (B,) bool, which images have FAN landmarks; None: all (when ``landmarks_fan`` is given).
        hull_mask: (B, 1, H, W) float, convex hull of the face landmarks (the generator's hole before dilation);
            None: the hull of ``landmarks_mp`` is rasterized on the fly.
        mica_image: the MICA teacher's input (e.g. (B, 3, 112, 112) ArcFace crops), or None.
        ground_truth: FLAME parameters the image was rendered from (synthetic data), or None.
    """

    image: Tensor
    landmarks_mp: Tensor
    landmarks_fan: Tensor | None = None
    fan_valid: Tensor | None = None
    hull_mask: Tensor | None = None
    mica_image: Tensor | None = None
    ground_truth: FlameGroundTruth | None = None

    def __post_init__(self) -> None:
        if self.image.dim() != 4 or self.image.shape[1] != 3:
            raise ValueError(f"SmirkBatch.image must be (B, 3, H, W), got {tuple(self.image.shape)}")
        b = self.image.shape[0]
        if self.landmarks_mp.shape != (b, 105, 2):
            raise ValueError(f"SmirkBatch.landmarks_mp must be ({b}, 105, 2), got {tuple(self.landmarks_mp.shape)}")
        if self.landmarks_fan is not None and self.landmarks_fan.shape != (b, 68, 2):
            raise ValueError(f"SmirkBatch.landmarks_fan must be ({b}, 68, 2), got {tuple(self.landmarks_fan.shape)}")

    @property
    def batch_size(self) -> int:
        return self.image.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image.shape[-2], self.image.shape[-1]

    def to(self, *args, **kwargs) -> SmirkBatch:
        """A copy with every tensor moved/cast by ``Tensor.to`` (Lightning calls it to move batches)."""
        def move(value):
            if isinstance(value, Tensor):
                return value.to(*args, **kwargs)
            if isinstance(value, FlameGroundTruth):
                return FlameGroundTruth(**{f.name: getattr(value, f.name).to(*args, **kwargs)
                                           for f in fields(value)})
            return value

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})


def _from_synthetic(batch: SyntheticFaceBatch) -> SmirkBatch:
    if batch.image.dim() != 4:
        raise ValueError("SMIRK trains on single images: use the synthetic data with sequence_length=0")
    if batch.landmarks_mp_ndc is None:
        raise ValueError("the synthetic batch has no mediapipe landmarks: SMIRK needs a FLAME model with the "
                         "mediapipe embedding (data.init_args.family: flame)")
    if batch.camera_model != "weak":
        raise ValueError("SMIRK's encoders predict a weak-perspective camera: use data.init_args.camera: weak")
    b = batch.image.shape[0]
    gt = FlameGroundTruth(shape=batch.shape, expression=batch.expression, jaw_pose=batch.jaw_pose,
                          eyelids=batch.eyelids, global_pose=batch.global_pose)
    return SmirkBatch(image=batch.image, landmarks_mp=batch.landmarks_mp_ndc, landmarks_fan=batch.landmarks68_ndc,
                      fan_valid=torch.ones(b, dtype=torch.bool, device=batch.image.device),
                      hull_mask=batch.hull_mask, ground_truth=gt)


@functools.lru_cache(maxsize=8)
def _read_mediapipe_indices(path: str) -> Tensor:
    try:
        with np.load(path, allow_pickle=False) as z:
            indices = torch.from_numpy(z["landmark_indices"].astype(np.int64).reshape(-1))
    except (KeyError, ValueError, OSError) as err:
        raise AssetFormatError(f"{path}: no 'landmark_indices' (SMIRK's mediapipe landmark embedding): {err}") from err
    if indices.shape != (N_MEDIAPIPE,) or indices.min() < 0:
        raise AssetFormatError(f"{path}: landmark_indices must be {N_MEDIAPIPE} mediapipe point ids, got "
                               f"{tuple(indices.shape)}")
    return indices


def flame_mediapipe_indices(flame_path: str | os.PathLike = "synthetic") -> Tensor:
    """(105,) long: the mediapipe face-mesh points a FLAME's landmark embedding fits, in its landmark order.

    Reads ``landmark_indices`` of the ``mediapipe_landmark_embedding.npz`` beside ``flame_path`` (the same file and
    values as :attr:`facelab.morphable.Flame.mp_indices`, without building the model).

    Args:
        flame_path: as ``model.init_args.flame_path``: ``"synthetic"``, a FLAME folder or its ``generic_model.pkl``.

    Raises:
        MissingAssetError: the embedding file is missing. AssetFormatError: it holds no 105 indices.
    """
    paths = resolve_flame_paths(flame_path, {})
    path = paths["mediapipe"] or paths["model"].parent / FLAME_FILES["mediapipe"]  # None when absent: name it
    require_file(path, what="FLAME mediapipe landmark embedding (SMIRK's mediapipe_landmark_embedding.npz)",
                 config_key="model.init_args.flame_path", family="flame")
    return _read_mediapipe_indices(str(path)).clone()


#: mediapipe face-mesh ids of ArcFace's five points (image-left eye, image-right eye, nose tip, image-left and
#: image-right mouth corners); eye centres are the eye-corner midpoints (present in the 468- and 478-point meshes;
#: the refined iris points are not in every cache: the synthetic world's embedding has none).
MP_FIVE_POINTS = ((33, 133), (362, 263), (1,), (61,), (291,))


def mica_input(image: Tensor, landmarks_mp: Tensor, size: int = 112) -> Tensor:
    """The MICA shape teacher's input: the ArcFace-aligned crop from five points of the mediapipe mesh, with
    MICA's preprocessing (insightface ``blobFromImages(1/127.5, mean 127.5, RGB)``: ``2 x - 1`` for [0, 1] RGB).

    Args:
        image: (B, 3, H, W) RGB crops in [0, 1].
        landmarks_mp: (B, 468 or 478, 2) mediapipe landmarks in normalized crop coordinates ([-1, 1], +y down).
        size: MICA's input side (112).

    Returns:
        (B, 3, size, size) in [-1, 1] (zero-padded outside the crop, like ``norm_crop``).
    """
    five = torch.stack([landmarks_mp[:, list(ids)].mean(dim=1) for ids in MP_FIVE_POINTS], dim=1)  # (B, 5, 2)
    h, w = image.shape[-2:]
    five_px = (five + 1) / 2 * five.new_tensor([w, h]) - 0.5  # pixel centres at integer coordinates
    return arcface_crop_batch(image, five_px, size) * 2 - 1


def _from_face_crops(batch: FaceCropSample, mediapipe_indices: Tensor | None) -> SmirkBatch:
    """Real crops of a ``facelab preprocess`` cache: 478 -> 105 mediapipe points, +y down -> NDC +y up."""
    if batch.image.dim() != 4:
        raise ValueError("SMIRK trains on single images: read video caches with one frame per sample "
                         f"(frames_per_sample=1), got image {tuple(batch.image.shape)}")
    indices = flame_mediapipe_indices() if mediapipe_indices is None else mediapipe_indices
    indices = indices.to(device=batch.landmarks_mp.device, dtype=torch.long)
    lmk = batch.landmarks_mp
    if lmk.dim() != 3 or lmk.shape[-1] != 2 or lmk.shape[1] <= int(indices.max()):
        raise ValueError(f"SMIRK needs mediapipe face-mesh landmarks (B, 478, 2) (point ids up to "
                         f"{int(indices.max())}) in the cache, got {tuple(lmk.shape)}: build the cache with "
                         "`facelab preprocess` (it runs mediapipe 0.10.21's face mesh)")
    missing = (lmk == 0).flatten(1).all(dim=1)
    if missing.any():
        raise ValueError(f"samples {missing.nonzero()[:, 0].tolist()} of the batch carry no mediapipe landmarks "
                         "(all zero): rebuild their cache entries with `facelab preprocess`")
    flip = lmk.new_tensor([1.0, -1.0])  # normalized crop coordinates (+y down) -> NDC (+y up)
    fan, fan_valid = None, None
    if bool(batch.has_fan.any()):
        fan, fan_valid = batch.landmarks_fan * flip, batch.has_fan.bool()
    return SmirkBatch(image=batch.image, landmarks_mp=lmk.index_select(1, indices) * flip, landmarks_fan=fan,
                      fan_valid=fan_valid, hull_mask=batch.mask.float(), mica_image=mica_input(batch.image, lmk))


def as_smirk_batch(batch: SmirkBatch | SyntheticFaceBatch | FaceCropSample, mediapipe_indices: Tensor | None = None
                   ) -> SmirkBatch:
    """The :class:`SmirkBatch` view of a supported batch type.

    * :class:`SyntheticFaceBatch`: its image, its 105 mediapipe and 68 iBUG landmarks (NDC, +y up; the 68 stand in
      for FAN detections, all valid), its hull mask and its FLAME ground truth.
    * :class:`FaceCropSample` (a ``facelab preprocess`` cache through
      :class:`~facelab.data.datasets.CachedFaceDataModule`): the image; the 105 of its (B, 478, 2) mediapipe
      landmarks that ``mediapipe_indices`` name, flipped to NDC +y up; its FAN 68 landmarks (flipped) with
      ``fan_valid = has_fan`` when any sample has them, else None (the FAN loss is skipped); its convex-hull mask
      as ``hull_mask``; the MICA teacher's ArcFace-aligned 112x112 input (:func:`mica_input`); no ground truth.

    Args:
        batch: the batch.
        mediapipe_indices: (105,) the FLAME's :attr:`~facelab.morphable.Flame.mp_indices` (real crops only);
            None: the synthetic FLAME's (:func:`flame_mediapipe_indices`). With a real FLAME pass its own: the
            subset's order must be the order of the model's ``landmarks_mp``.

    Raises:
        TypeError: an unsupported batch type.
        ValueError: a batch SMIRK cannot train on (video clips, no mediapipe landmarks, ...).
    """
    if isinstance(batch, SmirkBatch):
        return batch
    if isinstance(batch, SyntheticFaceBatch):
        return _from_synthetic(batch)
    if isinstance(batch, FaceCropSample):
        return _from_face_crops(batch, mediapipe_indices)
    raise TypeError(f"SMIRK cannot read a batch of type {type(batch).__name__}: yield smirk.data.SmirkBatch or "
                    "add a conversion to smirk.data.as_smirk_batch")
