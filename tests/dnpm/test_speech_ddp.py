"""``configs/dnpm_speech.yaml`` under DDP on two CPU processes (slow): synchronised validation metrics, one log
folder and one checkpoint (rank 0 writes)."""

from __future__ import annotations

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
def test_speech_config_trains(tmp_path, devices, lightning_fit, single_run):
    ddp = ["--trainer.accelerator=cpu", f"--trainer.devices={devices}"]
    ddp += ["--trainer.strategy=ddp"] if devices == 2 else []
    proc = lightning_fit("--config", REPO / "configs" / "dnpm_speech.yaml", *CPU, *ddp, cwd=tmp_path, timeout=900)
    single_run(proc, tmp_path / "logs" / "dnpm_speech")  # one run folder, event file and checkpoint: rank 0 writes
    assert "max_steps=4` reached" in proc.stdout + proc.stderr
