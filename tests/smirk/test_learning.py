"""The learning proof of SMIRK on the synthetic world (slow: ~32 min on a shared 2-core CPU; `make test-slow`).

1. Landmark pretraining (``configs/smirk_pretrain.yaml`` + ``configs/smirk_learning.yaml``: 64x64 crops, batch 16,
   2000 Adam steps at lr 5e-4 with one cosine) must cut the held-out mediapipe landmark NME by at least half from a
   random initialization.
2. The core phase from that checkpoint (``configs/smirk.yaml`` + the overlay: 300 batches of 8, i.e. 150 generator
   and 150 expression-encoder batches, each with a reconstruction-path and a cycle-path step; all four cycle
   groups, templates from the synthetic world; perceptual and emotion off for want of weights) must lower the
   face-region expression vertex error (mean, Table 2 format) below pretraining's.
   Measured 2026-11-21 (19 min on 2 cores): NME 0.264 -> 0.119 (-55%); vertex error 16.05 -> 11.61 mm.

Held-out data: 256 faces of the synthetic ``test`` split (disjoint from the train/val splits); the Table 4 probe on
32 of them x 8 tweaks. Set ``FACELAB_LEARNING_OUT=DIR`` to keep the checkpoints, logs and the three evaluations'
JSON (otherwise they live in pytest's tmp_path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smirk.evaluate import SmirkEvaluation, evaluate_checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 64
PRETRAIN_STEPS, PRETRAIN_BATCH_SIZE = 2000, 16  # as configs/smirk_learning.yaml; one epoch = one cosine
CORE_BATCHES, CORE_BATCH_SIZE = 300, 8  # 2 optimizer steps per batch
NUM_EVAL, PROBE_FACES = 256, 32


def _fit(out: Path, base_config: str, *overrides: str) -> Path:
    """Run ``lightning-cli fit`` with ``base_config`` + the learning overlay; return its ``last.ckpt``."""
    cmd = [sys.executable, "-m", "facelab.cli.train", "fit", "--config", f"configs/{base_config}",
           "--config", "configs/smirk_learning.yaml", f"--trainer.logger.init_args.save_dir={out}",
           "--trainer.enable_progress_bar=false", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    ckpts = sorted(out.glob("*/version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert ckpts, f"no last.ckpt under {out}"
    return ckpts[-1]


def _evaluate(ckpt: Path | None, out: Path, name: str) -> SmirkEvaluation:
    result = evaluate_checkpoint(None if ckpt is None else str(ckpt), num_images=NUM_EVAL, image_size=IMAGE_SIZE,
                                 batch_size=32, probe_faces=PROBE_FACES)
    result.write_json(out / f"eval_{name}.json")
    print(f"\n[{name}]\n{result.format_table()}")
    return result


def test_pretraining_then_core_phase_learn(tmp_path):
    out = Path(os.environ.get("FACELAB_LEARNING_OUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    init = _evaluate(None, out, "init")

    pretrain_ckpt = _fit(out / "pretrain", "smirk_pretrain.yaml", f"--trainer.max_steps={PRETRAIN_STEPS}",
                         f"--data.init_args.batch_size={PRETRAIN_BATCH_SIZE}",
                         f"--data.init_args.num_train={PRETRAIN_STEPS * PRETRAIN_BATCH_SIZE}")
    pretrain = _evaluate(pretrain_ckpt, out, "pretrain")
    assert pretrain.nme_mp <= 0.5 * init.nme_mp, (init.nme_mp, pretrain.nme_mp)

    core_ckpt = _fit(out / "core", "smirk.yaml", f"--model.init_args.pretrain_ckpt={pretrain_ckpt}",
                     f"--data.init_args.batch_size={CORE_BATCH_SIZE}",
                     f"--data.init_args.num_train={CORE_BATCHES * CORE_BATCH_SIZE}",
                     f"--trainer.max_steps={2 * CORE_BATCHES}")
    core = _evaluate(core_ckpt, out, "core")
    summary = {name: r.to_dict() for name, r in (("init", init), ("pretrain", pretrain), ("core", core))}
    (out / "learning_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    assert core.expression_vertex_error.mean_mm < pretrain.expression_vertex_error.mean_mm, (
        pretrain.expression_vertex_error, core.expression_vertex_error)
