"""``configs/dnpm_speech.yaml`` under DDP on two CPU processes (slow): synchronised validation metrics, one log
folder and one checkpoint (rank 0 writes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CPU = [
    "--model.init_args.model_path=synthetic:tiny",
    "--model.init_args.d_model=16",
    "--data.init_args.batch_size=2",
    "--data.init_args.num_train=8",
    "--data.init_args.num_val=4",
    "--data.init_args.seconds=0.5",
    "--trainer.max_steps=4",
    "--trainer.log_every_n_steps=1",
]


@pytest.mark.parametrize("devices", [1, 2])
def test_speech_config_trains(tmp_path, devices):
    cli = Path(sys.executable).parent / "lightning-cli"
    ddp = ["--trainer.accelerator=cpu", f"--trainer.devices={devices}"]
    ddp += ["--trainer.strategy=ddp"] if devices == 2 else []
    cmd = [str(cli), "fit", "--config", str(REPO / "configs" / "dnpm_speech.yaml"), *CPU, *ddp]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "max_steps=4` reached" in out
    versions = list((tmp_path / "logs" / "dnpm_speech").iterdir())
    assert len(versions) == 1, versions  # one run folder: only rank 0 writes
    assert len(list(versions[0].glob("events.out.tfevents.*"))) == 1
    assert len(list(versions[0].rglob("last.ckpt"))) == 1
