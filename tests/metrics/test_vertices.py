"""Per-vertex errors (Table 2 summary), unit conversion, lip vertex error, vertex index files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facelab.errors import AssetFormatError, MissingAssetError
from facelab.metrics import (
    lip_vertex_error,
    mm_per_unit,
    read_vertex_indices,
    vertex_distances,
    vertex_error_stats,
)


def test_vertex_distances_of_a_known_offset_in_mm():
    true = torch.rand(2, 10, 3)
    pred = true + torch.tensor([0.003, 0.004, 0.0])  # metres
    ids = torch.tensor([1, 4, 7])
    dist = vertex_distances(pred, true, ids, scale=mm_per_unit("m"))
    assert dist.shape == (2, 3)
    assert torch.allclose(dist, torch.full((2, 3), 5.0), atol=1e-4)
    with pytest.raises(ValueError, match="differ"):
        vertex_distances(pred, true[:, :5])


def test_mm_per_unit_of_the_model_units():
    assert [mm_per_unit(u) for u in ("mm", "cm", "dm", "m")] == [1.0, 10.0, 100.0, 1000.0]
    with pytest.raises(ValueError, match="inch"):
        mm_per_unit("inch")


def test_vertex_error_stats_per_image_then_averaged():
    errors = torch.tensor([[1.0, 2.0, 6.0], [3.0, 3.0, 3.0]])
    s = vertex_error_stats(errors, percentiles=(50.0, 75.0))
    assert (s.mean_mm, s.median_mm, s.max_mm) == pytest.approx((3.0, 2.5, 4.5))
    # the image-averaged field is [2, 2.5, 4.5]
    assert (s.field_median_mm, s.field_max_mm) == pytest.approx((2.5, 4.5))
    assert (s.num_images, s.num_vertices) == (2, 3)
    # percentiles (linear interpolation): image 1 -> p50 2, p75 4; image 2 -> 3, 3
    assert s.percentile_levels == (50.0, 75.0) and s.percentiles_mm == pytest.approx((2.5, 3.5))


def test_vertex_error_percentiles_match_numpy():
    errors = torch.rand(5, 200, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    s = vertex_error_stats(errors)
    assert s.percentile_levels == (90.0, 95.0, 99.0)
    expected = np.percentile(errors.numpy(), [90, 95, 99], axis=1).mean(axis=1)
    assert s.percentiles_mm == pytest.approx(tuple(expected), abs=1e-12)
    with pytest.raises(ValueError, match="non-empty"):
        vertex_error_stats(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="percentiles"):
        vertex_error_stats(errors, percentiles=(120.0,))


def test_lip_vertex_error_hand_computed():
    true = torch.zeros(2, 4, 3)  # T = 2 frames, V = 4 vertices
    pred = true.clone()
    pred[0, 1, 0] = 3.0  # frame 0: lip vertex 1 is 3 off, lip vertex 2 is 1 off
    pred[0, 2, 1] = 1.0
    pred[1, 2, 2] = 2.0  # frame 1: lip vertex 2 is 2 off
    pred[1, 3, 0] = 9.0  # vertex 3 is not a lip vertex
    lips = [1, 2]
    # FaceFormer's script: per-frame max of squared L2 over the lips, mean over frames = (9 + 4) / 2
    assert float(lip_vertex_error(pred, true, lips)) == pytest.approx(6.5)
    assert float(lip_vertex_error(pred, true, lips, squared=False)) == pytest.approx(2.5)
    assert float(lip_vertex_error(pred, true, lips, squared=False, scale=1000.0)) == pytest.approx(2500.0)
    batch = lip_vertex_error(torch.stack([pred, true]), torch.stack([true, true]), torch.tensor(lips))
    assert batch.shape == (2,) and batch.tolist() == pytest.approx([6.5, 0.0])
    with pytest.raises(ValueError, match=r"\(T, V, 3\)"):
        lip_vertex_error(pred[0], true[0], lips)
    with pytest.raises(ValueError, match="lip vertex"):
        lip_vertex_error(pred, true, [])


def test_read_vertex_indices_from_text_and_npy(tmp_path):
    text = tmp_path / "lve.txt"
    text.write_text("3, 7,11\n12 40\n")
    assert read_vertex_indices(text).tolist() == [3, 7, 11, 12, 40]
    npy = tmp_path / "lips.npy"
    np.save(npy, np.array([5, 6, 9], dtype=np.int32))
    ids = read_vertex_indices(npy)
    assert ids.dtype == torch.long and ids.tolist() == [5, 6, 9]
    bad = tmp_path / "bad.txt"
    bad.write_text("1, 2, lips")
    with pytest.raises(AssetFormatError, match="vertex indices"):
        read_vertex_indices(bad)
    grid = tmp_path / "grid.npy"
    np.save(grid, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(AssetFormatError, match="flat"):
        read_vertex_indices(grid)
    with pytest.raises(MissingAssetError, match="lip_ids"):
        read_vertex_indices(tmp_path / "absent.txt", config_key="lip_ids")
