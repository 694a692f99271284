"""Detailed reconstruction from a degraded image (DNPM §IV-B, Eq. 11-15): E_deg's style counts at several
resolutions (pSp's 3 / 4 / 11 of 18, scaled), the pix2pixHD regressor's shapes, the degradations of Tables II / III,
the renders with visible detail, smoke fits of both configs' modules (finite losses, every trainable parameter gets a
gradient, generator and regressor frozen), checkpoints that rebuild themselves, and bad inputs."""

from __future__ import annotations

import functools
import logging

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from dnpm.detailed3dmm import bilinear_model
from dnpm.module_restore import (
    EncoderSettings,
    PhotoSettings,
    RegressorLossWeights,
    RegressorModule,
    RestoreLossWeights,
    RestoreModule,
    load_regressor,
    load_restorer,
    restore_scores,
)
from dnpm.restore_data import Degradation, FaceRenderer, downsample, gaussian_blur, upsample
from dnpm.restore_networks import GlobalGenerator, GradualStyleEncoder, restore, restore_style_split
from facelab.data.detail_maps import DisplacementSample, SyntheticDisplacementDataset
from facelab.nn.stylegan2 import CheckpointMismatchError, Generator, n_latent_for

RES = 32
GEN = dict(resolution=RES, z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=16)
ENC = EncoderSettings(input_size=32, depth=18, se=True)
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/dnpm/conftest.py (also gan_checkpoint, save_checkpoint)


@functools.cache
def batches() -> list:
    data = SyntheticDisplacementDataset(num_identities=4, expressions_per_identity=2, resolution=RES)
    return [DisplacementSample.collate([data[4 * i + j] for j in range(4)]).normalized(0.08) for i in range(2)]


def _fit(module, steps: int = 2) -> None:
    L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    ).fit(
        module,
        train_dataloaders=DataLoader(batches(), batch_size=None),
        val_dataloaders=DataLoader(batches()[:1], batch_size=None),
    )


# ----------------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("resolution", [32, 64, 256, 1024])
def test_style_split_scales_psp_levels(resolution):
    n = n_latent_for(resolution)
    split = restore_style_split(n)
    assert sum(split) == n and min(split) >= 1
    if resolution == 1024:
        assert split == (3, 4, 11)  # pSp: coarse 0-2, medium 3-6, fine 7-17


@pytest.mark.parametrize("resolution", [32, 64, 256])
def test_gradual_style_encoder_shapes(resolution):
    n = n_latent_for(resolution)
    enc = GradualStyleEncoder(n, 16, input_size=32, depth=18, se=resolution != 64)
    out = enc(torch.randn(2, 1, resolution, resolution))
    assert out.shape == (2, n, 16) and torch.isfinite(out).all()
    assert len(enc.styles) == n


def test_restore_adds_w_mean():
    gen = Generator(**GEN).eval()
    gen.mapping.w_avg.normal_()
    enc = GradualStyleEncoder(gen.n_latent, gen.w_dim, input_size=32, depth=18)
    low = torch.randn(2, 1, RES, RES)
    img, ws = restore(enc, gen, low)
    assert img.shape == (2, 1, RES, RES)
    torch.testing.assert_close(ws, enc(low) + gen.w_avg)


