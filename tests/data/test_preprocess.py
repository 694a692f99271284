"""`facelab preprocess` on real and bad inputs: reasons, untouched inputs, resume; datasets reading the cache."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")
cv2 = pytest.importorskip("cv2")


def _run(*argv) -> int:
    from facelab.cli.preprocess import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["preprocess", "--no-progress", *argv])
    return args.func(args)


def _hashes(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    face = skimage_data.astronaut()[:320, 90:410]  # 320x320 portrait
    small = np.array(Image.fromarray(face).resize((160, 160)))
    Image.fromarray(small).save(root / "astronaut.jpg", quality=92)
    (root / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(np.concatenate([small, small], 1)).save(root / "nested" / "two_faces.png")
    Image.fromarray(small[..., 1]).save(root / "nested" / "gray.png")
    rgba = np.concatenate([small, np.full((160, 160, 1), 255, np.uint8)], 2)
    Image.fromarray(rgba).save(root / "nested" / "rgba.png")
    gray16 = (small[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(root / "nested" / "deeper" / "depth16.png")
    data = (root / "astronaut.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "text.png").write_text("definitely not a PNG")
    Image.fromarray(small[:8, :8]).save(root / "tiny.png")
    Image.fromarray(np.full((160, 160, 3), 128, np.uint8)).save(root / "blank.png")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    writer = cv2.VideoWriter(str(root / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 160))
    for k in range(4):
        writer.write(cv2.cvtColor(np.roll(small, 3 * k, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()
    return root


@pytest.fixture(scope="module")
def cache(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    before = _hashes(inputs)
    assert _run("--input", str(inputs), "--out", str(out), "--every-nth-frame", "2") == 0
    assert _hashes(inputs) == before  # inputs untouched, nothing added
    return out


def test_report_reasons(cache, inputs):
    report = json.loads((cache / "report.json").read_text())
    reasons = {(s["source"].rsplit("/", 1)[-1], s["frame"]): s["reason"] for s in report["skipped"]}
    assert reasons == {
        ("truncated.jpg", -1): "corrupt",
        ("text.png", -1): "not_an_image",
        ("tiny.png", -1): "too_small",
        ("blank.png", -1): "no_face",
        ("broken.mp4", -1): "unreadable_video",
    }
    # astronaut, gray, rgba, 16-bit, two faces (two crops), and video frames 0 and 2
    assert report["items_ok"] == 7 and report["faces"] == 8 and report["faces_with_fan"] == 0


def test_cached_samples(cache):
    from facelab.data.cache import face_entries, load_face

    entries = face_entries(cache)
    assert len(entries) == 8 and sorted({e.frame for e in entries}) == [-1, 0, 2]
    rec = load_face(next(e.path for e in entries if e.source.endswith("astronaut.jpg")))
    assert rec.image.shape == (224, 224, 3) and rec.image.dtype == np.uint8
    assert rec.landmarks_mp.shape == (478, 2) and rec.landmarks_fan is None
    assert 0.3 < rec.mask.mean() < 0.7 and rec.landmarks_mp.min() > 0 and rec.landmarks_mp.max() < 224


def test_resume_skips_finished_items(cache, inputs, capsys):
    index_before = (cache / "index.jsonl").read_text()
    assert _run("--input", str(inputs), "--out", str(cache), "--every-nth-frame", "2") == 0
    assert (cache / "index.jsonl").read_text() == index_before
    report = json.loads((cache / "report.json").read_text())
    assert report["last_run"]["new_items"] == 0 and report["items_skipped"] == 5
    # an interrupted append (partial last line) is ignored and cut off before the next append
    with open(cache / "index.jsonl", "a") as f:
        f.write('{"key": "half')
    from facelab.data.cache import CacheWriter, read_index

    assert len(read_index(cache)) == len(index_before.splitlines())
    CacheWriter(cache)
    assert (cache / "index.jsonl").read_text() == index_before


def test_max_faces_and_out_inside_input(inputs, tmp_path):
    out = tmp_path / "c"
    assert _run("--input", str(inputs / "nested" / "two_faces.png"), "--out", str(out), "--max-faces", "1") == 0
    report = json.loads((out / "report.json").read_text())
    assert [s["reason"] for s in report["skipped"]] == ["too_many_faces"]
    with pytest.raises(ValueError, match="inside --input"):
        _run("--input", str(inputs), "--out", str(inputs / "cache"))
    assert not (inputs / "cache").exists()


def test_datasets_read_the_cache(cache):
    from facelab.data.datasets import CachedFaceDataset, FaceCropSample, VideoFrameDataset

    ds = CachedFaceDataset(cache, image_size=112)
    s = ds[0]
    assert s.image.shape == (3, 112, 112) and 0 <= s.image.min() and s.image.max() <= 1
    assert s.landmarks_mp.shape == (478, 2) and s.landmarks_mp.abs().max() < 1 and not s.has_fan
    assert s.mask.shape == (1, 112, 112)
    torch.manual_seed(0)
    jit = CachedFaceDataset(cache, image_size=64, scale_range=(1.2, 1.8))[0]
    lo, hi = jit.landmarks_mp.amin(0), jit.landmarks_mp.amax(0)
    side = float((hi - lo).mean())
    assert 2 / 1.8 - 0.02 < side < 2 / 1.2 + 0.02  # landmark box = crop side / scale
    batch = FaceCropSample.collate([ds[i] for i in range(3)])
    assert batch.image.shape == (3, 3, 112, 112) and batch.has_fan.shape == (3,)
    vid = VideoFrameDataset(cache, image_size=64, frames_per_sample=2, random_frames=False)
    assert len(vid) == 1 and vid[0].image.shape == (2, 3, 64, 64)


def test_datamodule_mixed_batches(cache, tmp_path):
    from facelab.data.augment import FaceAugment
    from facelab.data.modules import CachedFaceDataModule

    dm = CachedFaceDataModule([str(cache), str(cache)], val_roots=[str(cache)], shares=[0.75, 0.25],
                              batch_size=4, num_workers=0, image_size=64, num_batches=3, augment=FaceAugment())
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    for b in batches:
        assert b.image.shape == (4, 3, 64, 64) and b.dataset.tolist() == [0, 0, 0, 1]
    assert len(next(iter(dm.val_dataloader()))) == 4
    # resumable: after one batch, a fresh loader from the saved state yields exactly the other two
    loader = dm.train_dataloader()
    first = next(iter(loader))
    resumed = dm.train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    rest = list(resumed)
    assert [b.index.tolist() for b in rest] == [b.index.tolist() for b in batches[1:]]
    assert first.index.tolist() == batches[0].index.tolist()


def test_reading_data_does_not_import_lightning():
    """The plain datasets (and samplers, caches, the synthetic world) load without Lightning; the old class path
    ``facelab.data.datasets.CachedFaceDataModule`` still resolves (lazily, importing Lightning only then)."""
    code = ("import sys\n"
            "import facelab.data.datasets, facelab.data.sampler, facelab.data.cache, facelab.data.synthetic\n"
            "assert not any(m == 'lightning' or m.startswith(('lightning.', 'pytorch_lightning')) "
            "for m in sys.modules), sorted(m for m in sys.modules if 'lightning' in m)[:5]\n"
            "from facelab.data.datasets import CachedFaceDataModule\n"
            "from facelab.data.modules import CachedFaceDataModule as Moved\n"
            "assert CachedFaceDataModule is Moved and 'lightning' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
