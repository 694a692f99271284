"""dnpm.data: the FaceScape displacement reader (16-bit PNG -> float mm crop), its errors, the cache dataset and
DisplacementDataModule on both sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dnpm.data import (
    FACESCAPE,
    DisplacementDataModule,
    DisplacementFormatError,
    FaceScapeDisplacementDataset,
    crop_uv,
    load_facescape_map,
    read_displacement_png,
    read_vector,
    split_subjects,
)
from dnpm.prepare import prepare_facescape
from facelab.data.detail_maps import DisplacementBatch

FMT = FACESCAPE.scaled(2048)  # crop (550, 300, 1500, 1250): 950 px, 19 px per texel at 50^2


def test_facescape_format_constants():
    assert FACESCAPE.size == 4096 and FACESCAPE.crop == (1100, 600, 3000, 2500) and FACESCAPE.neutral == 32768
    raw = np.array([0, 32768, 65535], np.uint16)
    np.testing.assert_allclose(FACESCAPE.to_mm(raw), [-0.914, 0.0, 0.914 * 32767 / 32768], rtol=1e-6)
    # the crop's corners in UV (v up): top-left pixel corner (1100, 600) -> (0, 1), bottom-right -> (1, 0)
    uv = torch.tensor([[1100 / 4096, 1 - 600 / 4096], [3000 / 4096, 1 - 2500 / 4096]], dtype=torch.float64)
    torch.testing.assert_close(crop_uv(uv), torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))


def test_reader_round_trip_is_the_float_area_average(tmp_path):
    rng = np.random.default_rng(0)
    raw = np.full((FMT.size, FMT.size), 32768, np.uint16)
    x0, y0, x1, y1 = FMT.crop
    block = rng.integers(20000, 45000, (50, 50))
    raw[y0:y1, x0:x1] = np.kron(block, np.ones((19, 19), np.int64)).astype(np.uint16)
    raw[y0:y1, x0:x1] += rng.integers(0, 2, (950, 950)).astype(np.uint16)  # sub-texel detail: averaged, not lost
    path = tmp_path / "1_neutral.png"
    Image.fromarray(raw).save(path, compress_level=1)
    assert read_displacement_png(path, FMT).dtype == np.uint16
    out = load_facescape_map(path, 50, FMT)
    mm = (raw[y0:y1, x0:x1].astype(np.float64) - 32768) / 32768 * 0.914
    expected = mm.reshape(50, 19, 50, 19).mean(axis=(1, 3))
    assert out.dtype == torch.float32 and out.shape == (50, 50)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    # finer than 8 bits: the half-quantum offsets survive (an 8-bit path would be 256x coarser)
    assert np.unique(np.round(out.numpy() / (0.914 / 32768) % 1, 3)).size > 10


@pytest.mark.parametrize("kind, reason", [
    ("eight_bit", "not_16bit"), ("rgb", "not_single_channel"), ("rgba16", "not_single_channel"),
    ("wrong_size", "wrong_size"), ("missing", "not_found"), ("jpeg", "not_png"), ("truncated", "corrupt"),
])
def test_bad_maps_raise_clear_errors(tmp_path, kind, reason):
    path = tmp_path / "map.png"
    size = FMT.size
    if kind == "eight_bit":
        Image.fromarray(np.zeros((size, size), np.uint8)).save(path)
    elif kind == "rgb":
        Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(path)
    elif kind == "rgba16":
        import cv2

        cv2.imwrite(str(path), np.zeros((64, 64, 4), np.uint16))
    elif kind == "wrong_size":
        Image.fromarray(np.zeros((size // 2, size // 2), np.uint16)).save(path)
    elif kind == "jpeg":
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(path, format="JPEG")
    elif kind == "truncated":
        Image.fromarray(np.arange(size * size, dtype=np.uint32).reshape(size, size).astype(np.uint16)).save(path)
        path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(DisplacementFormatError) as err:
        load_facescape_map(path, 64, FMT)
    assert err.value.reason == reason and str(path) in str(err.value)


def test_bad_vectors_raise_clear_errors(tmp_path):
    np.save(tmp_path / "nan.npy", np.full(50, np.nan))
    np.save(tmp_path / "short.npy", np.zeros(40))
    np.save(tmp_path / "exp.npy", np.zeros(52))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = {"nan.npy": ("non_finite", 50), "short.npy": ("bad_params", 50), "exp.npy": ("bad_params", 52),
             "obj.npy": ("bad_params", 50), "none.npy": ("missing_params", 50)}
    for name, (reason, n) in cases.items():
        with pytest.raises(DisplacementFormatError) as err:
            read_vector(tmp_path / name, n, "vector")
        assert err.value.reason == reason, name


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A 32^2 cache of 6 FaceScape-layout subjects (2 maps each) at a 1/4-size layout."""
    fmt = FACESCAPE.scaled(1024)
    root = tmp_path_factory.mktemp("fs")
    rng = np.random.default_rng(1)
    for subject in range(1, 7):
        d = root / str(subject)
        (d / "dpmap").mkdir(parents=True)
        (d / "params").mkdir()
        np.save(d / "params" / "id.npy", rng.standard_normal(50))
        for stem in ("1_neutral", "2_smile"):
            blocks = 32768 + rng.standard_normal((64, 64)) * 1000 * subject
            Image.fromarray(np.kron(blocks, np.ones((16, 16))).astype(np.uint16)).save(d / "dpmap" / f"{stem}.png",
                                                                                       compress_level=1)
            np.save(d / "params" / f"{stem}.npy", np.eye(52)[0] + 0.3 * np.eye(52)[5])
    out = tmp_path_factory.mktemp("cache")
    prepare_facescape(root, out, 32, fmt=fmt, progress=False)
    return out


