"""Datasets over real faces: raw image folders (inference) and the ``facelab preprocess`` cache (training).

Plain torch ``Dataset`` classes: nothing here imports Lightning (the DataModule that mixes caches for training is
:class:`facelab.data.modules.CachedFaceDataModule`).

Sample format (:class:`FaceCropSample`, batched by :meth:`FaceCropSample.collate`):

==================  ===============  ====================================================================
field               shape            meaning
==================  ===============  ====================================================================
``image``           (B, 3, H, W)     float RGB in [0, 1]
``landmarks_mp``    (B, 478, 2)      mediapipe landmarks, normalized crop coordinates (below)
``landmarks_fan``   (B, 68, 2)       FAN landmarks, same coordinates; zeros where ``has_fan`` is False
``has_fan``         (B,)             bool, FAN landmarks present (SMIRK skips the FAN loss where absent)
``mask``            (B, 1, H, W)     float face mask (convex hull of the mediapipe landmarks)
``dataset``         (B,)             long, which dataset of a mix the sample came from
``index``           (B,)             long, index of the sample in that dataset
==================  ===============  ====================================================================

Normalized crop coordinates are SMIRK's: ``2 * pix / size - 1``, ``[-1, 1]`` from the left/top crop edge to the
right/bottom edge, +y *down* (:mod:`facelab.data.crop`; the render NDC has +y up, ``y_ndc = -y``). Video samples
with ``frames_per_sample > 1`` carry a time axis after the batch axis: ``(B, T, 3, H, W)``, ``(B, T, 478, 2)``...

Crops are stored by ``facelab preprocess`` at one scale (default 1.6). ``scale_range`` re-crops every sample
around its mediapipe landmark box with a random scale (SMIRK trains with U[1.2, 1.8]); scales beyond the stored
one show black borders, so preprocess with ``--scale`` at least the largest training scale.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from facelab.data.cache import FaceEntry, face_entries, load_face
from facelab.data.crop import crop_params, normalize_points, transform_points, warp_crop
from facelab.data.image_io import DataError, list_images, read_image

__all__ = [
    "CachedFaceDataset",
    "FaceCropSample",
    "ImageFolderDataset",
    "RawImage",
    "VideoFrameDataset",
    "open_cache",
]


@dataclass
class FaceCropSample:
    """One face crop or a batch of them (see the module docstring for shapes and coordinates)."""

    image: Tensor
    landmarks_mp: Tensor
    landmarks_fan: Tensor
    has_fan: Tensor
    mask: Tensor
    dataset: Tensor
    index: Tensor

    @classmethod
    def collate(cls, samples: Sequence[FaceCropSample]) -> FaceCropSample:
        """Stack samples along a new batch axis (use as a DataLoader's ``collate_fn``)."""
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        return cls(**{f.name: torch.stack([getattr(s, f.name) for s in samples]) for f in fields(cls)})

    def to(self, *args, **kwargs) -> FaceCropSample:
        """Move/cast every tensor (``Tensor.to`` arguments; dtype casts apply to floating tensors only)."""
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            out[f.name] = t.to(*args, **kwargs) if t.is_floating_point() else t.to(device=_device_of(args, kwargs))
        return FaceCropSample(**out)

    def __len__(self) -> int:
        return self.image.shape[0]

    def augment(self, augment: torch.nn.Module) -> FaceCropSample:
        """Apply a :class:`~facelab.data.augment.FaceAugment` to a (B, ...) batch: image, mask and landmarks."""
        image, mask, (mp, fan) = augment(self.image, self.mask, [self.landmarks_mp, self.landmarks_fan])
        fan = torch.where(self.has_fan[:, None, None], fan, torch.zeros_like(fan))
        return FaceCropSample(image, mp, fan, self.has_fan, mask, self.dataset, self.index)


def _device_of(args: tuple, kwargs: dict) -> torch.device | None:
    if "device" in kwargs:
        return kwargs["device"]
    for a in args:
        if isinstance(a, (str, torch.device)):
            return torch.device(a)
        if isinstance(a, Tensor):
            return a.device
    return None


@dataclass
class RawImage:
    """An image read by :class:`ImageFolderDataset`: (3, H, W) float RGB in [0, 1] and its file path."""

    image: Tensor
    path: str


class ImageFolderDataset(Dataset):
    """Every image below a folder (nested folders, any common format), for inference on raw photos.

    Images keep their own sizes; batch them with ``DataLoader(..., batch_size=1)`` or ``collate_fn=list``.

    Args:
        root: folder scanned recursively (:func:`facelab.data.image_io.list_images`).
        skip_unreadable: return None for files that cannot be read (filter them in the collate function) instead
            of raising :class:`~facelab.data.image_io.DataError`.
    """

    def __init__(self, root: str | os.PathLike, skip_unreadable: bool = False):
        self.root = Path(root)
        self.paths = list_images(self.root)
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> RawImage | None:
        try:
            rgb = read_image(self.paths[i])
        except DataError:
            if self.skip_unreadable:
                return None
            raise
        return RawImage(torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0), str(self.paths[i]))


