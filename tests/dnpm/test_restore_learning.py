"""Learning proof of detailed reconstruction from a degraded image (DNPM §IV-B, Tables II-IV; slow), on the embedded
default (the synthetic bilinear world's 32^2 displacement maps), against known truth.

1. A small DNPM generator (``test_learning``'s networks) is trained first, or read from ``FACELAB_DNPM_GAN_CKPT``
   (a DnpmModule checkpoint of those 32^2 maps, e.g. one of ``test_learning``'s runs) to save its minutes.
2. Table II: E_deg (Eq. 11-15) trained on x1/4 and x1/8 area-downsampled training maps; on held-out maps (other
   identities) its PSNR / SSIM against the high-quality map are printed beside the bicubic-upsampled input, the mean
   training map, the untrained E_deg (``G(w_mean)``) and the PULSE-like projector fitted to the bicubic input.
3. Table IV: the same at x1/4 without each loss (LPIPS-VGG and ArcFace run on RANDOM trunks here: no local weights
   exist on this machine; their rows say what those random-feature terms do, not what the paper's do).

The asserts are margins over the best trivial baseline (bicubic / mean map) for the full model at both factors.

Status (2026-12-02): this test has NOT been run to completion yet. Scratch measurements with a 6-kimg generator of
``test_learning`` (1 thread, shared 2-core machine): E_deg pixel-only after 300 steps (0.65 s/step) 33.13 dB vs bicubic
33.16 dB at x1/4 (64 held-out maps; untrained 29.94 dB); the full loss costs ~2.7 s/step (LPIPS-VGG + ArcFace-18 at
112^2). On 16 held-out maps the generator's own ceiling (projector fitted to the high-quality map, constant noise) is
37.47 dB against bicubic 36.08 (x1/4) / 34.85 (x1/8): the bar over bicubic leaves E_deg little room at x1/4 with a
generator this short-trained; expect it to need a longer GAN stage and more E_deg steps than the defaults.
"""

from __future__ import annotations

import functools
import os
import time

import lightning as L
import pytest
import torch

from dnpm.data import DisplacementDataModule
from dnpm.detailed3dmm import FACESCAPE_MM_PER_UNIT
from dnpm.module import DnpmModule
from dnpm.module_restore import EncoderSettings, RestoreLossWeights, RestoreModule, restore_scores
from dnpm.projector import ProjectorSettings, project
from dnpm.restore_data import Degradation
from facelab.metrics import psnr, ssim

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # tests/dnpm/conftest.py

