"""DnpmModule: the StyleGAN2/ADA recipe trains a few steps through a real ``lightning.Trainer`` on synthetic
displacement maps (finite losses, every trainable parameter of G and D gets a gradient, lazy R1 / path length on
their intervals, the EMA generator moves, kimg progress stops the run, TensorBoard scalars and image grids on rank
0); a non-finite batch skips the step; Adam's lazy-regularisation correction; the configs resolve and train
through ``lightning-cli``."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from dnpm.module import DnpmModule, maps_of_batch
from facelab.data.detail_maps import DisplacementSample, SyntheticDisplacementDataset

REPO = Path(__file__).resolve().parents[2]
RES, BATCH = 16, 4
TINY = dict(resolution=RES, z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=32, render_size=32,
            grid_size=4)


@functools.cache
def _dataset() -> SyntheticDisplacementDataset:
    return SyntheticDisplacementDataset(num_identities=8, expressions_per_identity=2, resolution=32)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/dnpm/conftest.py


def batches(n: int = 4, res: int = RES) -> list:
    """Synthetic maps (generated at 32^2, the data's smallest size, area-averaged to ``res``), 0.08 mm per unit."""
    data = _dataset()
    out = []
    for i in range(n):
        batch = DisplacementSample.collate([data[i * BATCH + j] for j in range(BATCH)]).normalized(0.08)
        out.append(replace(batch, map=F.adaptive_avg_pool2d(batch.map, res),
                           mask=F.adaptive_avg_pool2d(batch.mask, res)))
    return out


class GradientRecorder(Callback):
    """Per optimizer step: the names of the parameters that carry a finite, non-zero gradient."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.names |= {n for n, p in pl_module.named_parameters()
                       if p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0}


def fit(module, data, tmp_path, callbacks=(), **kwargs):
    kwargs.setdefault("max_steps", 100)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=TensorBoardLogger(tmp_path, name="tb"),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1, callbacks=list(callbacks), **kwargs)
    trainer.fit(module, DataLoader(data, batch_size=None))
    return trainer


def test_recipe_trains_every_parameter_with_finite_losses_and_logs(tmp_path):
    torch.manual_seed(0)
    module = DnpmModule(**TINY, r1_interval=2, pl_interval=2, total_kimg=4 * BATCH / 1000, log_every_kimg=0.001,
                        snapshot_every_kimg=1.0)
    before = {n: p.detach().clone() for n, p in module.generator_ema.named_parameters()}
    recorder = GradientRecorder()
    trainer = fit(module, batches(), tmp_path, [recorder], max_epochs=5)
    assert module.progress.nimg == 4 * BATCH and trainer.should_stop  # total_kimg reached after 4 batches
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable - recorder.names == set()
    assert all(n.startswith(("generator.", "discriminator.")) for n in trainable)
    metrics = trainer.logged_metrics
    for key in ("train/g_adv", "train/d_real", "train/d_fake", "train/r1", "train/path_length", "train/ada_p",
                "progress/kimg"):
        assert key in metrics and torch.isfinite(torch.as_tensor(metrics[key])), key
    assert int(module.d_steps) == 4 and int(module.path_length.steps) == 4
    assert module.map_scale_mm == pytest.approx(0.08)
    moved = [n for n, p in module.generator_ema.named_parameters() if not torch.equal(p, before[n])]
    assert moved, "the EMA generator never moved"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.*")).parent)).Reload()
    assert "images/maps" in events.Tags()["images"]  # colour-mapped maps + bump-shaded mean face


def test_lazy_regularisation_corrects_adam_and_a_nan_batch_skips_the_step(tmp_path):
    torch.manual_seed(0)
    module = DnpmModule(**{**TINY, "render_size": 0}, lr=0.0025, r1_interval=16, pl_interval=4)
    opt_g, opt_d = module.configure_optimizers()
    assert opt_g.param_groups[0]["lr"] == pytest.approx(0.0025 * 4 / 5)
    assert opt_d.param_groups[0]["lr"] == pytest.approx(0.0025 * 16 / 17)
    assert opt_d.param_groups[0]["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))
    data = batches(2)
    data[1].map[:] = float("nan")
    fit(module, data, tmp_path, max_steps=100, max_epochs=1)
    assert module.guard.skipped >= 1
    assert all(torch.isfinite(p).all() for p in module.discriminator.parameters())


def test_maps_of_batch_and_wrong_resolution():
    maps, scale = maps_of_batch(torch.zeros(2, 1, 8, 8))
    assert maps.shape == (2, 1, 8, 8) and scale == pytest.approx(0.914)
    with pytest.raises(ValueError, match="displacement maps"):
        maps_of_batch({"image": torch.zeros(2, 3, 8, 8)})
    module = DnpmModule(**{**TINY, "render_size": 0})
    module.optimizers = lambda: None
    with pytest.raises(ValueError, match="built for"):
        module.training_step(batches(1, res=32)[0], 0)


SMALL_GAN = ["--model.init_args.channel_base=512", "--model.init_args.channel_max=32", "--model.init_args.z_dim=32",
             "--model.init_args.w_dim=32", "--model.init_args.mapping_layers=2", "--model.init_args.render_size=32",
             "--data.init_args.num_train=4", "--data.init_args.num_val=2",
             "--data.init_args.expressions_per_identity=2",
             "--data.init_args.batch_size=4", "--data.init_args.stat_samples=8"]
SMALL_D3 = ["--model.init_args.hidden=[32,32,32,32,32]", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", "--data.init_args.num_train=4", "--data.init_args.num_val=2",
            "--data.init_args.expressions_per_identity=2", "--data.init_args.batch_size=4",
            "--data.init_args.stat_samples=8"]


def test_configs_train_in_process(tmp_path, capsys):
    """``configs/dnpm.yaml`` trains a few steps (every trainable parameter gets a gradient) and its checkpoint starts
    ``configs/dnpm_detailed3dmm.yaml`` (which refuses to start without one and warns about the random LPIPS)."""
    from facelab.cli.train import FacelabCLI

    logs = f"--trainer.logger.init_args.save_dir={tmp_path}"
    recorder = GradientRecorder()
    cli = FacelabCLI(args=["--config", str(REPO / "configs" / "dnpm.yaml"), *SMALL_GAN, logs, "--trainer.max_steps=12",
                           f"--trainer.default_root_dir={tmp_path}"], run=False)
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.model.progress.nimg > 0 and cli.model.map_scale_mm == pytest.approx(cli.datamodule.scale_mm)
    assert {n for n, p in cli.model.named_parameters() if p.requires_grad} - recorder.names == set()
    ckpt = tmp_path / "gan.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    d3 = ["--config", str(REPO / "configs" / "dnpm_detailed3dmm.yaml"), *SMALL_D3, logs]
    with pytest.raises(ValueError, match="init_ckpt"):
        FacelabCLI(args=d3, run=False)
    capsys.readouterr()
    cli = FacelabCLI(args=[*d3, f"--model.init_args.init_ckpt={ckpt}"], run=False)
    assert "`model.init_args.lpips_weights`" in capsys.readouterr().err
    cli.trainer.fit(cli.model, cli.datamodule)
    assert torch.isfinite(torch.as_tensor(cli.trainer.callback_metrics["val/psnr"]))


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_lightning_cli_chains_the_stages(tmp_path, devices, lightning_fit, single_run):
    """The quick-start chain through ``lightning-cli`` (one process, and DDP over two CPU processes with gloo):
    ``configs/dnpm.yaml`` for a few steps, then ``configs/dnpm_detailed3dmm.yaml`` from its checkpoint; rank 0
    alone writes the logs (one TensorBoard run per stage)."""
    ddp = [] if devices == 1 else ["--trainer.accelerator=cpu", "--trainer.devices=2",
                                   "--trainer.strategy=ddp_find_unused_parameters_true"]
    proc = lightning_fit("--config", REPO / "configs" / "dnpm.yaml", *SMALL_GAN, "--trainer.max_steps=12", *ddp,
                         cwd=tmp_path)
    ckpt = single_run(proc, tmp_path / "logs" / "dnpm")
    proc = lightning_fit("--config", REPO / "configs" / "dnpm_detailed3dmm.yaml", *SMALL_D3, *ddp,
                         f"--model.init_args.init_ckpt={ckpt}", cwd=tmp_path)
    single_run(proc, tmp_path / "logs" / "dnpm_detailed3dmm")
