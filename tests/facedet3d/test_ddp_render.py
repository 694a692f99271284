"""The render config trains under DDP on two CPU processes (gloo): the collective NaN-guard decisions, the frozen
discriminator in R's step and the lazy R1 do not deadlock; only rank 0 writes logs (one TensorBoard run) and the
validation metrics are synchronised (``sync_dist``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SIZE = 32
TINY_CLI = ["--model.init_args.network.init_args.ntex_channels=[4,8]",
            "--model.init_args.network.init_args.tex2im_channels=[4,8]",
            "--model.init_args.network.init_args.features=4",
            "--model.init_args.discriminator.init_args.channels=[4,8,8]",
            f"--model.init_args.image_size={SIZE}", f"--model.init_args.texture_size={SIZE}",
            "--model.init_args.laplacian_levels=3", "--model.init_args.log_images_every_n_steps=1",
            "--model.init_args.r1_interval=2",
            f"--data.init_args.image_size={SIZE}", f"--data.init_args.texture_size={SIZE}",
            "--data.init_args.map_size=64", "--data.init_args.batch_size=2",
            "--data.init_args.num_train=8", "--data.init_args.num_val=4", "--data.init_args.num_workers=0",
            "--trainer.accelerator=cpu", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2",
            "--trainer.log_every_n_steps=1", "--trainer.enable_model_summary=false"]


@pytest.mark.slow
def test_render_config_trains_under_ddp_on_two_cpu_processes(tmp_path):
    cli = Path(sys.executable).parent / "lightning-cli"
    cmd = [str(cli), "fit", "--config", str(REPO / "configs" / "facedet3d_render.yaml"), *TINY_CLI,
           "--trainer.max_steps=8", "--trainer.devices=2", "--trainer.strategy=ddp_find_unused_parameters_true"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "max_steps=8` reached" in proc.stdout + proc.stderr
    runs = list((tmp_path / "logs" / "facedet3d_render").iterdir())
    assert len(runs) == 1, runs  # rank 0 only: one version folder
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1
    assert len(list(runs[0].rglob("*.ckpt"))) >= 1
