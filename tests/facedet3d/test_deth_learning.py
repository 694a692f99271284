"""Learning proof of DetH on the synthetic world (slow): after a CPU-sized run the hallucinated map is compared with
the TRUE wrinkle map of the target expression (never seen for these held-out pairs) beside "copy the input",
"zero map" and the untrained DetH; D_Exp's AU head on held-out real maps beside the mean-AU answer.

Bar (issue 10): hallucinated error <= 0.7 x min(copy, zero); AU MAE below the mean-AU baseline.
Measured 2026-12-02 (loaded 2-core machine, 300 batches of 8, 256 train / 64 val pairs at 64^2, lr 1e-3, weak 100,
mask 0.01, adversarial 0.1, AU 0.1): untrained 0.0402 mm, copy 0.0402, zero 0.0332, trained 0.0303 (0.91 x zero:
the 0.7 bar is NOT met yet); AU MAE 0.194 vs mean-AU 0.190.

Diagnosis 2026-12-02 (second session, supervised-only probes of DetH on 256 cached train / 64 val pairs, L1 to the
true target map, batch 8, Adam 1e-3; zero map 0.0332 mm, copy input 0.0402 at 64^2):
- the signal is learnable and mostly a function of the target AUs: a linear map y -> 64^2 map (least squares)
  reaches 0.0116 (0.35x zero); the same per-texel templates trained with L1/Adam reach 0.0193 after 300 steps;
- DetH itself (no GAN) is the bottleneck, not the loss weights: 0.029-0.030 after 300-400 steps at 64^2 whatever
  the lr (1e-4, 3e-4, 1e-3), input scaling (0.15 mm instead of 3 mm), output instance norm on/off or mask weight;
  its output barely depends on y (changing y moves the map by ~0.01 mm); 1000 steps at 64^2: 0.0261 (0.79x);
- at 32^2 with ``decoder_coords=True`` (UV coordinates at every decoder block) the same probe reaches 0.0178 after
  1000 steps (0.53x zero; ~0.06 s/step) and the paper's decoder (``decoder_coords=False``) 0.0187 (0.56x): the map
  size (and so the steps a CPU budget buys) is what decides, the coordinates help a little. Next: this test at
  ``map_size=32`` for ~2000 batches; not yet run with the GAN terms.
- D_Exp's AU head sees [map / 3 mm, u, v] through a spectral-normalised encoder: the map channel (~0.006 in those
  units, std 0.12 mm) is dwarfed by the UV channels, which is the likely reason it predicts the mean AU.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from facedet3d.data import FaceDetailDataModule
from facedet3d.module_deth import DetHLossWeights, DetHModule

pytestmark = pytest.mark.slow


def test_deth_hallucinates_the_target_wrinkles():
    torch.set_num_threads(2)
    L.seed_everything(0)
    dm = FaceDetailDataModule(pairs=True, image_size=64, texture_size=64, map_size=64, num_train=256, num_val=64,
                              batch_size=8, num_workers=0, memory_cache=True, precompute_features=True)
    dm.setup("fit")
    val = dm.collate(dm.datasets["val"].__getitems__(list(range(64))))
    weights = DetHLossWeights(weak=100.0, mask_mean=0.01, adversarial=0.1, au_fake=0.1)
    module = DetHModule(base_channels=16, max_channels=64, num_down=2, num_bottleneck=2, vector_channels=16,
                        discriminator_channels=[16, 32, 64, 64], lr=1e-3, pair_fraction=1.0, loss_weights=weights,
                        log_images_every_n_steps=0)
    untrained = {k: float(v) for k, v in module.evaluate_pairs(val).items()}
    trainer = L.Trainer(max_steps=1200, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    module.eval()
    r = {k: float(v) for k, v in module.evaluate_pairs(val).items()}
    print(f"detail L1 (mm) vs the true target map: DetH {r['detail_l1']:.4f}, untrained {untrained['detail_l1']:.4f}, "
          f"copy input {r['detail_l1_copy_input']:.4f}, zero {r['detail_l1_zero']:.4f}; D_Exp AU MAE "
          f"{r['au_mae']:.4f} vs mean-AU {r['au_mae_mean_baseline']:.4f} (untrained {untrained['au_mae']:.4f})")
    assert r["detail_l1"] <= 0.7 * min(r["detail_l1_copy_input"], r["detail_l1_zero"])
    assert r["au_mae"] < r["au_mae_mean_baseline"]
