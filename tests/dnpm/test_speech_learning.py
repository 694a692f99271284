"""Learning proof of the speech -> ARKit network on the embedded synthetic speech, against known truth (slow).

Trained through ``SpeechModule.training_step`` (Eq. 8-10, the CPU default of ``configs/dnpm_speech.yaml``: the small
random wav2vec 2.0, d 64, 4 heads, one layer) on ``NUM_TRAIN`` synthetic utterances, then decoded
**autoregressively** (as at inference) on held-out utterances (other seeds: other phone sequences, speakers, pitch,
vocal-tract lengths, identities). Printed beside the trivial baselines "predict the training-mean coefficients"
and "predict zeros" (the untrained network's zero-initialised output); asserted: held-out LVE and coefficient L1
<= 0.5x the best of them.

Measured: see ``MEASURED`` below (``pytest -s`` prints the numbers).
"""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch

from dnpm.module_speech import SpeechModule
from dnpm.speech_data import SpeechBatch, SpeechDataModule, mean_coefficients

pytestmark = pytest.mark.slow

NUM_TRAIN = 256
STEPS = 900
RECIPE = dict(model_path="synthetic", lr=1e-3, training_mode="teacher_forcing", self_feed=0.5)
MEASURED = (
    "2026-12-03, 1 thread on 2 shared cores, this test (9.1 min): held-out LVE 0.92 mm vs 5.95 mean-coefficients "
    "(0.15x), LVE^2 2.09 vs 53.1, coefficient L1 0.0117 vs 0.0289 zeros / 0.0304 mean (0.40x). The fix: the "
    "random wav2vec 2.0's CNN is trained (freeze_feature_extractor: null -> "
    "frozen only with pretrained weights); frozen it was a random projection and the same run reached 0.56x / 0.70x. "
    "Full autoregressive training did not help (LVE 0.59x, coefficient L1 1.35x after 900 steps)."
)


def test_speech_network_beats_the_mean_coefficients_on_held_out_speech():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        start = time.time()
        model = SpeechModule(**RECIPE)
        dm = SpeechDataModule(batch_size=8, num_train=NUM_TRAIN, num_val=16, num_test=16, seconds=3.0, seed=0)
        dm.setup(None)
        trainer = L.Trainer(
            max_steps=STEPS,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
        )
        trainer.fit(model, dm)
        test = SpeechBatch.collate([dm.datasets["test"][i] for i in range(len(dm.datasets["test"]))])
        mean = mean_coefficients(dm.datasets["train"])
        model.eval()
        with torch.no_grad():
            trained = model.metrics(model.predict_batch(test), test)
            base_mean = model.metrics(mean.expand_as(test.coefficients).clone(), test)
            base_zero = model.metrics(torch.zeros_like(test.coefficients), test)
        minutes = (time.time() - start) / 60
    finally:
        torch.set_num_threads(threads)
    print(f"\nspeech -> ARKit, {STEPS} steps ({minutes:.1f} min, 1 thread), held-out autoregressive decoding:")
    for key in ("lve", "lve_sq", "coef_l1", "vertex_l1"):
        print(
            f"  {key:10s} trained {trained[key]:.4f}   mean-coefficients {base_mean[key]:.4f}   "
            f"zeros {base_zero[key]:.4f}"
        )
    for key in ("lve", "coef_l1"):
        best = min(float(base_mean[key]), float(base_zero[key]))
        assert float(trained[key]) <= 0.5 * best, f"{key}: {float(trained[key]):.4f} > 0.5 x {best:.4f}"
