"""Two-process CPU DDP runs (gloo) of the texture and end-to-end configs (slow): they finish, the NaN guard's
collective decision does not deadlock, validation metrics are synchronised and only rank 0 writes logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY_GENERATOR = ["--model.init_args.generator_channels=[8,16,16,16]", "--model.init_args.region_level=2",
                  "--model.init_args.stylize_levels=[2,3]"]
TINY = ["--trainer.max_steps=4", "--trainer.devices=2", "--trainer.accelerator=cpu",
        "--trainer.strategy=ddp_find_unused_parameters_true", "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
        "--model.init_args.allow_random_init=true", "--model.init_args.image_size=32",
        "--model.init_args.uv_size=32", "--model.init_args.log_images_every_n_steps=1",
        "--data.init_args.image_size=32", "--data.init_args.uv_size=32", "--data.init_args.num_train=8",
        "--data.init_args.num_val=4", "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
        "--trainer.logger.init_args.save_dir=logs", *TINY_GENERATOR]
STAGES = {
    "dualstream_texture.yaml": ["--model.init_args.contextual_size=32"],
    "dualstream.yaml": ["--model.init_args.geometry_args.width=0.0625",
                        "--model.init_args.geometry_args.decoder_width=0.0625",
                        "--model.init_args.arcface_depth=18"],
}


@pytest.mark.parametrize("config", list(STAGES))
def test_config_trains_under_ddp_on_two_cpu_processes(config, tmp_path):
    cli = Path(sys.executable).parent / "lightning-cli"
    cmd = [str(cli), "fit", "--config", str(REPO / "configs" / config), *TINY, *STAGES[config]]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "max_steps=4` reached" in out
    versions = list((tmp_path / "logs").glob("*/version_*"))
    assert len(versions) == 1, versions  # rank 0 only: one run folder, one event file
    assert len(list(versions[0].glob("events.out.tfevents.*"))) == 1
