"""``facelab prepare --method dnpm``: FaceScape PNGs -> a float cache; resumable, skips reported with reasons."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnpm import prepare
from dnpm.data import FACESCAPE, DisplacementFormatError, read_index

FMT = FACESCAPE.scaled(1024)  # the layout at 1/4 size: crop (275, 150, 750, 625)


def write_subject(root: Path, subject: str, stems: list[str], rng: np.random.Generator, params: bool = True) -> None:
    """A FaceScape-layout subject: 16-bit displacement PNGs and (optionally) its bilinear vectors."""
    (root / subject / "dpmap").mkdir(parents=True, exist_ok=True)
    (root / subject / "params").mkdir(exist_ok=True)
    if params:
        np.save(root / subject / "params" / "id.npy", rng.standard_normal(50))
    for stem in stems:
        blocks = 32768 + rng.standard_normal((FMT.size // 16, FMT.size // 16)) * 500  # low entropy: fast to write
        raw = np.kron(blocks, np.ones((16, 16))).clip(0, 65535).astype(np.uint16)
        Image.fromarray(raw).save(root / subject / "dpmap" / f"{stem}.png", compress_level=1)
        if params:
            exp = np.zeros(52)
            exp[0], exp[1 + len(stem) % 50] = 1.0, 0.5
            np.save(root / subject / "params" / f"{stem}.npy", exp)


@pytest.fixture
def facescape(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "facescape"
    write_subject(root, "1", ["1_neutral", "2_smile"], rng)
    write_subject(root, "2", ["1_neutral", "2_smile"], rng)
    write_subject(root, "3", ["1_neutral"], rng, params=False)  # no vectors
    Image.fromarray(np.zeros((FMT.size, FMT.size), np.uint8)).save(root / "2" / "dpmap" / "3_eight_bit.png")
    Image.fromarray(np.zeros((FMT.size, FMT.size, 3), np.uint8)).save(root / "2" / "dpmap" / "4_rgb.png")
    Image.fromarray(np.full((256, 256), 32768, np.uint16)).save(root / "2" / "dpmap" / "5_small.png")
    (root / "2" / "dpmap" / "6_truncated.png").write_bytes((root / "1" / "dpmap" / "1_neutral.png").read_bytes()[:5000])
    nan = np.zeros(52)
    nan[0], nan[3] = 1.0, np.nan
    write_subject(root, "4", ["1_neutral"], rng)
    np.save(root / "4" / "params" / "1_neutral.npy", nan)
    return root


EXPECTED_SKIPS = {"corrupt": 1, "missing_params": 1, "non_finite": 1, "not_16bit": 1, "not_single_channel": 1,
                  "wrong_size": 1}


def test_prepare_writes_float_maps_and_reports_skips(facescape, tmp_path):
    out = tmp_path / "cache"
    report = prepare.prepare_facescape(facescape, out, resolution=32, fmt=FMT, progress=False)
    assert report["maps"] == 4 and report["subjects"] == 2
    assert report["skipped_by_reason"] == EXPECTED_SKIPS
    assert json.loads((out / "report.json").read_text()) == report
    entry = next(e for e in read_index(out) if e["key"] == "1/2_smile")
    arr = np.load(out / entry["file"])
    assert arr.dtype == np.float32 and arr.shape == (32, 32) and np.isfinite(arr).all()
    assert len(entry["identity"]) == 50 and len(entry["expression"]) == 52 and entry["expression"][0] == 1.0
    assert not list(out.rglob("*.tmp*"))  # nothing half-written


def test_prepare_resumes_without_redoing_work(facescape, tmp_path):
    out = tmp_path / "cache"
    prepare.prepare_facescape(facescape, out, resolution=32, fmt=FMT, progress=False)
    done = out / "maps" / "1" / "1_neutral.npy"
    stamp = done.stat().st_mtime_ns
    write_subject(facescape, "5", ["1_neutral"], np.random.default_rng(5))
    with open(out / "index.jsonl", "a") as f:
        f.write('{"key": "interrupted')  # a run killed mid-append
    report = prepare.prepare_facescape(facescape, out, resolution=32, fmt=FMT, progress=False)
    assert report["last_run"]["new_items"] == 1 and report["maps"] == 5
    assert report["skipped_by_reason"] == EXPECTED_SKIPS  # earlier skips are remembered, not redone
    assert done.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings"):
        prepare.prepare_facescape(facescape, out, resolution=64, fmt=FMT, progress=False)


def test_prepare_options_and_refusals(facescape, tmp_path):
    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    opts = parser.parse_args(["--input", str(facescape), "--out", str(tmp_path / "c16"), "--resolution", "32",
                              "--dtype", "float16", "--no-params", "--no-progress"])
    assert opts.resolution == 32 and opts.dtype == "float16" and opts.no_params
    report = prepare.prepare_facescape(opts.input, opts.out, opts.resolution, opts.dtype, fmt=FMT,
                                       need_params=not opts.no_params, progress=False)
    assert report["maps"] == 5  # the subject without vectors is kept when they are not needed
    assert np.load(next((tmp_path / "c16" / "maps").rglob("*.npy"))).dtype == np.float16
    with pytest.raises(ValueError, match="inside --input"):
        prepare.prepare_facescape(facescape, facescape / "cache", 32, fmt=FMT, progress=False)
    with pytest.raises(ValueError, match="resolution"):
        prepare.prepare_facescape(facescape, tmp_path / "c", 16, fmt=FMT, progress=False)
    with pytest.raises(DisplacementFormatError, match="dpmap"):
        prepare.prepare_facescape(tmp_path / "c16", tmp_path / "c2", 32, fmt=FMT, progress=False)


def test_run_on_full_size_facescape_maps(tmp_path, capsys):
    """The command's defaults: FaceScape's 4096^2 layout, the crop (1100, 600, 3000, 2500), mm scale 0.914."""
    root = tmp_path / "fs"
    (root / "7" / "dpmap").mkdir(parents=True)
    (root / "7" / "params").mkdir()
    raw = np.full((4096, 4096), 32768 + 16384, np.uint16)  # +0.457 mm everywhere ...
    raw[600:1550, 1100:3000] = 32768 - 8192  # ... but -0.2285 mm on the crop's upper half
    raw[:600] = 0  # outside the crop: must not leak in
    Image.fromarray(raw).save(root / "7" / "dpmap" / "1_neutral.png", compress_level=1)
    np.save(root / "7" / "params" / "id.npy", np.zeros(50))
    np.save(root / "7" / "params" / "1_neutral.npy", np.eye(52)[0])
    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    opts = parser.parse_args(["--input", str(root), "--out", str(tmp_path / "cache"), "--resolution", "50",
                              "--no-progress"])
    assert prepare.run(opts) == 0
    assert "1 map(s) of 1 subject(s), 0 skipped" in capsys.readouterr().err
    arr = np.load(tmp_path / "cache" / "maps" / "7" / "1_neutral.npy")
    assert arr.shape == (50, 50)
    np.testing.assert_allclose(arr[:25], -0.914 / 4, atol=1e-6)  # 1900 px / 50 = 38 px per texel: exact rows
    np.testing.assert_allclose(arr[25:], 0.914 / 2, atol=1e-6)


def test_identity_factors_fill_in_missing_identity_files(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "fs"
    write_subject(root, "2", ["1_neutral"], rng)
    write_subject(root, "9", ["1_neutral"], rng)  # beyond the factors' rows
    for subject in ("2", "9"):
        (root / subject / "params" / "id.npy").unlink()
    factors = rng.standard_normal((4, 50)) * 3 + 1
    np.save(tmp_path / "factors_id_847_50_52.npy", factors)
    report = prepare.prepare_facescape(root, tmp_path / "cache", 32, fmt=FMT, progress=False,
                                       identity_factors=tmp_path / "factors_id_847_50_52.npy")
    assert report["maps"] == 1 and report["skipped_by_reason"] == {"missing_params": 1}
    identity = np.array(read_index(tmp_path / "cache")[0]["identity"])
    expected = (factors[1] - factors.mean(0)) / factors.std(0)  # subject 2 = row 1, standardised
    np.testing.assert_allclose(identity, expected, rtol=1e-5, atol=1e-5)
    np.save(tmp_path / "bad.npy", np.full((4, 50), np.nan))
    with pytest.raises(DisplacementFormatError, match="NaN"):
        prepare.read_identity_factors(tmp_path / "bad.npy")


def test_vectors_fitted_to_registered_meshes(tmp_path):
    """--fit-model: identity (shared) and expressions fitted to <subject>/models_reg/*.obj recover the truth."""
    from facelab.io.obj import write_obj
    from facelab.morphable.bilinear import BilinearModel

    model = BilinearModel("synthetic:tiny")
    g = torch.Generator().manual_seed(0)
    identity = torch.randn(1, 50, generator=g).expand(2, 50)
    blend = torch.rand(2, 51, generator=g) * (torch.rand(2, 51, generator=g) < 0.3)
    verts = model(model.make_params(identity, blend)).verts
    root = tmp_path / "fs"
    write_subject(root, "3", ["1_neutral", "2_smile"], np.random.default_rng(3), params=False)
    (root / "3" / "models_reg").mkdir()
    for stem, v in zip(["1_neutral", "2_smile"], verts):
        write_obj(root / "3" / "models_reg" / f"{stem}.obj", v.numpy(), model.faces.numpy())
    report = prepare.prepare_facescape(root, tmp_path / "cache", 32, fmt=FMT, progress=False,
                                       fit_model="synthetic:tiny")
    assert report["maps"] == 2 and report["items_skipped"] == 0
    entries = sorted(read_index(tmp_path / "cache"), key=lambda e: e["stem"])
    fitted = model(model.make_params(torch.tensor([e["identity"] for e in entries]),
                                     torch.tensor([e["expression"][1:] for e in entries]))).verts
    err = (fitted - verts).norm(dim=-1).mean()
    baseline = (model(model.make_params(torch.zeros(2, 50), torch.zeros(2, 51))).verts - verts).norm(dim=-1).mean()
    print(f"mesh fit: mean vertex error {float(err):.4f} mm vs mean-face baseline {float(baseline):.3f} mm")
    assert err < 0.05 * baseline
    assert entries[0]["expression"][0] == 1.0 and np.allclose(entries[0]["identity"], entries[1]["identity"])


@pytest.mark.slow
def test_paper_config_trains_on_a_prepared_cache_in_two_processes(tmp_path, lightning_fit, single_run):
    """``configs/dnpm.yaml`` + ``configs/dnpm_1024.yaml`` (the paper's real-data overlay: a FaceScape cache, its
    recipe), shrunk to 32^2, on a cache this command made from FaceScape-layout PNGs, in DDP over two CPU processes
    (gloo) through ``lightning-cli``: it finishes, and rank 0 alone writes the logs."""
    rng = np.random.default_rng(0)
    for subject in range(1, 11):
        write_subject(tmp_path / "facescape", str(subject), ["1_neutral", "2_smile"], rng, params=False)
    prepare.prepare_facescape(tmp_path / "facescape", tmp_path / "cache", resolution=32, fmt=FMT, progress=False,
                              need_params=False)
    repo = Path(__file__).resolve().parents[2]
    small = [f"--model.init_args.{k}" for k in ("resolution=32", "channel_base=512", "channel_max=32", "z_dim=32",
                                                 "w_dim=32", "mapping_layers=2", "render_size=32")]
    small += [f"--data.init_args.{k}" for k in ("resolution=32", "num_workers=0", "pin_memory=false",
                                                "batch_size=4", f"cache_dir={tmp_path / 'cache'}")]
    proc = lightning_fit("--config", repo / "configs" / "dnpm.yaml", "--config", repo / "configs" / "dnpm_1024.yaml",
                         *small, "--trainer.max_steps=4", "--trainer.accelerator=cpu", "--trainer.devices=2",
                         "--trainer.strategy=ddp_find_unused_parameters_true", "--trainer.enable_progress_bar=false",
                         cwd=tmp_path)
    single_run(proc, tmp_path / "logs" / "dnpm")  # one run folder and event file: no per-rank duplicates
