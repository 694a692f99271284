"""``facelab prepare --method facedet3d``: bad inputs are skipped with reasons, nothing half-written, resumable."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from facedet3d.prepare import add_arguments, cache_entries, run
from facelab.cli.reconstruct import FaceCrop


class _StubCropper:
    """Finds one face in images whose top-left pixel is white, none elsewhere (no MTCNN / mediapipe here)."""

    def __call__(self, image, max_faces=None):
        if image[0, 0, 0] < 250:
            return []
        crop = np.full((64, 64, 3), 128, np.uint8)
        return [FaceCrop(image=crop, matrix=np.eye(2, 3), box=np.array([0, 0, 64, 64], np.float32), score=0.99,
                         landmarks=np.random.default_rng(0).uniform(10, 54, (478, 2)).astype(np.float32),
                         method="landmarks")]


def _options(tmp_path, **extra):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = ["--input", str(tmp_path / "photos"), "--out", str(tmp_path / "cache"), "--no-progress",
            "--detail-maps", str(tmp_path / "fds"), "--size", "64", "--texture-size", "32", "--map-size", "32"]
    for k, v in extra.items():
        args += [f"--{k}", str(v)]
    options = parser.parse_args(args)
    options.device = "cpu"
    return options


def test_bad_inputs_are_skipped_with_reasons(tmp_path):
    photos, fds = tmp_path / "photos", tmp_path / "fds"
    photos.mkdir()
    fds.mkdir()
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(photos / "landscape.png")  # no face
    face = np.zeros((80, 80, 3), np.uint8)
    face[0, 0] = 255
    Image.fromarray(face).save(photos / "nomap.png")  # a face without a detail map
    Image.fromarray(face).save(photos / "badmap.png")  # a face with an 8-bit "detail map"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(fds / "badmap.png")
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    code = run(_options(tmp_path, **{"detail-size": 32}), cropper=_StubCropper())
    assert code == 1  # no face prepared
    report = json.loads((tmp_path / "cache" / "report.json").read_text())
    reasons = {s["source"].rsplit("/", 1)[-1]: s["reason"] for s in report["skipped"]}
    assert reasons["landscape.png"] == "no_face"
    assert reasons["nomap.png"] == "missing_detail_map"
    assert reasons["badmap.png"] == "wrong_dtype"
    assert reasons["corrupt.jpg"] not in ("ok", "")
    assert cache_entries(tmp_path / "cache") == []
    assert not list((tmp_path / "cache").rglob("*.npz")) and not list((tmp_path / "cache").rglob("*.tmp*"))
    # resumable: a second run redoes nothing and keeps the report
    run(_options(tmp_path, **{"detail-size": 32}), cropper=_StubCropper())
    again = json.loads((tmp_path / "cache" / "report.json").read_text())
    assert again["items_skipped"] == report["items_skipped"] and again["last_run"]["new_items"] == 0


def test_prepare_needs_a_detail_source(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = parser.parse_args(["--input", str(tmp_path), "--out", str(tmp_path / "c")])
    options.device = "cpu"
    with pytest.raises(ValueError, match="--detail-maps .* or --regressor"):
        run(options)
