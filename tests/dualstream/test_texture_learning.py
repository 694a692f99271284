"""Learning proof of the texture stage (slow): after training on the synthetic FTD, the held-out texture MAE (paper
Table II's metric) is below both trivial answers: the linear-albedo baseline (``I_ua`` itself, the best linear 3DMM
albedo of each face) and the mean texture of the training set. Printed side by side.

CPU-sized: 64^2 images and maps, a narrow generator, the paper's losses and weights (L2 0.1, contextual 3 on a
frozen random VGG19 here, PatchGAN 0.2), Adam for G and D at lr 1e-3 (the paper's 1e-4 is for 40k images and
hundreds of thousands of steps; 200 CPU steps need a larger step), a fixed in-memory training set.
"""

from __future__ import annotations

import time

import pytest
import torch

from dualstream.module import TextureModule, texture_mae
from dualstream.texture_data import SyntheticTextureDataset, TextureSample

pytestmark = pytest.mark.slow

SIZE, NUM_TRAIN, NUM_VAL, BATCH, STEPS, LR = 64, 128, 32, 8, 200, 1e-3
MARGIN = 0.9  # the trained MAE must be below 90% of the best baseline


def _samples(split: str, n: int, model=None) -> tuple[list[TextureSample], object]:
    ds = SyntheticTextureDataset(n, split, image_size=SIZE, uv_size=SIZE, model=model)
    out = []
    for start in range(0, n, 16):
        out += ds.__getitems__(list(range(start, min(n, start + 16))))
    return out, ds.model


def test_texture_stage_beats_linear_albedo_and_mean_texture():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    t0 = time.time()
    train, model = _samples("train", NUM_TRAIN)
    val = TextureSample.collate(_samples("val", NUM_VAL, model)[0])
    module = TextureModule(generator_channels=(16, 32, 64, 64), region_level=2, stylize_levels=(2, 3),
                           image_size=SIZE, uv_size=SIZE, contextual_size=SIZE, allow_random_init=True, lr=LR,
                           log_images_every_n_steps=0)
    untrained = _mae(module, val)
    opt_g, opt_d = module.configure_optimizers()
    g = torch.Generator().manual_seed(0)
    module.train()
    for step in range(STEPS):
        idx = torch.randint(len(train), (BATCH,), generator=g).tolist()
        batch = TextureSample.collate([train[i] for i in idx])
        texture, _, albedo_map = module(batch)
        d = module.discriminator_losses(batch, texture, albedo_map)["discriminator"]
        opt_d.zero_grad()
        d.backward()
        opt_d.step()
        terms = module.generator_losses(batch, texture, albedo_map)
        loss = sum(getattr(module.weights, k) * v for k, v in terms.items())
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        if step % 50 == 0:
            print(f"step {step}: {', '.join(f'{k} {float(v):.4f}' for k, v in terms.items())}, D {float(d):.3f}, "
                  f"val MAE {_mae(module, val):.4f} ({time.time() - t0:.0f} s)", flush=True)
    trained = _mae(module, val)
    train_batch = TextureSample.collate(train)
    m = train_batch.texture_mask
    mean_texture = (train_batch.texture * m).sum(0, keepdim=True) / m.sum(0, keepdim=True).clamp_min(1)
    baselines = {"linear albedo I_ua": float(texture_mae(val.albedo_map, val.texture, val.texture_mask).mean()),
                 "mean texture": float(texture_mae(mean_texture.expand_as(val.texture), val.texture,
                                                   val.texture_mask).mean()),
                 "untrained generator": untrained}
    print(f"\ntexture MAE on {NUM_VAL} held-out faces after {STEPS} steps ({time.time() - t0:.0f} s):")
    print(f"  texture stage (SRSM, n=16)   {trained:.4f}")
    for name, value in baselines.items():
        print(f"  {name:<28} {value:.4f}   (trained / baseline = {trained / value:.2f})")
    best = min(baselines["linear albedo I_ua"], baselines["mean texture"])
    assert trained < MARGIN * best


@torch.no_grad()
def _mae(module: TextureModule, batch) -> float:
    module.eval()
    texture, _, _ = module(batch)
    module.train()
    return float(texture_mae(texture, batch.texture, batch.texture_mask).mean())