def test_encoder_bad_inputs():
    enc = GradualStyleEncoder(8, 16, input_size=32, depth=18)
    with pytest.raises(ValueError, match="NaN"):
        enc(torch.full((1, 1, 32, 32), float("nan")))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        enc(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of 16"):
        GradualStyleEncoder(8, 16, input_size=40)


def test_global_generator_shapes():
    g = GlobalGenerator(ngf=8, n_downsampling=3, n_blocks=2, input_size=64, output_size=32)
    assert g(torch.rand(2, 3, 100, 100)).shape == (2, 1, 32, 32)
    assert GlobalGenerator(ngf=8, n_downsampling=2, n_blocks=1)(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="divide"):
        GlobalGenerator(ngf=8, n_downsampling=3, n_blocks=1)(torch.rand(1, 3, 20, 20))
    with pytest.raises(ValueError, match="NaN"):
        g(torch.full((1, 3, 64, 64), float("nan")))


# ------------------------------------------------------------------------------------------------- degradations
def test_degradations():
    x = torch.randn(2, 1, 32, 32)
    low = downsample(x, factor=4)
    assert low.shape == (2, 1, 8, 8)
    torch.testing.assert_close(low[0, 0, 0, 0], x[0, 0, :4, :4].mean())  # area average
    assert downsample(x, size=16).shape == (2, 1, 16, 16)
    torch.testing.assert_close(upsample(torch.ones(1, 1, 4, 4), 32), torch.ones(1, 1, 32, 32))  # bicubic keeps flat
    assert gaussian_blur(x, 0.0) is x
    blurred = gaussian_blur(x, 1.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    deg = Degradation(factor=8)
    out = deg(x)
    assert out.shape == x.shape and deg.describe() == "x1/8"
    torch.testing.assert_close(deg(x), out)  # deterministic
    torch.testing.assert_close(
        Degradation(size=8, blur_sigma=1.0, upsample="none")(x), gaussian_blur(downsample(x, size=8), 1.0)
    )
    with pytest.raises(ValueError, match="divide"):
        downsample(x, factor=5)
    with pytest.raises(ValueError, match="NaN"):
        deg(torch.full((1, 1, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="not both"):
        Degradation(factor=4, size=8)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        deg(torch.randn(32, 32))


def test_renders_show_the_detail():
    b = batches()[0]
    r = FaceRenderer(bilinear_model("synthetic"), 64, bump_gain=8.0)
    img = r(b.identity, b.expression, b.map_mm())
    flat = r(b.identity, b.expression, torch.zeros_like(b.map))
    assert img.shape == (4, 3, 64, 64) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert float((img - flat).abs().amax()) > 0.02  # the wrinkles change the shading


# ------------------------------------------------------------------------------------------------------ modules
def test_restore_module_refuses_without_generator(caplog):
    with pytest.raises(ValueError, match="init_ckpt"):
        RestoreModule(resolution=RES)
    with caplog.at_level(logging.WARNING):
        RestoreModule(allow_random_init=True, resolution=RES, generator=GEN, encoder=ENC, arcface_depth=18)
    text = caplog.text
    assert "model.init_args.init_ckpt" in text and "model.init_args.arcface_weights" in text
    assert "model.init_args.lpips_weights" in text


def test_restore_module_rejects_other_resolution(tmp_path, gan_checkpoint):
    ckpt = gan_checkpoint(tmp_path / "gan16.ckpt", resolution=16)
    with pytest.raises(CheckpointMismatchError):
        RestoreModule(init_ckpt=str(ckpt), resolution=RES)


def _trainable_grads(module) -> None:
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing[:5]


def test_restore_maps_smoke_fit_and_checkpoint(tmp_path, gan_checkpoint, save_checkpoint):
    ckpt = gan_checkpoint(tmp_path / "gan.ckpt")
    module = RestoreModule(
        init_ckpt=str(ckpt),
        resolution=RES,
        degradation=Degradation(factor=4),
        encoder=ENC,
        arcface_depth=18,
        log_images_every_n_steps=0,
    )
    assert all(not p.requires_grad for p in module.generator.parameters())
    gen_before = {k: v.clone() for k, v in module.generator.state_dict().items()}
    high, low = module.high_and_low(batches()[0])
    losses, gen = module.losses(high, low)
    assert set(losses) == {"pixel", "lpips", "identity"} and all(torch.isfinite(v) for v in losses.values())
    sum(getattr(module.weights, k) * v for k, v in losses.items()).backward()
    _trainable_grads(module)
    module.zero_grad()
    _fit(module)
    for k, v in module.generator.state_dict().items():
        torch.testing.assert_close(v, gen_before[k])
    path = save_checkpoint(module, tmp_path / "restore.ckpt")
    again = load_restorer(path)
    low = module.high_and_low(batches()[1])[1]
    torch.testing.assert_close(again(low), module.eval()(low))
    saved = torch.load(path, weights_only=True)  # as lightning-cli saves it: its bookkeeping keys in hparams
    saved["hyper_parameters"].update(_class_path="dnpm.module_restore.RestoreModule", _instantiator="x.y")
    torch.save(saved, tmp_path / "cli.ckpt")
    torch.testing.assert_close(load_restorer(str(tmp_path / "cli.ckpt"))(low), again(low))
    scores = restore_scores(again, batches())
    assert all(map(torch.isfinite, map(torch.tensor, (scores.psnr, scores.ssim, scores.input_psnr))))
    assert "E_deg" in scores.format("x1/4")


@pytest.mark.parametrize("drop", ["pixel", "lpips", "identity"])
def test_restore_ablations_drop_terms(drop):
    weights = RestoreLossWeights(**{"pixel": 10.0, "lpips": 0.2, "identity": 0.1, drop: 0.0})
    module = RestoreModule(
        allow_random_init=True, resolution=RES, generator=GEN, encoder=ENC, arcface_depth=18, loss_weights=weights
    )
    high, low = module.high_and_low(batches()[0])
    losses, _ = module.losses(high, low)
    assert drop not in losses and len(losses) == 2


def test_restore_bad_batches():
    module = RestoreModule(
        allow_random_init=True,
        resolution=RES,
        generator=GEN,
        encoder=ENC,
        loss_weights=RestoreLossWeights(pixel=1.0, lpips=0.0, identity=0.0),
    )
    b = batches()[0]
    with pytest.raises(ValueError, match="NaN"):
        module.high_and_low({"map": torch.full_like(b.map, float("nan"))})
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        module.high_and_low({"map": torch.zeros(2, 1, 16, 16)})
    with pytest.raises(ValueError, match="regressor"):
        RestoreModule(allow_random_init=True, resolution=RES, generator=GEN, encoder=ENC, input="photos")


def test_regressor_and_photo_restore_smoke_fit(tmp_path, gan_checkpoint, save_checkpoint, tiny_regressor_args):
    reg = RegressorModule(
        **tiny_regressor_args, loss_weights=RegressorLossWeights(pixel=1.0, perceptual=0.1), degrade_prob=0.5
    )
    b = batches()[0]
    images, target = reg._batch(b)
    assert images.shape == (4, 3, 64, 64) and target.shape == (4, 1, RES, RES)
    losses, _ = reg.losses(images, target)
    assert set(losses) == {"pixel", "perceptual", "adversarial", "feature_matching"}  # pix2pixHD's terms
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    _trainable_grads(reg.net)
    reg.zero_grad()
    d_before = [p.detach().clone() for p in reg.discriminator.parameters()]
    _fit(reg)
    assert all(not torch.equal(a, p) for a, p in zip(d_before, reg.discriminator.parameters()))  # D trained
    assert all(p.requires_grad for p in [*reg.net.parameters(), *reg.discriminator.parameters()])  # untoggled
    reg_path = save_checkpoint(reg, tmp_path / "regressor.ckpt")
    net, hp, unit = load_regressor(reg_path)
    assert unit == pytest.approx(0.08) and hp["image_size"] == 64

    gan = gan_checkpoint(tmp_path / "gan.ckpt")
    module = RestoreModule(
        init_ckpt=str(gan),
        resolution=RES,
        input="photos",
        encoder=ENC,
        arcface_depth=18,
        photos=PhotoSettings(regressor_ckpt=reg_path),
        log_images_every_n_steps=0,
    )
    assert all(not p.requires_grad for p in module.regressor.parameters())
    high, low = module.high_and_low(b)
    torch.testing.assert_close(
        low,
        net(module.photo_degradation(module.renderer(b.identity, b.expression, b.map_mm())))
        * (unit / module.map_scale_mm),
    )
    _fit(module)
    again = load_restorer(save_checkpoint(module, tmp_path / "restore_photos.ckpt"))
    torch.testing.assert_close(again.high_and_low(b)[1], module.high_and_low(b)[1])
    torch.testing.assert_close(again(low), module.eval()(low))


def test_regressor_without_gan_terms_has_no_discriminator(tiny_regressor_args):
    """``adversarial: 0`` and ``feature_matching: 0``: a plain L1 (+ LPIPS) regressor, one optimizer, no D."""
    weights = RegressorLossWeights(pixel=1.0, perceptual=0.0, adversarial=0.0, feature_matching=0.0)
    reg = RegressorModule(**tiny_regressor_args, loss_weights=weights)
    assert reg.discriminator is None and isinstance(reg.configure_optimizers(), torch.optim.Adam)
    images, target = reg._batch(batches()[0])
    assert set(reg.losses(images, target)[0]) == {"pixel"}
    before = [p.detach().clone() for p in reg.net.parameters()]
    _fit(reg)
    assert any(not torch.equal(a, p) for a, p in zip(before, reg.net.parameters()))
    with pytest.raises(ValueError, match="d_layers"):  # a PatchGAN too deep for 32^2 maps
        RegressorModule(**{**tiny_regressor_args, "d_layers": 3})