def _load_crop(
    entry: FaceEntry, image_size: int, scale_range: tuple[float, float] | None, dataset: int, index: int
) -> FaceCropSample:
    """Read one cached face and resample it to ``image_size`` (re-cropped at a random scale if ``scale_range``)."""
    rec = load_face(entry.path)
    stored = rec.image.shape[0]
    lmk_mp = torch.from_numpy(rec.landmarks_mp).double()
    if scale_range is not None:
        scale = float(torch.empty(()).uniform_(*scale_range))
        matrix = crop_params(lmk_mp, scale, image_size)
    else:
        s = image_size / stored
        matrix = torch.tensor([[s, 0.0, 0.0], [0.0, s, 0.0]], dtype=torch.float64)
    image = torch.from_numpy(rec.image).permute(2, 0, 1)[None].float().div(255.0)
    mask = torch.from_numpy(rec.mask)[None, None].float()
    identity = scale_range is None and stored == image_size
    if not identity:
        image = warp_crop(image, matrix[None].float(), image_size).clamp(0.0, 1.0)
        mask = warp_crop(mask, matrix[None].float(), image_size)
    has_fan = rec.landmarks_fan is not None
    fan = torch.from_numpy(rec.landmarks_fan).double() if has_fan else torch.zeros(68, 2, dtype=torch.float64)
    points = [normalize_points(transform_points(p, matrix), image_size).float() for p in (lmk_mp, fan)]
    return FaceCropSample(
        image=image[0],
        landmarks_mp=points[0],
        landmarks_fan=points[1] if has_fan else torch.zeros(68, 2),
        has_fan=torch.tensor(has_fan),
        mask=mask[0],
        dataset=torch.tensor(dataset),
        index=torch.tensor(index),
    )


class CachedFaceDataset(Dataset):
    """Every face crop of a ``facelab preprocess`` cache (images and video frames alike).

    Args:
        root: the cache directory.
        image_size: output crop side in pixels.
        scale_range: ``(lo, hi)`` to re-crop each sample at a uniformly random scale (training), or None to use the
            stored crop (resized to ``image_size`` if needed).
        dataset_id: value of :attr:`FaceCropSample.dataset` (the dataset's position in a mix).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 224,
        scale_range: tuple[float, float] | None = None,
        dataset_id: int = 0,
    ):
        self.root = Path(root)
        self.entries = face_entries(self.root)
        if not self.entries:
            raise DataError("empty_cache", "the cache holds no face crops (see its report.json)", self.root)
        self.image_size, self.scale_range, self.dataset_id = image_size, scale_range, dataset_id

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> FaceCropSample:
        return _load_crop(self.entries[i], self.image_size, self.scale_range, self.dataset_id, i)


class VideoFrameDataset(Dataset):
    """Cached video frames, one item per video: each access samples frames of that video (SMIRK's MEAD/LRS3 use).

    Uses the best-scoring face (face 0) of every cached frame.

    Args:
        root: the cache directory.
        image_size: output crop side in pixels.
        scale_range: see :class:`CachedFaceDataset`.
        frames_per_sample: T consecutive cached frames per item; 1 returns unbatched frames (mixable with image
            datasets), T > 1 adds a time axis.
        random_frames: draw the frame (window start) at random on every access (training); else the middle one.
        dataset_id: value of :attr:`FaceCropSample.dataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 224,
        scale_range: tuple[float, float] | None = None,
        frames_per_sample: int = 1,
        random_frames: bool = True,
        dataset_id: int = 0,
    ):
        self.root = Path(root)
        videos: dict[str, list[FaceEntry]] = defaultdict(list)
        for e in face_entries(self.root):
            if e.frame >= 0 and e.face == 0:
                videos[e.source].append(e)
        self.videos = [sorted(v, key=lambda e: e.frame) for _, v in sorted(videos.items())]
        self.videos = [v for v in self.videos if len(v) >= frames_per_sample]
        if not self.videos:
            raise DataError("empty_cache", f"no video with >= {frames_per_sample} cached frame(s)", self.root)
        self.image_size, self.scale_range, self.dataset_id = image_size, scale_range, dataset_id
        self.frames_per_sample, self.random_frames = frames_per_sample, random_frames

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> FaceCropSample:
        frames = self.videos[i]
        last_start = len(frames) - self.frames_per_sample
        start = int(torch.randint(last_start + 1, ())) if self.random_frames else last_start // 2
        clip = [_load_crop(e, self.image_size, self.scale_range, self.dataset_id, i)
                for e in frames[start : start + self.frames_per_sample]]
        return clip[0] if self.frames_per_sample == 1 else FaceCropSample.collate(clip)


def open_cache(root: str | os.PathLike, image_size: int = 224, scale_range: tuple[float, float] | None = None,
               dataset_id: int = 0, video_frames: bool | None = None) -> CachedFaceDataset | VideoFrameDataset:
    """A :class:`VideoFrameDataset` for a cache made only of video frames (or when ``video_frames`` is True), else a
    :class:`CachedFaceDataset` (the other arguments are theirs)."""
    if video_frames is None:
        entries = face_entries(root)
        video_frames = bool(entries) and all(e.frame >= 0 for e in entries)
    if video_frames:
        return VideoFrameDataset(root, image_size, scale_range, dataset_id=dataset_id)
    return CachedFaceDataset(root, image_size, scale_range, dataset_id=dataset_id)


def __getattr__(name: str):
    # configs written before the DataModules moved name facelab.data.datasets.CachedFaceDataModule; resolving it
    # lazily keeps them working without importing Lightning for everyone who only reads data
    if name == "CachedFaceDataModule":
        from facelab.data.modules import CachedFaceDataModule

        return CachedFaceDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
