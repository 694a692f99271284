"""The Facial Texture Dataset: albedo maps of 3DMM coefficients, the synthetic FTD, `facelab fit` folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dualstream.texture_data import AlbedoMapper, FittedTextureDataset, SyntheticTextureDataset, TextureSample
from facelab.errors import AssetFormatError, MissingAssetError
from facelab.morphable import load_model


@pytest.fixture(scope="module")
def bfm():
    return load_model("bfm", "synthetic")


@pytest.fixture(scope="module")
def ftd(bfm):
    return SyntheticTextureDataset(4, "train", image_size=32, uv_size=32, model=bfm)


def test_albedo_fit_recovers_the_coefficients_of_a_linear_map(bfm):
    mapper = AlbedoMapper(bfm, 32)
    coeffs = torch.randn(2, bfm.num_albedo, generator=torch.Generator().manual_seed(0)) * 0.3
    maps = mapper(coeffs)
    assert maps.shape == (2, 3, 32, 32)
    refit = mapper(mapper.fit(maps, prior=1e-6))
    mask = mapper.mapper.mask
    assert ((refit - maps).abs() * mask).sum() / (3 * mask.sum() * 2) < 2e-3
    with pytest.raises(ValueError, match="albedo coefficients"):
        mapper(torch.zeros(2, 3))


def test_synthetic_ftd_sample_and_its_linear_albedo_baseline(ftd):
    batch = TextureSample.collate(ftd.__getitems__([0, 1, 2, 3]))
    assert batch.image.shape == (4, 3, 32, 32) and batch.albedo_map.shape == (4, 3, 32, 32)
    assert batch.texture_mask.shape == (4, 1, 32, 32) and batch.landmarks_pix.shape == (4, 68, 2)
    m = batch.texture_mask.expand_as(batch.texture)
    linear = ((batch.albedo_map - batch.texture).abs() * m).sum() / m.sum()
    mean = (batch.texture * m).sum(0, keepdim=True) / m.sum(0, keepdim=True).clamp_min(1)
    mean_mae = ((mean - batch.texture).abs() * m).sum() / m.sum()
    # the best linear albedo is a real baseline: better than the mean texture, far from exact (procedural skin)
    assert 0.005 < linear < mean_mae


def _write_fit_dir(root, bfm, image_size=48, uv_size=16, faces=2):
    """A folder in the layout `facelab fit --model bfm` writes (report.json, params.npz, texture/visibility PNGs)."""
    root.mkdir()
    photo = root.parent / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(photo)
    fitted = []
    for k in range(faces):
        name = f"photo_face{k}"
        np.savez(root / f"{name}_params.npz", identity=np.zeros(bfm.num_identity, np.float32),
                 expression=np.zeros(bfm.num_expression, np.float32),
                 albedo=np.full(bfm.num_albedo, 0.1, np.float32), rotation=np.zeros(3, np.float32),
                 camera=np.array([0.8, 0.0, 0.0], np.float32), crop_matrix=np.array([[0.75, 0, 0], [0, 0.75, 0],
                                                                                     [0, 0, 1]], np.float64),
                 image_size=np.array([image_size, image_size]))
        Image.fromarray(np.full((uv_size, uv_size, 3), 128, np.uint8)).save(root / f"{name}_texture.png")
        Image.fromarray(np.full((uv_size, uv_size), 255, np.uint8)).save(root / f"{name}_visibility.png")
        fitted.append({"input": str(photo), "name": name})
    (root / "report.json").write_text(json.dumps({"fitted": fitted, "skipped": []}))
    return root


def test_fitted_ftd_reads_a_fit_folder_and_skips_broken_faces(tmp_path, bfm):
    root = _write_fit_dir(tmp_path / "fit", bfm)
    (root / "photo_face1_params.npz").unlink()
    ds = FittedTextureDataset(str(root), image_size=32, uv_size=32, model=bfm)
    assert len(ds) == 1 and len(ds.skipped) == 1 and "missing" in ds.skipped[0]["reason"]
    s = ds[0]
    assert s.image.shape == (3, 32, 32) and s.texture.shape == (3, 32, 32) and s.albedo_map.shape == (3, 32, 32)
    assert s.texture_mask.sum() > 0 and torch.isfinite(s.landmarks_pix).all()
    torch.testing.assert_close(s.texture[:, s.texture_mask[0] > 0].mean(), torch.tensor(128 / 255), atol=1e-2,
                               rtol=0)


def test_fitted_ftd_clear_errors(tmp_path, bfm):
    with pytest.raises(MissingAssetError, match="facelab fit --model bfm"):
        FittedTextureDataset(str(tmp_path / "nothing"), model=bfm)
    root = _write_fit_dir(tmp_path / "fit", bfm, faces=1)
    (root / "photo_face0_params.npz").unlink()
    with pytest.raises(AssetFormatError, match="no usable fitted face"):
        FittedTextureDataset(str(root), model=bfm)
    (root / "report.json").write_text("{not json")
    with pytest.raises(AssetFormatError, match="not a facelab fit report"):
        FittedTextureDataset(str(root), model=bfm)
