"""The restoration chain's configs under DDP on two CPU processes (slow): ``configs/dnpm_regressor.yaml`` (the
image -> UV regressor), then ``configs/dnpm_restore.yaml`` with ``input: photos`` on that regressor's checkpoint and a
DNPM generator checkpoint (Table III's setting). Each run: one log folder, one event file and one checkpoint (rank 0
writes), validation metrics synchronised over the ranks (``sync_dist``), and the checkpoint chain works across
stages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dnpm.module import DnpmModule

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
DATA = [
    "--data.init_args.batch_size=2",
    "--data.init_args.num_train=8",
    "--data.init_args.num_val=4",
    "--data.init_args.num_test=4",
    "--trainer.max_steps=4",
    "--trainer.log_every_n_steps=1",
    "--trainer.accelerator=cpu",
    "--trainer.devices=2",
    "--trainer.strategy=ddp",
]
REGRESSOR = [
    "--model.init_args.image_size=64",
    "--model.init_args.ngf=8",
    "--model.init_args.n_downsampling=2",
    "--model.init_args.n_blocks=1",
    "--model.init_args.max_channels=16",
    "--model.init_args.degradation.size=16",
]
RESTORE = ["--model.init_args.input=photos", "--model.init_args.encoder.input_size=32"]


def _fit(config: str, args: list[str], cwd: Path) -> Path:
    cli = Path(sys.executable).parent / "lightning-cli"
    cmd = [str(cli), "fit", "--config", str(REPO / "configs" / config), *args, *DATA]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{config}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "max_steps=4` reached" in out
    name = config.removesuffix(".yaml")
    versions = list((cwd / "logs" / name).iterdir())
    assert len(versions) == 1, versions  # one run folder: only rank 0 writes
    assert len(list(versions[0].glob("events.out.tfevents.*"))) == 1
    ckpts = list(versions[0].rglob("last.ckpt"))
    assert len(ckpts) == 1, ckpts
    return ckpts[0]


def test_regressor_then_photo_restore_under_ddp(tmp_path):
    torch.manual_seed(0)
    gan = DnpmModule(
        resolution=32, z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=16, render_size=0
    )
    gan.map_scale_mm.fill_(0.08)
    gan_path = tmp_path / "gan.ckpt"
    torch.save({"state_dict": gan.state_dict(), "hyper_parameters": dict(gan.hparams)}, gan_path)

    regressor = _fit("dnpm_regressor.yaml", REGRESSOR, tmp_path)
    restore_args = [
        *RESTORE,
        f"--model.init_args.init_ckpt={gan_path}",
        f"--model.init_args.photos.regressor_ckpt={regressor}",
    ]
    restored = _fit("dnpm_restore.yaml", restore_args, tmp_path)
    ckpt = torch.load(restored, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["input"] == "photos"
    assert any(k.startswith("regressor.") for k in ckpt["state_dict"])  # one file carries the frozen regressor
