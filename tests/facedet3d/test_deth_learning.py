"""Learning proof of DetH on the synthetic world (slow; trains ``configs/facedet3d_deth.yaml`` as it is, ~10 min on 2
quiet cores): on 64 held-out same-identity pairs the hallucinated map is compared with the TRUE wrinkle map of the
target expression (never seen) beside "copy the input", "zero map" and the untrained DetH; D_Exp's AU head on the
held-out real maps beside the mean-AU answer and the untrained head; the target BFM expression that the AU ->
expression map gives (Eq. 3's alpha^_e, :mod:`facedet3d.expression`) beside copying the input's and the mean.

Bars (issue 10): hallucinated error <= 0.7 x the best of its baselines; AU MAE <= AU_BAR x the best of its
baselines; expression MSE <= EXPRESSION_BAR x the best of its baselines. The numbers are in the README
(FaceDet3D, Proofs).

History (2026-12-02), kept because it says what decides on this data:
- 64^2 maps, 300 batches, GAN on: 0.91x the zero map (bar not met). Supervised-only probes: the signal is learnable
  (a least-squares linear map y -> 64^2 map reaches 0.35x zero); DetH was step-limited, not loss-weight-limited
  (0.79x after 1000 steps at 64^2, 0.56x at 32^2, 0.53x at 32^2 with ``decoder_coords``), so the CPU config uses
  32^2 maps, decoder coordinates and 2000 batches.
- D_Exp's AU head predicted the mean AU (held-out MAE 0.191 vs 0.191) for two reasons, each measured:
  the map entered as map / 3 mm (~0.03 beside the UV channels; supervised AU head alone, 600 steps: 0.190 at 3 mm,
  0.120 at 0.15 mm, hence ``input_scale_mm``), and R1 with StyleGAN2's FFHQ gamma of 10 flattened D_Exp's shared
  encoder at 32^2 (400 batches of this config: MAE 0.194, prediction std 0.0002 with R1 even with the realism loss
  off; 0.166, std 0.099 with the realism loss and without R1),
  and 0.05 (StyleGAN2-ADA's heuristic for this resolution and batch) still gave 0.190 after 2000 batches, hence R1
  off in the CPU config (the paper config keeps gamma 1.0; R1 is taken in the network's input units).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from facedet3d.data import FaceDetailDataModule
from facedet3d.module_deth import DetHModule

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
AU_BAR = 0.8  # D_Exp's held-out AU MAE must be <= this x the mean-AU answer's
EXPRESSION_BAR = 0.8  # the target expression's MSE must be <= this x the best of copy-input and mean expression


def test_deth_hallucinates_the_target_wrinkles():
    """configs/facedet3d_deth.yaml as it is (model, data and step budget), with image logging off."""
    torch.set_num_threads(2)
    config = yaml.safe_load((REPO / "configs" / "facedet3d_deth.yaml").read_text())
    L.seed_everything(config["seed_everything"])
    dm = FaceDetailDataModule(**config["data"]["init_args"])
    dm.setup("fit")
    n_val = len(dm.datasets["val"])
    val = dm.collate(dm.datasets["val"].__getitems__(list(range(n_val))))
    module = DetHModule(**{**config["model"]["init_args"], "log_images_every_n_steps": 0})
    untrained = {k: float(v) for k, v in module.evaluate_pairs(val).items()}
    trainer = L.Trainer(max_steps=config["trainer"]["max_steps"], accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    module.eval()
    r = {k: float(v) for k, v in module.evaluate_pairs(val).items()}
    print(f"detail L1 (mm) vs the true target map: DetH {r['detail_l1']:.4f}, untrained {untrained['detail_l1']:.4f}, "
          f"copy input {r['detail_l1_copy_input']:.4f}, zero {r['detail_l1_zero']:.4f}; D_Exp AU MAE "
          f"{r['au_mae']:.4f} vs mean-AU {r['au_mae_mean_baseline']:.4f} (untrained {untrained['au_mae']:.4f}); "
          f"target BFM expression MSE (Eq. 3's alpha^_e from the AU map) {r['expression_mse']:.4f}, keeping the "
          f"input's residual {r['expression_mse_keep_residual']:.4f}, copy input {r['expression_mse_copy_input']:.4f}"
          f", mean expression {r['expression_mse_mean']:.4f}")
    assert r["detail_l1"] <= 0.7 * min(r["detail_l1_copy_input"], r["detail_l1_zero"], untrained["detail_l1"])
    assert r["au_mae"] <= AU_BAR * min(r["au_mae_mean_baseline"], untrained["au_mae"])
    assert r["expression_mse"] <= EXPRESSION_BAR * min(r["expression_mse_copy_input"], r["expression_mse_mean"])
