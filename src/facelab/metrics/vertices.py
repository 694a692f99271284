"""Per-vertex errors of meshes with a shared topology (Table 2 style) and the lip vertex error (LVE).

Units: vertices stay in the model's units (``MorphableModel.units``); :func:`mm_per_unit` converts to millimetres,
which is what every table in the papers reports. Shapes: ``B`` batch, ``T`` frames, ``V`` vertices, ``V_r``
vertices of a region.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from facelab.errors import AssetFormatError
from facelab.io.assets import require_file

__all__ = [
    "MM_PER_UNIT",
    "VertexErrorStats",
    "lip_vertex_error",
    "mm_per_unit",
    "read_vertex_indices",
    "vertex_distances",
    "vertex_error_stats",
]

#: Millimetres per length unit of the morphable models (FLAME ``"m"``, Deep3DFaceRecon BFM ``"dm"``, ICT ``"cm"``,
#: Basel ``.h5`` ``"mm"``).
MM_PER_UNIT: dict[str, float] = {"mm": 1.0, "cm": 10.0, "dm": 100.0, "m": 1000.0}


def mm_per_unit(units: str) -> float:
    """Millimetres per ``units`` (a key of :data:`MM_PER_UNIT`): the ``scale`` that turns model units into mm."""
    if units not in MM_PER_UNIT:
        raise ValueError(f"unknown length unit {units!r}; known: {sorted(MM_PER_UNIT)}")
    return MM_PER_UNIT[units]


def vertex_distances(pred: Tensor, true: Tensor, vertex_ids: Tensor | None = None, scale: float = 1.0) -> Tensor:
    """Per-vertex Euclidean distances ``scale * ||pred_v - true_v||``.

    Args:
        pred, true: (B, V, 3) meshes of one topology. vertex_ids: (V_r,) the vertices to compare (None: all).
        scale: unit conversion (1000 for metres -> mm; see :func:`mm_per_unit`).

    Returns:
        (B, V_r) distances.
    """
    if pred.shape != true.shape:
        raise ValueError(f"vertex_distances: pred {tuple(pred.shape)} and true {tuple(true.shape)} differ")
    if vertex_ids is not None:
        pred, true = pred[:, vertex_ids], true[:, vertex_ids]
    return (pred - true.to(pred)).norm(dim=-1) * scale


@dataclass
class VertexErrorStats:
    """Per-vertex error summary in the format of SMIRK's supplementary Table 2 (mm).

    Table 2 reports "the mean, median, and max" per-vertex distance; as for every per-reconstruction metric of
    that benchmark family, each statistic is taken over the vertices of one image and then averaged over images,
    so ``max_mm`` is the typical worst vertex of a reconstruction (the number the supplementary notes correlates
    with perceptual quality). ``field_median_mm`` / ``field_max_mm`` are the alternative reading: the median and
    max over vertices of the per-vertex error averaged over images (its mean equals ``mean_mm``).

    Attributes:
        mean_mm, median_mm, max_mm: per-image mean / median / max over vertices, averaged over images.
        field_median_mm, field_max_mm: median / max over vertices of the image-averaged per-vertex error.
        num_images, num_vertices: how many images and vertices were summarized.
        percentile_levels: the percentiles (0-100) of ``percentiles_mm``.
        percentiles_mm: per-image percentiles over vertices (linear interpolation), averaged over images.
    """

    mean_mm: float
    median_mm: float
    max_mm: float
    field_median_mm: float
    field_max_mm: float
    num_images: int
    num_vertices: int
    percentile_levels: tuple[float, ...] = field(default_factory=tuple)
    percentiles_mm: tuple[float, ...] = field(default_factory=tuple)


def vertex_error_stats(errors: Tensor, percentiles: Sequence[float] = (90.0, 95.0, 99.0)) -> VertexErrorStats:
    """Summarize (N, V) per-vertex errors (mm) of N images as a :class:`VertexErrorStats` (Table 2).

    Args:
        errors: (N, V) per-vertex distances in mm (e.g. :func:`vertex_distances` with ``scale=mm_per_unit(...)``).
        percentiles: levels in [0, 100] reported in ``percentiles_mm``.
    """
    if errors.dim() != 2 or errors.numel() == 0:
        raise ValueError(f"vertex_error_stats expects non-empty (N, V) errors, got {tuple(errors.shape)}")
    levels = tuple(float(p) for p in percentiles)
    if any(not 0.0 <= p <= 100.0 for p in levels):
        raise ValueError(f"percentiles must lie in [0, 100], got {levels}")
    e = errors.double()
    field_mean = e.mean(dim=0)
    q = torch.quantile(e, torch.tensor(levels, dtype=e.dtype, device=e.device) / 100.0, dim=1) if levels else None
    return VertexErrorStats(mean_mm=float(e.mean(dim=1).mean()), median_mm=float(e.median(dim=1).values.mean()),
                            max_mm=float(e.amax(dim=1).mean()), field_median_mm=float(field_mean.median()),
                            field_max_mm=float(field_mean.max()), num_images=e.shape[0], num_vertices=e.shape[1],
                            percentile_levels=levels,
                            percentiles_mm=tuple(float(v) for v in q.mean(dim=1)) if q is not None else ())


def lip_vertex_error(pred: Tensor, true: Tensor, lip_ids: Tensor | Sequence[int], *, squared: bool = True,
                     scale: float = 1.0) -> Tensor:
    """Lip vertex error (LVE) of speech-driven animation (MeshTalk, Richard et al. 2021; FaceFormer, Fan et al.
    2022): per frame the maximal error over the lip vertices, averaged over the frames.

    FaceFormer's public script (the numbers of VOCASET/BIWI tables) takes the *squared* L2 distance
    (``max_v ||p_tv - t_tv||^2``); ``squared=False`` gives the plain L2 distance (MeshTalk's wording).

    Args:
        pred, true: (T, V, 3) one sequence, or (B, T, V, 3) a batch of equally long sequences.
        lip_ids: (V_r,) lip vertex indices (e.g. FLAME_masks' ``lips``; :func:`read_vertex_indices` reads files).
        squared: squared (True, FaceFormer's script) or plain L2 distances.
        scale: unit conversion applied to the distance before squaring (1000: metres -> mm).

    Returns:
        () for one sequence, (B,) for a batch: the mean over frames of the per-frame maximum.
    """
    if pred.shape != true.shape or pred.dim() not in (3, 4) or pred.shape[-1] != 3:
        raise ValueError(f"lip_vertex_error expects two (T, V, 3) or (B, T, V, 3) tensors, got {tuple(pred.shape)} "
                         f"and {tuple(true.shape)}")
    ids = torch.as_tensor(lip_ids, dtype=torch.long, device=pred.device)
    if ids.numel() == 0:
        raise ValueError("lip_vertex_error needs at least one lip vertex")
    dist = (pred[..., ids, :] - true[..., ids, :].to(pred)).norm(dim=-1) * scale  # (..., T, V_r)
    if squared:
        dist = dist.square()
    return dist.amax(dim=-1).mean(dim=-1)


def read_vertex_indices(path: str | os.PathLike, *, what: str = "vertex index file",
                        config_key: str | None = None) -> Tensor:
    """(N,) long vertex indices from a ``.npy`` array or a text file of integers (separated by commas, spaces or
    newlines: the layout of FaceFormer's BIWI ``lve.txt`` and of exported region lists).

    Raises:
        MissingAssetError: no such file. AssetFormatError: not integers, or not a flat list.
    """
    file = require_file(path, what=what, config_key=config_key)
    try:
        if file.suffix == ".npy":
            values = np.load(file, allow_pickle=False)
        else:
            tokens = Path(file).read_text().replace(",", " ").split()
            values = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError as err:
        raise AssetFormatError(f"{file}: not a list of vertex indices ({err})") from err
    values = np.asarray(values)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer) or (values < 0).any():
        raise AssetFormatError(f"{file}: expected a flat list of non-negative integer vertex indices, got "
                               f"{values.dtype} {values.shape}")
    return torch.from_numpy(values.astype(np.int64))
