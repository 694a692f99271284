"""Learning proof on the embedded default, against known truth (slow): the synthetic bilinear world's displacement
maps at 32^2 (``configs/dnpm.yaml`` networks and recipe).

1. DNPM: after ``GAN_KIMG`` kimg the EMA generator's samples are closer to *held-out* maps (other identities) than
   the untrained generator's and than the trivial "mean map" generator's, in a Fréchet distance on fixed random
   features; and the projector reconstructs held-out maps better with the trained generator than with the
   untrained one and than the mean map (PSNR).
2. Detailed3DMM: the encoder trained through the frozen, trained generator (Eq. 5-7) predicts held-out maps from
   (identity, expression) alone with a PSNR / SSIM above the mean displacement map's.

Every number is printed beside its baselines (``pytest -s``); the asserts are margins over the best baseline.

Measured (2026-12-02, quiet 2-core machine, 7.6 min in all): DNPM 30 kimg (5.5 min, ADA p 0.064): FD trained 0.512
vs untrained 34.751 vs mean map 3.775; projector PSNR trained 39.41 dB vs untrained 33.86 dB vs mean map 32.80 dB.
Detailed3DMM, 6 epochs on 800 identities x 8 expressions (1.9 min): PSNR 36.64 dB / SSIM 0.860 vs mean map
32.14 dB / 0.786 vs untrained encoder 30.65 dB / 0.713. What it took (the bar failed before at 32.21 dB): a generator
trained longer (6 kimg: the same encoder stage reaches 33.8 dB) and many identities (100: 32.8 dB, it memorises them);
the smooth part of the truth (the maps without the per-identity pore layout, which no (id, exp) input can predict)
scores 42.0 dB, the ceiling.
"""

from __future__ import annotations

import copy
import time

import lightning as L
import pytest
import torch

from dnpm.data import DisplacementDataModule
from dnpm.detailed3dmm import FACESCAPE_MM_PER_UNIT
from dnpm.evaluate import RandomMapFeatures, constant_fd, detailed3dmm_scores, generator_fd
from dnpm.module import DnpmModule
from dnpm.module_detailed3dmm import Detailed3DMMLossWeights, Detailed3DMMModule
from dnpm.projector import ProjectorSettings, project
from facelab.metrics import psnr

pytestmark = pytest.mark.slow

RES = 32
GAN_KIMG = 30.0
D3_EPOCHS = 6
D3_IDENTITIES = 800  # the encoder generalises to new identities only from many (100: 32.8 dB, a bare +0.7)
GAN = dict(resolution=RES, z_dim=64, w_dim=64, mapping_layers=8, channel_base=1024, channel_max=32, r1_gamma=0.05,
           ema_kimg=1.0, ada_kimg=100.0, render_size=0, log_every_kimg=1.0, snapshot_every_kimg=0.0)


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


def _held_out(data: DisplacementDataModule, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    maps, ids, exps = [], [], []
    for batch in data.val_dataloader():
        maps.append(batch.map)
        ids.append(batch.identity)
        exps.append(batch.expression)
    return torch.cat(maps)[:n], torch.cat(ids)[:n], torch.cat(exps)[:n]


def _train_mean(data: DisplacementDataModule, batches: int = 40) -> torch.Tensor:
    loader = iter(data.train_dataloader())
    return torch.cat([next(loader).map for _ in range(batches)]).mean(0)


def test_dnpm_and_detailed3dmm_learn_the_synthetic_detail(tmp_path):
    torch.manual_seed(0)
    data = DisplacementDataModule(resolution=RES, batch_size=16, num_workers=0, num_train=100, num_val=16,
                                  expressions_per_identity=8, persistent_workers=False)
    data.setup("fit")
    real, ids, exps = _held_out(data, 128)
    mean_map = _train_mean(data)
    span = 2 * FACESCAPE_MM_PER_UNIT / data.scale_mm  # the FaceScape encoding's [-1, 1] in training units
    features = RandomMapFeatures()

    gan = DnpmModule(**GAN, total_kimg=GAN_KIMG)
    untrained = copy.deepcopy(gan.generator_ema)
    start = time.time()
    L.Trainer(accelerator="cpu", devices=1, max_steps=10**6, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
              num_sanity_val_steps=0).fit(gan, data)
    gan_minutes = (time.time() - start) / 60
    trained = gan.generator_ema.eval()

    fd_trained, fd_untrained = generator_fd(trained, real, features), generator_fd(untrained, real, features)
    fd_mean = constant_fd(mean_map, real, features)
    print(f"\nDNPM {GAN_KIMG:g} kimg in {gan_minutes:.1f} min, ADA p {float(gan.augment.p):.3f}; random-feature FD to "
          f"held-out maps: trained {fd_trained:.3f}, untrained {fd_untrained:.3f}, mean map {fd_mean:.3f}")

    settings = ProjectorSettings(steps=150, lr=0.05, lpips_weight=0.0, w_avg_samples=2000)
    target = real[:8]
    proj_trained = project(trained, target, settings, data_range=span).psnr.mean().item()
    proj_untrained = project(untrained, target, settings, data_range=span).psnr.mean().item()
    proj_mean = psnr(mean_map[None].expand_as(target), target, data_range=span).mean().item()
    print(f"projector PSNR on 8 held-out maps: trained {proj_trained:.2f} dB, untrained {proj_untrained:.2f} dB, "
          f"mean map {proj_mean:.2f} dB")

    ckpt = tmp_path / "gan.ckpt"
    torch.save({"state_dict": gan.state_dict(), "hyper_parameters": dict(gan.hparams)}, ckpt)
    d3 = Detailed3DMMModule(init_ckpt=str(ckpt), resolution=RES, hidden=(128, 128, 128, 128, 128),
                            loss_weights=Detailed3DMMLossWeights(pixel=1.0, lpips=0.0), log_images_every_n_steps=0)
    untrained_scores = detailed3dmm_scores(copy.deepcopy(d3.model).eval(), real, ids, exps, mean_map, span)
    data8 = DisplacementDataModule(resolution=RES, batch_size=8, num_workers=0, num_train=D3_IDENTITIES, num_val=16,
                                   expressions_per_identity=8, scale_mm=data.scale_mm, persistent_workers=False)
    start = time.time()
    L.Trainer(accelerator="cpu", devices=1, max_epochs=D3_EPOCHS, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
              num_sanity_val_steps=0).fit(d3, data8)
    scores = detailed3dmm_scores(d3.model.eval(), real, ids, exps, mean_map, span)
    print(f"{scores.format('Detailed3DMM (E_id,exp) on 128 held-out maps')} ({(time.time() - start) / 60:.1f} min); "
          f"untrained encoder {untrained_scores.psnr:.2f} dB / {untrained_scores.ssim:.3f}")

    assert fd_trained < 0.5 * min(fd_untrained, fd_mean)
    assert proj_trained > max(proj_untrained, proj_mean) + 1.0
    assert scores.psnr > max(scores.baseline_psnr, untrained_scores.psnr) + 1.0
    assert scores.ssim > max(scores.baseline_ssim, untrained_scores.ssim) + 0.02
