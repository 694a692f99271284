"""RenderModule: every trainable parameter of R, f_theta and D gets a gradient from its losses; the render config
runs a few steps through ``lightning-cli`` (tiny networks) with finite losses, TensorBoard scalars and grids; a
non-BFM batch and the ordinary-rendering switch are clear errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from facedet3d.module_render import RenderModule, fake_details
from facedet3d.render_losses import RenderLossWeights, ShadingPredictor
from facedet3d.renderer import RenderingNetwork
from facelab.data.synthetic import SyntheticFaceDataset, SyntheticFaceSample
from facelab.nn import UNetDiscriminator
from facelab.training import weighted_total

SIZE = 32
REPO = Path(__file__).resolve().parents[2]
# tiny networks for CPU tests (the config's are the paper-sized ones)
TINY_CLI = ["--model.init_args.network.init_args.ntex_channels=[4,8]",
            "--model.init_args.network.init_args.tex2im_channels=[4,8]",
            "--model.init_args.network.init_args.features=4",
            "--model.init_args.discriminator.init_args.channels=[4,8,8]",
            f"--model.init_args.image_size={SIZE}", f"--model.init_args.texture_size={SIZE}",
            "--model.init_args.laplacian_levels=3", "--model.init_args.log_images_every_n_steps=1",
            f"--data.init_args.image_size={SIZE}", f"--data.init_args.texture_size={SIZE}",
            "--data.init_args.map_size=64", "--data.init_args.batch_size=2",
            "--data.init_args.num_train=4", "--data.init_args.num_val=2", "--data.init_args.num_workers=0",
            "--trainer.accelerator=cpu", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=1",
            "--trainer.log_every_n_steps=1", "--trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def batches() -> list:
    data = SyntheticFaceDataset(family="bfm", num_samples=4, image_size=SIZE, uv_size=SIZE, displacement_size=64,
                                return_vertices=True, return_albedo=True, seed=5)
    return [SyntheticFaceSample.collate(data.generate([i, i + 1])) for i in (0, 2)]


def make_module(**kwargs) -> RenderModule:
    torch.manual_seed(0)
    kwargs.setdefault("network", RenderingNetwork(features=4, ntex_channels=(4, 8), tex2im_channels=(4, 8)))
    return RenderModule(discriminator=UNetDiscriminator(3, (4, 8, 8), heads={"au": 17}),
                        shading_predictor=ShadingPredictor(hidden=4), image_size=SIZE, texture_size=SIZE,
                        laplacian_levels=3, r1_interval=1, **kwargs)


def config_module() -> RenderModule:
    """RenderModule built by jsonargparse from configs/facedet3d_render.yaml (tiny widths and sizes)."""
    cfg = yaml.safe_load((REPO / "configs" / "facedet3d_render.yaml").read_text())["model"]
    args = cfg["init_args"]
    args["network"]["init_args"].update(features=4, ntex_channels=[4, 8], tex2im_channels=[4, 8])
    args["discriminator"]["init_args"]["channels"] = [4, 8, 8]
    args.update(image_size=SIZE, texture_size=SIZE, laplacian_levels=3, r1_interval=1)
    parser = ArgumentParser()
    parser.add_subclass_arguments(RenderModule, "model")
    torch.manual_seed(0)
    return parser.instantiate_classes(parser.parse_object({"model": cfg})).model


def test_every_trainable_parameter_gets_a_gradient(batches):
    """The smoke test over the render config: finite losses, a gradient for every trainable parameter."""
    module = config_module()
    assert module.network.branches == "double" and module.weights.augw > 0 and module.weights.dsl > 0
    rb = module.prepare(batches[0])
    real, swapped = module.render_pair(rb, fake_details(rb.detail))
    losses, image_fake = module.render_losses(rb, real, swapped)
    assert set(losses) == {"photometric", "augw", "dsl", "adversarial", "au"}
    assert all(torch.isfinite(v) for v in losses.values())
    weighted_total(losses, module.weights).backward()
    gen = [*module.network.named_parameters(), *module.shading_predictor.named_parameters()]
    missing = [n for n, p in gen if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    module.zero_grad(set_to_none=True)
    d_losses = module.discriminator_losses(rb, module.composite(real, rb.image))
    assert set(d_losses) == {"d_adversarial", "d_au", "r1"} and all(torch.isfinite(v) for v in d_losses.values())
    weighted_total(d_losses, module.weights).backward()
    missing = [n for n, p in module.discriminator.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_weights_off_and_bad_inputs(batches):
    module = make_module(loss_weights=RenderLossWeights(adversarial=0.0, au=0.0))
    with pytest.raises(ValueError, match="nothing to train"):
        make_module(network=RenderingNetwork(branches="ordinary"))
    without = SimpleNamespace(verts=None, albedo_uv=None, displacement_uv=torch.zeros(1))  # e.g. return_vertices off
    with pytest.raises(ValueError, match="return_vertices"):
        module.prepare(without)


@pytest.mark.slow
def test_render_config_runs_through_lightning_cli(tmp_path):
    cli = Path(sys.executable).parent / "lightning-cli"
    cmd = [str(cli), "fit", "--config", str(REPO / "configs" / "facedet3d_render.yaml"), *TINY_CLI,
           "--trainer.max_steps=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "max_steps=2` reached" in proc.stdout + proc.stderr
    run = tmp_path / "logs" / "facedet3d_render"
    assert list(run.rglob("config.yaml")) and "loss_weights:" in next(run.rglob("hparams.yaml")).read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(run.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for name in ("photometric", "augw", "dsl", "adversarial", "au", "d_adversarial", "d_au", "r1"):
        values = [e.value for e in events.Scalars(f"train/loss_{name}")]
        assert values and all(math.isfinite(v) for v in values), name
    assert {"val/photometric", "val/detail_gain", "train/skipped_steps"} <= scalars
    assert "train/render" in events.Tags()["images"]  # input, target AU, detail, shading, render, AugW rows
