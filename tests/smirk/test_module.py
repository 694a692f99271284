"""SmirkModule: both phases train a few steps through a real ``lightning.Trainer`` on tiny synthetic batches; the
core phase alternates generator / expression-encoder steps, keeps the pose and shape encoders bit-identical and
loads a pretraining checkpoint; a non-finite loss skips the step; a missing pretrained network switches its loss
off with a console WARNING and the resolved weights are logged as hyper-parameters; the configs run through
``lightning-cli``."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from facelab.data.synthetic import SyntheticFaceDataset, SyntheticFaceSample
from facelab.errors import MissingAssetError
from facelab.training import StepOutcome, norm_statistics, restore_norm_statistics, weighted_total
from smirk.cycle import build_templates
from smirk.data import SmirkBatch, as_smirk_batch
from smirk.losses import EmotionFeatureLoss, VGGPerceptualLoss
from smirk.module import SmirkLossWeights, SmirkModule
from smirk.networks import SmirkGenerator

SIZE, BATCH = 64, 4
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def batches() -> list:
    """Three synthetic FLAME batches (64², B = 4) with ground truth."""
    data = SyntheticFaceDataset(num_samples=3 * BATCH, image_size=SIZE, uv_size=64, seed=1)
    return [SyntheticFaceSample.collate(data.generate(list(range(i * BATCH, (i + 1) * BATCH)))) for i in range(3)]


def make_module(phase: str, **kwargs) -> SmirkModule:
    torch.manual_seed(0)
    if phase == "core":
        kwargs.setdefault("generator", SmirkGenerator(channels=(8, 16, 32, 64), bottleneck_channels=64,
                                                      n_res_blocks=1))
        kwargs.setdefault("perceptual_loss", VGGPerceptualLoss(allow_random=True))
        kwargs.setdefault("emotion_loss", EmotionFeatureLoss(allow_random=True))
    return SmirkModule(phase=phase, image_size=SIZE, **kwargs)


def fit(module: SmirkModule, batches: list, tmp_path: Path, callbacks=(), val: bool = True, **trainer_kwargs):
    trainer_kwargs.setdefault("max_steps", 2)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=TensorBoardLogger(tmp_path, name="tb"),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=1, log_every_n_steps=1, callbacks=list(callbacks),
                        **trainer_kwargs)
    trainer.fit(module, DataLoader(batches, batch_size=None),
                DataLoader(batches[:1], batch_size=None) if val else None)
    return trainer


class GradientRecorder(Callback):
    """For every optimizer step: the names of the parameters that carry a finite gradient."""

    def __init__(self) -> None:
        self.steps: list[set[str]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps.append({name for name, p in pl_module.named_parameters()
                           if p.grad is not None and torch.isfinite(p.grad).all()})


def names(module: torch.nn.Module, prefix: str) -> set[str]:
    return {f"{prefix}.{n}" for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("phase", ["pretrain", "core"])
def test_phase_trains_with_finite_losses_and_logs(phase, batches, tmp_path):
    templates = tmp_path / "templates.npz"  # the core phase's cycle path then uses all four augmentation groups
    build_templates({"smile": torch.randn(3, 50), "jaw": torch.randn(2, 50)}).save(templates)
    module = make_module(phase, log_images_every_n_steps=1, templates_path=str(templates))
    assert phase == "pretrain" or module.cycle_groups == ("random", "permutation", "template", "zero")
    steps = 3 if phase == "pretrain" else 6  # one epoch: 3 batches (the core phase steps twice per batch)
    trainer = fit(module, batches, tmp_path, max_steps=steps)
    metrics = trainer.callback_metrics
    assert trainer.global_step == steps
    losses = {k: float(v) for k, v in metrics.items() if k.startswith("train/loss_")}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    expected = {"landmark_mp", "landmark_fan", "expression_reg", "total"}
    if phase == "core":
        expected |= {"reconstruction", "perceptual", "emotion", "cycle", "structural_identity", "jaw_reg"}
        assert float(metrics["train/lr_generator"]) > 0
    assert expected <= {k.removeprefix("train/loss_") for k in losses}
    for name in ("val/nme_mp", "val/nme_fan", "val/expression_mse", "val/expression_vertex_error_mm"):
        assert math.isfinite(float(metrics[name])), name
    assert float(metrics["train/skipped_steps"]) == 0
    events = list((tmp_path / "tb").rglob("events.out.tfevents*"))
    assert events and max(e.stat().st_size for e in events) > 10_000  # scalars and the image grids
    # the weights that really ran are TensorBoard hyper-parameters (flattened: resolved_loss_weights/<term>)
    logged = b"".join(e.read_bytes() for e in events)
    assert b"resolved_loss_weights/perceptual" in logged and b"resolved_loss_weights/landmark_mp" in logged


def test_core_alternates_networks_and_keeps_pose_shape_frozen(batches, tmp_path):
    module = make_module("core", train_pose_shape=False)
    frozen = {k: v.clone() for k, v in module.encoder.state_dict().items()
              if k.startswith(("pose_encoder.", "shape_encoder."))}
    recorder = GradientRecorder()
    fit(module, batches, tmp_path, callbacks=[recorder], val=False, max_steps=4)  # 2 batches x (recon, cycle)
    generator = names(module.generator, "generator")
    expression = names(module.encoder.expression_encoder, "encoder.expression_encoder")
    assert len(recorder.steps) == 4
    for step, with_grad in enumerate(recorder.steps):
        trained, other = (generator, expression) if step < 2 else (expression, generator)  # batch 0 even, 1 odd
        assert trained <= with_grad, sorted(trained - with_grad)[:5]
        assert not (other & with_grad), sorted(other & with_grad)[:5]
    assert not any(p.requires_grad for p in module.encoder.pose_encoder.parameters())
    assert not any(p.requires_grad for p in module.encoder.shape_encoder.parameters())
    state = module.encoder.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())  # weights and BatchNorm statistics


def test_pretrain_checkpoint_initializes_core_phase(batches, tmp_path):
    pretrain = make_module("pretrain", log_images_every_n_steps=0)
    trainer = fit(pretrain, batches, tmp_path, val=False, max_steps=1)
    ckpt = tmp_path / "pretrain.ckpt"
    trainer.save_checkpoint(ckpt)
    core = make_module("core", pretrain_ckpt=str(ckpt))
    expected = pretrain.encoder.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in core.encoder.state_dict().items())
    with pytest.raises(MissingAssetError, match="pretrain_ckpt"):
        make_module("core", pretrain_ckpt=str(tmp_path / "missing.ckpt"))


def test_non_finite_loss_skips_the_step(batches, tmp_path, capsys):
    bad = [replace(b, landmarks_mp_ndc=torch.full_like(b.landmarks_mp_ndc, float("nan"))) for b in batches[:2]]
    module = make_module("pretrain", log_images_every_n_steps=0)
    before = {k: v.clone() for k, v in module.encoder.named_parameters()}
    opt_state = []
    module.on_train_end = lambda: opt_state.append(module.optimizers().optimizer.state)
    trainer = fit(module, bad, tmp_path, val=False, max_epochs=1, max_steps=-1)
    err = capsys.readouterr().err
    assert "WARNING smirk.module: SMIRK: non-finite landmark_mp at step 2, optimizer step skipped (2 skipped" in err
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 2 and trainer.global_step == 0
    assert all(torch.equal(v, before[k]) for k, v in module.encoder.named_parameters())
    assert opt_state == [{}]  # Adam never stepped: no moments, no step count


def test_skipped_step_restores_non_finite_norm_statistics():
    module = make_module("pretrain")
    saved = norm_statistics(module, clone=True)
    assert any(n.startswith("encoder.shape_encoder.") for n in saved)
    name = next(n for n in saved if n.endswith("running_mean"))
    norm_statistics(module)[name].fill_(float("nan"))  # what a forward pass on a NaN image leaves behind
    assert restore_norm_statistics(module, saved)
    assert all(torch.equal(buf, saved[n]) for n, buf in norm_statistics(module).items())


def test_missing_feature_weights_switch_their_terms_off_loudly(capsys):
    capsys.readouterr()
    module = SmirkModule(phase="core", image_size=SIZE, generator=SmirkGenerator(
        channels=(8, 16, 32, 64), bottleneck_channels=64, n_res_blocks=1))
    err = capsys.readouterr().err
    for key, what in (("vgg_weights", "VGG16"), ("emotion_weights", "emotion-recognition ResNet-50"),
                      ("pretrain_ckpt", "SMIRK pretraining checkpoint")):
        line = next((ln for ln in err.splitlines() if f"`model.init_args.{key}`" in ln), "")
        assert line.startswith("[facelab] WARNING smirk.module: no pretrained weights for") and what in line, err
    assert "the perceptual loss (weight 10) is switched off" in err
    assert "the emotion loss (weight 1) is switched off" in err
    assert "WARNING smirk.module: SMIRK cycle path: model.init_args.templates_path is not set" in err
    assert module.perceptual_loss is None and module.weights.perceptual == 0
    assert module.emotion_loss is None and module.weights.emotion == 0
    assert module.weights.reconstruction == 10 and module.cycle_groups == ("random", "permutation", "zero")
    # hyper-parameters: what was asked for and what runs
    assert module.hparams["loss_weights"]["perceptual"] == 10.0
    resolved = module.hparams_initial["resolved_loss_weights"]
    assert resolved["perceptual"] == 0.0 and resolved["emotion"] == 0.0 and resolved["reconstruction"] == 10.0
    assert SmirkLossWeights.for_phase("pretrain").shape_teacher == 10
    with pytest.raises(ValueError, match="not both"):
        SmirkModule(phase="core", image_size=SIZE, vgg_weights="vgg16.pth",
                    perceptual_loss=VGGPerceptualLoss(allow_random=True))


def test_missing_mica_switches_the_shape_teacher_off_loudly(capsys):
    capsys.readouterr()
    module = make_module("pretrain", mica_path=None)
    err = capsys.readouterr().err
    assert "WARNING smirk.module: no pretrained weights for MICA (SMIRK shape teacher): set " \
           "`model.init_args.mica_path`" in err
    assert "the shape_teacher loss (weight 10) is switched off" in err
    assert module.weights.shape_teacher == 0 and module.hparams_initial["resolved_loss_weights"]["shape_teacher"] == 0
    capsys.readouterr()
    make_module("pretrain", mica_path="synthetic")  # the stand-in teacher: nothing is missing, nothing is said
    assert "mica_path" not in capsys.readouterr().err


def test_synthetic_batch_adapter(batches):
    batch = as_smirk_batch(batches[0])
    assert isinstance(batch, SmirkBatch) and batch.image.shape == (BATCH, 3, SIZE, SIZE)
    assert batch.landmarks_mp.shape == (BATCH, 105, 2) and batch.landmarks_fan.shape == (BATCH, 68, 2)
    assert batch.fan_valid.all() and batch.ground_truth.expression.shape[0] == BATCH
    assert as_smirk_batch(batch) is batch
    with pytest.raises(ValueError, match="105"):
        SmirkBatch(image=batch.image, landmarks_mp=batch.landmarks_mp[:, :68])


def test_lightning_cli_runs_the_configs(tmp_path):
    """Both configs train through ``lightning-cli``; the core config has no VGG / emotion weights offline, and the
    console says so (WARNING, naming the config keys) and the logged hyper-parameters show the terms at 0."""
    cli = Path(sys.executable).parent / "lightning-cli"
    for config, steps in (("smirk_pretrain.yaml", 2), ("smirk.yaml", 2)):
        cmd = [str(cli), "fit", "--config", str(REPO / "configs" / config), "--config",
               str(REPO / "configs" / "smirk_quickstart.yaml"), f"--trainer.max_steps={steps}",
               "--trainer.limit_val_batches=1", "--data.init_args.num_train=8"]
        env = {k: v for k, v in os.environ.items() if k != "FACELAB_LOG_LEVEL"}  # the default console threshold
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        console = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{config}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        assert f"max_steps={steps}` reached" in console
        if config == "smirk.yaml":
            warnings = [ln for ln in console.splitlines() if "WARNING smirk.module: no pretrained weights" in ln]
            for key in ("vgg_weights", "emotion_weights", "pretrain_ckpt"):
                assert any(f"`model.init_args.{key}`" in ln for ln in warnings), console[-4000:]
            assert "the perceptual loss (weight 10) is switched off" in console
    assert len(list((tmp_path / "logs").rglob("config.yaml"))) == 2
    core_hparams = next((tmp_path / "logs" / "smirk").rglob("hparams.yaml")).read_text()
    assert "resolved_loss_weights:" in core_hparams and "perceptual: 0.0" in core_hparams


@pytest.mark.slow
def test_core_phase_trains_under_ddp_on_two_cpu_processes(tmp_path):
    """Two gloo processes: the collective NaN-guard decision and the alternating networks do not deadlock."""
    cli = Path(sys.executable).parent / "lightning-cli"
    cmd = [str(cli), "fit", "--config", str(REPO / "configs" / "smirk.yaml"), "--config",
           str(REPO / "configs" / "smirk_quickstart.yaml"), "--trainer.max_steps=4", "--trainer.devices=2",
           "--trainer.strategy=ddp_find_unused_parameters_true", "--trainer.limit_val_batches=1",
           "--data.init_args.num_train=16"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "max_steps=4` reached" in proc.stdout + proc.stderr


def test_synthetic_shape_teacher_pulls_the_shape_towards_the_truth(batches):
    """``mica_path: synthetic``: the true shape is the teacher's target (MSE, weight shape_teacher) on synthetic
    batches; a batch without ground truth is a clear error."""
    module = make_module("pretrain", mica_path="synthetic")
    assert module.weights.shape_teacher == 10.0 and module.synthetic_shape_teacher
    batch = as_smirk_batch(batches[0])
    enc = module.encoder(batch.image)
    module.optimizers = lambda: torch.optim.SGD(module.parameters(), lr=0.0)  # no trainer: a no-op optimizer
    module._optimize = lambda opt, terms, clip=0.0: StepOutcome("no_graph", weighted_total(terms, module.weights))
    out, _ = module._pretrain_step(batch)
    expected = (enc.shape - batch.ground_truth.shape[:, :enc.shape.shape[1]]).pow(2).mean()
    torch.testing.assert_close(out["shape_teacher"], expected, rtol=1e-5, atol=1e-6)
    out["shape_teacher"].backward()
    assert module.encoder.shape_encoder.head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mica_path 'synthetic'"):
        module._pretrain_step(replace(batch, ground_truth=None))


def test_aligned_landmarks_split_rigid_and_non_rigid_learning(batches):
    """``landmark_aligned`` on: the projected landmark terms reach pose, camera and shape but not the expression
    head; the aligned term reaches the expression head but not the pose encoder (issue 9). Off (the paper's
    recipe): no such term, and the projected terms reach the expression head."""
    batch = as_smirk_batch(batches[0])
    for aligned in (100.0, 0.0):
        module = make_module("pretrain", loss_weights=replace(SmirkLossWeights.for_phase("pretrain"),
                                                              landmark_aligned=aligned))
        enc = module.encoder(batch.image)
        losses = module._landmark_losses(enc, module.flame(enc.flame_params()), batch)
        assert ("landmark_aligned" in losses) == bool(aligned)
        heads = [module.encoder.expression_encoder.head.weight, module.encoder.pose_encoder.head.weight]
        exp_grad, pose_grad = torch.autograd.grad(losses["landmark_mp"], heads, retain_graph=True, allow_unused=True)
        assert pose_grad is not None and float(pose_grad.abs().sum()) > 0
        assert (exp_grad is None) == bool(aligned)
        if aligned:
            exp_grad, pose_grad = torch.autograd.grad(losses["landmark_aligned"], heads, allow_unused=True)
            assert pose_grad is None and float(exp_grad.abs().sum()) > 0


def test_weights_a_phase_never_reads_are_errors():
    with pytest.raises(ValueError, match=r"pretrain phase computes no reconstruction=10, perceptual=10"):
        SmirkLossWeights().check_phase("pretrain")
    with pytest.raises(ValueError, match=r"core phase computes no shape_teacher=10"):
        SmirkLossWeights.for_phase("pretrain").check_phase("core")
    SmirkLossWeights.for_phase("pretrain").check_phase("pretrain")
    SmirkLossWeights.for_phase("core").check_phase("core")
    with pytest.raises(ValueError, match="loss_weights: the pretrain phase computes no cycle=1"):
        make_module("pretrain", loss_weights=replace(SmirkLossWeights.for_phase("pretrain"), cycle=1.0))


def test_a_fan_term_without_fan_landmarks_warns_once(batches):
    """Real caches without FAN landmarks (``fan_valid`` all False) skip the contour term with a warning, once."""
    batch = as_smirk_batch(batches[0])
    batch = replace(batch, fan_valid=torch.zeros(batch.batch_size, dtype=torch.bool))
    module = make_module("pretrain")
    enc = module.encoder(batch.image)
    with pytest.warns(UserWarning, match="landmark_fan is 100 but the batches carry no FAN contour landmarks"):
        losses = module._landmark_losses(enc, module.flame(enc.flame_params()), batch)
    assert "landmark_fan" not in losses
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module._landmark_losses(enc, module.flame(enc.flame_params()), batch)  # said once
    assert "landmark_fan" in module._landmark_losses(enc, module.flame(enc.flame_params()), as_smirk_batch(batches[0]))


def test_core_without_pretraining_trains_pose_and_shape_and_says_so(batches, tmp_path, capsys):
    """The headline ``lightning-cli fit --config configs/smirk.yaml`` on a fresh machine (no pretraining checkpoint)
    must not freeze random encoders: it trains them too, with a console WARNING naming the key (issue 9)."""
    module = make_module("core")
    err = capsys.readouterr().err
    assert "model.init_args.pretrain_ckpt" in err and "pose/shape encoders are trained in the core phase too" in err
    assert module.train_pose_shape
    before = {k: v.clone() for k, v in module.encoder.pose_encoder.state_dict().items() if v.is_floating_point()}
    fit(module, batches, tmp_path, val=False, max_steps=4)
    after = module.encoder.pose_encoder.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items())
    frozen = make_module("core", train_pose_shape=False)
    assert "FROZEN AT THEIR RANDOM INITIALIZATION" in capsys.readouterr().err
    assert not any(p.requires_grad for p in frozen.encoder.pose_encoder.parameters())


@pytest.mark.parametrize("updates", [False, True])
def test_cycle_path_leaves_the_encoders_running_statistics_to_real_images(batches, updates):
    """The cycle path's expression-encoder pass over the translator's images trains through BatchNorm (batch
    statistics) but, by default, leaves the running statistics that the encoder normalises real images with at
    test time (issue 9: an early translator's output moved them and ruined held-out expressions);
    ``cycle_updates_norm_stats=True`` is the public code's behaviour."""
    module = make_module("core", templates_path="synthetic", cycle_updates_norm_stats=updates).train()
    batch = module._prepare(batches[0])
    for train_generator in (False, True):
        _, recon = module._reconstruction_path(batch, train_generator)
        before = norm_statistics(module.encoder, clone=True)
        loss, _ = module._cycle_path(batch, recon, train_generator)
        loss.backward()
        moved = {n for n, buf in norm_statistics(module.encoder).items() if not torch.equal(buf, before[n])}
        assert bool(moved) == updates
        assert not updates or any(n.startswith("expression_encoder.") for n in moved)
    assert module.encoder.expression_encoder.head.weight.grad is not None