RES = 32
GAN_KIMG = float(os.environ.get("FACELAB_DNPM_GAN_KIMG", "6"))
STEPS = int(os.environ.get("FACELAB_RESTORE_STEPS", "600"))
ABLATION_STEPS = int(os.environ.get("FACELAB_RESTORE_ABLATION_STEPS", str(STEPS // 2)))
GAN = dict(
    resolution=RES,
    z_dim=64,
    w_dim=64,
    mapping_layers=8,
    channel_base=1024,
    channel_max=32,
    r1_gamma=0.05,
    ema_kimg=1.0,
    ada_kimg=100.0,
    render_size=0,
    log_every_kimg=1.0,
    snapshot_every_kimg=0.0,
)
ENC = EncoderSettings(input_size=32, depth=18)


@functools.cache
def _data(batch_size: int) -> DisplacementDataModule:
    data = DisplacementDataModule(
        resolution=RES,
        batch_size=batch_size,
        num_workers=0,
        num_train=100,
        num_val=16,
        expressions_per_identity=8,
        persistent_workers=False,
    )
    data.setup("fit")
    return data


@pytest.fixture(scope="module")
def gan_ckpt(tmp_path_factory) -> str:
    given = os.environ.get("FACELAB_DNPM_GAN_CKPT")
    if given:
        return given
    torch.manual_seed(0)
    gan = DnpmModule(**GAN, total_kimg=GAN_KIMG)
    start = time.time()
    L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=10**6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    ).fit(gan, _data(16))
    print(f"\nDNPM {GAN_KIMG:g} kimg in {(time.time() - start) / 60:.1f} min")
    path = tmp_path_factory.mktemp("restore") / "gan.ckpt"
    torch.save({"state_dict": gan.state_dict(), "hyper_parameters": dict(gan.hparams)}, path)
    return str(path)


def _train(gan_ckpt: str, factor: int, steps: int, weights: RestoreLossWeights) -> tuple[RestoreModule, float]:
    torch.manual_seed(0)
    module = RestoreModule(
        init_ckpt=gan_ckpt,
        resolution=RES,
        degradation=Degradation(factor=factor),
        encoder=ENC,
        arcface_depth=18,
        loss_weights=weights,
        lr=1e-3,
        log_images_every_n_steps=0,
    )
    start = time.time()
    L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    ).fit(module, _data(8))
    return module.eval(), (time.time() - start) / 60


def test_restoration_beats_bicubic_tables_ii_and_iv(gan_ckpt):
    val = list(_data(8).val_dataloader())[:8]  # 64 held-out maps of 8 identities never seen in training
    rows: dict[str, dict[int, tuple[float, float]]] = {}
    full = RestoreLossWeights()
    for factor in (4, 8):
        module, minutes = _train(gan_ckpt, factor, STEPS, full)
        scores = restore_scores(module, val)
        high = torch.cat([module.high_and_low(b)[0] for b in val])
        low = torch.cat([module.high_and_low(b)[1] for b in val])
        span = 2 * FACESCAPE_MM_PER_UNIT / module.map_scale_mm
        train_maps = torch.cat([b.map for _, b in zip(range(20), _data(8).train_dataloader())])  # 160 maps
        mean_map = train_maps.mean(0, keepdim=True).expand_as(high) * (_data(8).scale_mm / module.map_scale_mm)
        untrained = RestoreModule(
            init_ckpt=gan_ckpt,
            resolution=RES,
            degradation=Degradation(factor=factor),
            encoder=ENC,
            loss_weights=RestoreLossWeights(1.0, 0.0, 0.0),
        )
        untrained_scores = restore_scores(untrained, val)
        proj = project(
            module.generator,
            low[:16],
            ProjectorSettings(steps=150, lr=0.05, lpips_weight=0.0, w_avg_samples=2000),
            data_range=span,
        )
        rows.setdefault("bicubic", {})[factor] = (scores.input_psnr, scores.input_ssim)
        rows.setdefault("mean training map", {})[factor] = (
            float(psnr(mean_map, high, data_range=span).mean()),
            float(ssim(mean_map, high, data_range=span).mean()),
        )
        rows.setdefault("untrained E_deg (G(w_mean))", {})[factor] = (untrained_scores.psnr, untrained_scores.ssim)
        rows.setdefault("projector (PULSE-like, 16)", {})[factor] = (
            float(psnr(proj.reconstruction, high[:16], data_range=span).mean()),
            float(ssim(proj.reconstruction, high[:16], data_range=span).mean()),
        )
        rows.setdefault("E_deg (ours)", {})[factor] = (scores.psnr, scores.ssim)
        print(f"\nE_deg x1/{factor}: {STEPS} steps in {minutes:.1f} min")
    print("\nTable II (synthetic 32^2 maps, 64 held-out):")
    print(f"  {'method':<30} {'1/4 PSNR':>9} {'SSIM':>7} {'1/8 PSNR':>9} {'SSIM':>7}")
    for name, r in rows.items():
        print(f"  {name:<30} {r[4][0]:9.3f} {r[4][1]:7.4f} {r[8][0]:9.3f} {r[8][1]:7.4f}")

    ablations = {
        "w/o L_id": RestoreLossWeights(identity=0.0),
        "w/o L_pixel": RestoreLossWeights(pixel=0.0),
        "w/o L_lpips": RestoreLossWeights(lpips=0.0),
    }
    print(f"\nTable IV (x1/4; ablations trained {ABLATION_STEPS} steps, full model {STEPS}):")
    for name, weights in ablations.items():
        module, minutes = _train(gan_ckpt, 4, ABLATION_STEPS, weights)
        s = restore_scores(module, val)
        print(f"  {name:<30} {s.psnr:9.3f} {s.ssim:7.4f}   ({minutes:.1f} min)")
    print(f"  {'Full model':<30} {rows['E_deg (ours)'][4][0]:9.3f} {rows['E_deg (ours)'][4][1]:7.4f}")

    for factor in (4, 8):
        best = max(rows["bicubic"][factor][0], rows["mean training map"][factor][0])
        assert rows["E_deg (ours)"][factor][0] > best + 0.2, (factor, rows)
