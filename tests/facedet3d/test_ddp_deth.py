"""Two-process CPU DDP runs of the DetH, RCAN and detail-regressor configs through ``lightning-cli`` (slow); the DetH
run also checks that both ranks hold the same AU -> expression map (its statistics are summed over the ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SMALL = {
    "facedet3d_deth.yaml": ["--data.init_args.image_size=32", "--data.init_args.texture_size=32",
                            "--data.init_args.map_size=32", "--data.init_args.num_train=8",
                            "--data.init_args.num_val=4", "--data.init_args.batch_size=2",
                            "--data.init_args.precompute_features=false", "--trainer.max_steps=4"],
    "facedet3d_rcan.yaml": ["--data.init_args.full_size=64", "--data.init_args.patch_size=32",
                            "--data.init_args.num_train=4", "--data.init_args.num_val=2",
                            "--data.init_args.batch_size=2", "--trainer.max_steps=2"],
    "facedet3d_regressor.yaml": ["--data.init_args.image_size=32", "--data.init_args.texture_size=32",
                                 "--data.init_args.map_size=32", "--model.init_args.texture_size=32",
                                 "--data.init_args.num_train=4", "--data.init_args.num_val=2",
                                 "--data.init_args.batch_size=2", "--trainer.max_steps=2"],
}


@pytest.mark.parametrize("config", sorted(SMALL))
def test_two_cpu_processes(config, tmp_path):
    cli = Path(sys.executable).parent / "lightning-cli"
    # DetH's D_Exp step leaves DetH without gradients (and the DetH step D_Exp): find_unused_parameters
    strategy = "ddp_find_unused_parameters_true" if "deth" in config else "ddp"
    cmd = [str(cli), "fit", "--config", str(REPO / "configs" / config), *SMALL[config], "--trainer.devices=2",
           "--trainer.accelerator=cpu", f"--trainer.strategy={strategy}", "--trainer.limit_val_batches=1",
           "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "reached" in out
    events = list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert len(events) == 1, events  # rank 0 writes the logs alone
    if "deth" in config:
        import torch

        from facedet3d.module_deth import EXPRESSION_MAP_KEY

        (ckpt,) = tmp_path.rglob("last.ckpt")
        state = torch.load(ckpt, weights_only=True)[EXPRESSION_MAP_KEY]
        # max_steps=4 counts both optimizers: 2 batches x 2 ranks x batch 2 x 2 faces per pair, summed over ranks
        assert state["count"] == 16, state["count"]