def test_cache_dataset_and_subject_splits(cache):
    splits = {s: FaceScapeDisplacementDataset(cache, s, (0.5, 0.25, 0.25)) for s in ("train", "val", "test")}
    subjects = {s: {e["subject"] for e in d.entries} for s, d in splits.items()}
    assert sum(len(v) for v in subjects.values()) == 6
    assert not (subjects["train"] & subjects["val"]) and not (subjects["train"] & subjects["test"])
    sample = splits["train"][0]
    assert sample.map.shape == (1, 32, 32) and sample.map.dtype == torch.float32
    assert sample.identity.shape == (50,) and sample.expression.shape == (52,) and float(sample.expression[0]) == 1
    assert split_subjects([str(i) for i in range(6)], (0.5, 0.25, 0.25), 0) == split_subjects(
        [str(i) for i in range(5, -1, -1)], (0.5, 0.25, 0.25), 0)


def test_datamodule_on_a_facescape_cache(cache):
    dm = DisplacementDataModule(source="facescape", cache_dir=str(cache), resolution=32, batch_size=2,
                                num_workers=0, split_fractions=(0.5, 0.25, 0.25), require_params=True)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, DisplacementBatch) and batch.map.shape == (2, 1, 32, 32)
    assert batch.scale_mm == pytest.approx(dm.scale_mm) and dm.scale_mm > 0
    train_maps = torch.stack([s.map for s in dm.datasets["train"]])
    assert float((train_maps / dm.scale_mm).std()) == pytest.approx(1.0, rel=0.05)
    by_key = {s.key: s.map for s in dm.datasets["train"]}
    torch.testing.assert_close(batch.map_mm(), torch.stack([by_key[k] for k in batch.key]))  # mm = map * scale_mm
    with pytest.raises(ValueError, match="holds 32"):
        DisplacementDataModule(source="facescape", cache_dir=str(cache), resolution=64).setup("fit")
    with pytest.raises(DisplacementFormatError, match="not a displacement cache"):
        DisplacementDataModule(source="facescape", cache_dir=str(cache / "maps"), resolution=32).setup("fit")


def test_datamodule_on_the_synthetic_world():
    torch.set_num_threads(1)
    dm = DisplacementDataModule(source="synthetic", resolution=32, batch_size=4, num_workers=0, num_train=6,
                                num_val=2, num_test=2, expressions_per_identity=3, stat_samples=18)
    dm.setup("fit")
    assert 0.02 < dm.scale_mm < 1.0
    batch = next(iter(dm.train_dataloader()))
    assert batch.map.shape == (4, 1, 32, 32) and batch.identity.shape == (4, 50) and batch.mask.shape == (4, 1, 32, 32)
    val = next(iter(dm.val_dataloader()))
    assert not set(batch.key) & set(val.key)
    state = dm.state_dict()
    fresh = DisplacementDataModule(source="synthetic", resolution=32, num_train=6)
    fresh.load_state_dict(state)
    assert fresh.scale_mm == dm.scale_mm
    with pytest.raises(ValueError, match="cache_dir"):
        DisplacementDataModule(source="facescape")
