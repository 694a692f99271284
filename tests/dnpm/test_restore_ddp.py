"""The restoration chain's configs under DDP on two CPU processes (slow): ``configs/dnpm_regressor.yaml`` (the
image -> UV regressor), then ``configs/dnpm_restore.yaml`` with ``input: photos`` on that regressor's checkpoint and a
DNPM generator checkpoint (Table III's setting). Each run: one log folder, one event file and one checkpoint (rank 0
writes), validation metrics synchronised over the ranks (``sync_dist``), and the checkpoint chain works across
stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
]
REGRESSOR = [
    "--model.init_args.image_size=64",
    "--model.init_args.ngf=8",
    "--model.init_args.n_downsampling=2",
    "--model.init_args.n_blocks=1",
    "--model.init_args.max_channels=16",
    "--model.init_args.degradation.size=16",
    "--model.init_args.d_channels=8",
    "--trainer.strategy=ddp_find_unused_parameters_true",  # pix2pixHD's G and D step in turn
]
RESTORE = ["--model.init_args.input=photos", "--model.init_args.encoder.input_size=32", "--trainer.strategy=ddp"]


@pytest.fixture
def fit(tmp_path, lightning_fit, single_run):
    """``fit(config, args) -> last.ckpt`` of one ``lightning-cli fit`` run in ``tmp_path`` (tests/dnpm/conftest.py)."""

    def run(config: str, args: list[str]) -> Path:
        proc = lightning_fit("--config", REPO / "configs" / config, *args, *DATA, cwd=tmp_path, timeout=900)
        ckpt = single_run(proc, tmp_path / "logs" / config.removesuffix(".yaml"))
        assert "max_steps=4` reached" in proc.stdout + proc.stderr
        return ckpt

    return run


def test_regressor_then_photo_restore_under_ddp(tmp_path, fit, gan_checkpoint):
    gan_path = gan_checkpoint(tmp_path / "gan.ckpt")
    regressor = fit("dnpm_regressor.yaml", REGRESSOR)
    restore_args = [
        *RESTORE,
        f"--model.init_args.init_ckpt={gan_path}",
        f"--model.init_args.photos.regressor_ckpt={regressor}",
    ]
    restored = fit("dnpm_restore.yaml", restore_args)
    ckpt = torch.load(restored, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["input"] == "photos"
    assert any(k.startswith("regressor.") for k in ckpt["state_dict"])  # one file carries the frozen regressor
