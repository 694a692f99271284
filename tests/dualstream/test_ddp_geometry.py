"""The geometry config under DDP on two CPU processes (slow): both phases, synchronised validation metrics, one
log folder (rank-0 writes only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CPU = ["--model.init_args.model_path=synthetic:tiny", "--data.init_args.model_path=synthetic:tiny",
       "--model.init_args.image_size=32", "--model.init_args.uv_size=16", "--model.init_args.width=0.125",
       "--model.init_args.decoder_width=0.125", "--data.init_args.image_size=32", "--data.init_args.uv_size=16",
       "--data.init_args.batch_size=2", "--data.init_args.num_train=16", "--data.init_args.num_val=4",
       "--data.init_args.num_workers=0", "--model.init_args.parametric_steps=2",
       "--model.init_args.log_images_every_n_steps=2"]


def test_geometry_config_trains_under_ddp_on_two_cpu_processes(tmp_path):
    cli = Path(sys.executable).parent / "lightning-cli"
    cmd = [str(cli), "fit", "--config", str(REPO / "configs" / "dualstream_geometry.yaml"), *CPU,
           "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=4",
           "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "max_steps=4` reached" in out
    versions = list((tmp_path / "logs" / "dualstream_geometry").iterdir())
    assert len(versions) == 1, versions  # one run folder: only rank 0 writes
    assert len(list(versions[0].glob("events.out.tfevents.*"))) == 1
    assert len(list(versions[0].glob("hparams.yaml"))) == 1
