"""read_image: every common mode to RGB uint8, typed reasons for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facelab.data.image_io import DataError, list_images, read_image


def _save(path, array, mode=None, **kw):
    Image.fromarray(array, mode=mode).save(path, **kw)
    return path


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_rgb_roundtrip_png(tmp_path, rgb):
    out = read_image(_save(tmp_path / "a.png", rgb))
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3) and np.array_equal(out, rgb)


def test_grayscale_rgba_palette(tmp_path, rgb):
    gray = read_image(_save(tmp_path / "g.png", rgb[..., 0]))
    assert gray.shape == (48, 64, 3) and np.array_equal(gray[..., 0], rgb[..., 0])
    rgba = np.concatenate([rgb, np.full((48, 64, 1), 255, np.uint8)], 2)
    rgba[:, :10, 3] = 0  # transparent strip composited over black
    out = read_image(_save(tmp_path / "a.png", rgba), background=0)
    assert out.shape == (48, 64, 3) and out[:, :10].max() == 0 and np.array_equal(out[:, 10:], rgb[:, 10:])
    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp_path / "p.gif")
    assert read_image(tmp_path / "p.gif").shape == (48, 64, 3)


def test_16bit_png(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16)[None].repeat(8, 0) * 1000).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (8, 64, 3)
    np.testing.assert_allclose(out[0, :, 0], np.round(ramp[0] / 65535 * 255), atol=1)


def test_exif_orientation(tmp_path, rgb):
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    assert read_image(tmp_path / "r.jpg").shape == (64, 48, 3)


def test_bad_files_have_reasons(tmp_path, rgb):
    (tmp_path / "text.png").write_text("this is not an image")
    _save(tmp_path / "full.jpg", rgb, quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    _save(tmp_path / "tiny.png", rgb[:8, :8])
    cases = {"text.png": "not_an_image", "cut.jpg": "corrupt", "tiny.png": "too_small", "missing.png": "not_found"}
    for name, reason in cases.items():
        with pytest.raises(DataError) as err:
            read_image(tmp_path / name, min_side=16)
        assert err.value.reason == reason, name
        assert name in str(err.value)


def test_list_images_nested(tmp_path, rgb):
    (tmp_path / "a" / "b").mkdir(parents=True)
    _save(tmp_path / "a" / "b" / "x.PNG", rgb)
    _save(tmp_path / "y.jpg", rgb)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden").mkdir()
    _save(tmp_path / ".hidden" / "z.png", rgb)
    assert [p.name for p in list_images(tmp_path)] == ["x.PNG", "y.jpg"]
