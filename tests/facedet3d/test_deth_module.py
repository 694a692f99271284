"""Smoke test over the facedet3d configs this stage owns (DetH, RCAN, regressor): each resolves through
``lightning-cli``, takes a few steps with finite losses, and every trainable parameter gets a gradient; plus the
recipe pieces (random targets, masked L1) and the checkpoint loaders."""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from facedet3d.module_deth import DetHModule, au_bars, load_deth, masked_l1, random_target_aus
from facedet3d.module_rcan import RcanModule, load_rcan
from facedet3d.regressor import load_regressor
from facelab.cli.train import FacelabCLI

REPO = Path(__file__).resolve().parents[2]
#: tiny sizes over every config (the recipe is the config's, the sizes are not)
OVERRIDES = {
    "facedet3d_deth.yaml": ["--data.init_args.image_size=32", "--data.init_args.texture_size=32",
                            "--data.init_args.map_size=32", "--data.init_args.num_train=4",
                            "--data.init_args.num_val=2", "--data.init_args.batch_size=2",
                            "--data.init_args.precompute_features=false", "--model.init_args.r1_interval=1",
                            "--model.init_args.log_images_every_n_steps=1"],
    "facedet3d_rcan.yaml": ["--data.init_args.full_size=64", "--data.init_args.patch_size=32",
                            "--data.init_args.num_train=2", "--data.init_args.num_val=1",
                            "--data.init_args.batch_size=2", "--model.init_args.log_images_every_n_steps=1"],
    "facedet3d_regressor.yaml": ["--data.init_args.image_size=32", "--data.init_args.texture_size=32",
                                 "--data.init_args.map_size=32", "--model.init_args.texture_size=32",
                                 "--data.init_args.num_train=4", "--data.init_args.num_val=2",
                                 "--data.init_args.batch_size=2", "--model.init_args.log_images_every_n_steps=1"],
}


def _cli(config: str, tmp_path: Path, steps: int = 2) -> FacelabCLI:
    args = ["--config", str(REPO / "configs" / config), *OVERRIDES[config], f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=1", "--trainer.check_val_every_n_epoch=1", "--trainer.val_check_interval=1",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"]
    return FacelabCLI(args=args, run=False)


def _grads_of(module, params) -> list[str]:
    names = {id(p): n for n, p in module.named_parameters()}
    return [names[id(p)] for p in params if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]


def _check_gradients(module, batch) -> None:
    """Every trainable parameter of every network gets a non-zero gradient from its own objective."""
    if isinstance(module, DetHModule):
        y, use = module.choose_targets(batch)
        use = torch.ones_like(use)  # exercise the weak supervision on every sample
        feats = module.identity_features(batch.source)
        fake = module.hallucinate(batch.source, y, features=feats).detail
        d = module.discriminator_losses(batch.source.detail, batch.source.action_units, fake)
        (d["discriminator"] + d["au_real"] + d["r1"]).backward()
        missing = _grads_of(module, module.discriminator.parameters())
        module.zero_grad()
        g, _ = module.generator_losses(batch, y, use, feats)
        assert all(math.isfinite(float(v.detach())) for v in [*g.values(), *d.values()])
        sum(w * g[k] for k, w in asdict(module.weights).items() if k in g).backward()
        missing += _grads_of(module, module.deth.parameters())
    else:
        if isinstance(module, RcanModule):  # tiny synthetic patches can be flat: a dead channel-attention ReLU then
            g = torch.Generator().manual_seed(0)  # has no gradient, so give the check textured content
            batch = replace(batch, low=batch.low + 0.3 * torch.randn(batch.low.shape, generator=g))
        loss = module.training_step(batch, 0)
        assert math.isfinite(float(loss.detach()))
        loss.backward()
        missing = _grads_of(module, module.parameters())
    assert not missing, f"parameters without gradient: {missing[:10]}"


@pytest.mark.parametrize("config", sorted(OVERRIDES))
def test_config_smoke(config, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    cli = _cli(config, tmp_path)
    cli.datamodule.setup("fit")
    batch = next(iter(cli.datamodule.train_dataloader()))
    cli.model.log = lambda *a, **k: None  # no trainer attached for the gradient check
    _check_gradients(cli.model, batch)
    cli.model.zero_grad()
    del cli.model.log
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = {k: float(v) for k, v in cli.trainer.logged_metrics.items()}
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    assert any(k.startswith("val/") for k in metrics), metrics
    ckpt = tmp_path / "last.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    if config == "facedet3d_deth.yaml":
        deth, disc, expression_map = load_deth(ckpt, with_expression_map=True)
        torch.testing.assert_close(deth.map_stem.weight, cli.model.deth.map_stem.weight)
        assert disc.net.heads["au"].out_features == 17
        assert expression_map.count == cli.model.expression_map.count > 0  # fitted on the training faces, saved
        torch.testing.assert_close(expression_map.weights(), cli.model.expression_map.weights().cpu())
        assert "val/expression_mse" in metrics and "val/expression_mse_copy_input" in metrics
        assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    elif config == "facedet3d_rcan.yaml":
        torch.testing.assert_close(load_rcan(ckpt).head.weight, cli.model.rcan.head.weight)
    else:
        torch.testing.assert_close(load_regressor(ckpt).net.out.weight, cli.model.regressor.net.out.weight)


def test_random_target_aus_come_from_other_samples_with_jitter():
    aus = torch.eye(4, 17)
    g = torch.Generator().manual_seed(0)
    y = random_target_aus(aus, noise=0.1, generator=g)
    assert y.shape == aus.shape and 0 <= y.min() and y.max() <= 1
    nearest = torch.cdist(y, aus).argmin(1)
    assert (nearest != torch.arange(4)).all()  # never the sample's own AUs
    assert (y - aus[nearest]).abs().max() <= 0.1 + 1e-6


def test_masked_l1_and_au_bars():
    a, b = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert float(masked_l1(a, b, mask)) == pytest.approx(2.5)
    assert float(masked_l1(a, b, torch.zeros_like(mask))) == 0.0
    bars = au_bars(torch.tensor([[1.0] + [0.0] * 16]), 34)
    assert bars.shape == (1, 3, 34, 34) and bars[0, 0, :, :2].all() and not bars[0, 0, :, 2:].any()


def test_rcan_module_beats_nothing_untrained_is_finite():
    """The validation baselines are computed on the same patches (bilinear, bicubic)."""
    from facedet3d.data import DetailPatchBatch

    m = RcanModule(features=8, n_groups=1, n_blocks=1)
    high = torch.randn(2, 1, 16, 16)
    batch = DetailPatchBatch(low=torch.nn.functional.avg_pool2d(high, 4), high=high, mask=torch.ones_like(high))
    r = m.evaluate_patches(batch)
    assert set(r) == {"l1", "l1_bilinear", "l1_bicubic"} and all(math.isfinite(float(v)) for v in r.values())
