"""Detailed3DMM (Eq. 2-7): the pSp-style split of the styles, the NeRF-style skip of w_exp, ``E + w_mean``,
``V_h = V_p + s d n`` on the subdivided proxy, the Table I mesh encoders; the LightningModule refuses to start
without a DNPM checkpoint, warns loudly with ``allow_random_init`` / without LPIPS weights, rejects a checkpoint of
another resolution, trains every encoder parameter (generator frozen) and its own checkpoint alone rebuilds the
model."""

from __future__ import annotations

import functools
from dataclasses import replace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dnpm.detailed3dmm import Detailed3DMM, StyleMLPEncoder, bilinear_model, style_split
from dnpm.module import DnpmModule
from dnpm.module_detailed3dmm import Detailed3DMMModule, load_detailed3dmm, load_generator
from facelab.data.detail_maps import DisplacementSample, SyntheticDisplacementDataset
from facelab.nn.stylegan2 import CheckpointMismatchError, Generator
from facelab.render import vertex_normals

RES = 16
GEN = dict(resolution=RES, z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=32)
HIDDEN = (32, 32, 32, 32, 32)


@functools.cache
def bilinear():
    return bilinear_model("synthetic")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/dnpm/conftest.py


@functools.cache
def batches() -> list:
    data = SyntheticDisplacementDataset(num_identities=4, expressions_per_identity=2, resolution=32)
    out = []
    for i in range(2):
        b = DisplacementSample.collate([data[4 * i + j] for j in range(4)]).normalized(0.08)
        out.append(replace(b, map=F.adaptive_avg_pool2d(b.map, RES), mask=F.adaptive_avg_pool2d(b.mask, RES)))
    return out


def gan_checkpoint(path, resolution: int = RES):
    torch.manual_seed(0)
    module = DnpmModule(**{**GEN, "resolution": resolution}, render_size=0)
    module.map_scale_mm.fill_(0.08)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def test_style_split_and_skip():
    assert style_split(18) == (9, 5, 4) and style_split(10) == (5, 3, 2) and sum(style_split(8)) == 8
    enc = StyleMLPEncoder(50 + 52, 52, HIDDEN, n_latent=10, w_dim=16)
    x, exp = torch.randn(3, 102), torch.randn(3, 52)
    assert enc(x, exp).shape == (3, 10, 16)
    with torch.no_grad():
        enc.layers[0].weight.zero_()  # the first layer no longer sees anything: only the skip carries w_exp
    assert not torch.allclose(enc(x, exp), enc(x, exp + 1.0))
    with pytest.raises(ValueError, match="skip"):
        enc(x)


def test_detailed_mesh_is_the_proxy_displaced_along_its_normals():
    torch.manual_seed(0)
    gen = Generator(**GEN)
    model = Detailed3DMM(gen, bilinear(), hidden=HIDDEN, scale=0.5, subdivisions=1)
    for head in model.encoder.heads:
        torch.nn.init.zeros_(head.weight)
    ident, exp = torch.randn(2, 50), torch.rand(2, 51) * 0.5
    out = model(ident, exp)
    torch.testing.assert_close(out.ws, gen.w_avg.expand(2, gen.n_latent, -1))  # E = 0: w_mean (Eq. 4)
    assert out.displacement.shape == (2, 1, RES, RES)
    assert out.verts.shape == out.dense_proxy_verts.shape and out.verts.shape[1] > bilinear().num_verts
    normals = vertex_normals(out.dense_proxy_verts, model.mapper.faces)
    d = model.mapper.vertex_displacement(out.displacement_mm)  # (B, V', 1)
    torch.testing.assert_close(out.verts - out.dense_proxy_verts, d * normals, atol=1e-5, rtol=1e-4)  # Eq. 2, 4
    torch.testing.assert_close(out.displacement_mm, 0.5 * out.displacement)
    torch.testing.assert_close(out.proxy_verts, model.proxy(ident, exp))  # Eq. 3
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, 50), float("nan")), exp[:1])
    with pytest.raises(ValueError, match="expression"):
        model(ident, torch.zeros(2, 40))


@pytest.mark.parametrize("encoder_input, points", [("mesh1700", 1700), ("mesh5000", 5000)])
def test_table1_mesh_encoders(encoder_input, points):
    gen = Generator(**GEN)
    model = Detailed3DMM(gen, bilinear(), encoder_input=encoder_input, hidden=HIDDEN)
    assert model.encoder.in_features == 3 * points and model.encoder.skip_features == 0
    ws = model.latents(torch.randn(2, 50), torch.rand(2, 52).index_fill(1, torch.tensor([0]), 1.0))
    ws.square().mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_module_needs_a_dnpm_checkpoint(tmp_path, capsys):
    with pytest.raises(ValueError, match="init_ckpt"):
        Detailed3DMMModule(resolution=RES, hidden=HIDDEN)
    capsys.readouterr()
    Detailed3DMMModule(resolution=RES, hidden=HIDDEN, allow_random_init=True, generator=GEN)
    err = capsys.readouterr().err
    assert "WARNING dnpm.module_detailed3dmm" in err and "`model.init_args.init_ckpt`" in err
    assert "`model.init_args.lpips_weights`" in err
    ckpt = gan_checkpoint(tmp_path / "gan32.ckpt", resolution=32)
    with pytest.raises(CheckpointMismatchError, match="32\\^2"):
        Detailed3DMMModule(init_ckpt=str(ckpt), resolution=RES, hidden=HIDDEN)
    with pytest.raises(FileNotFoundError):
        load_generator(str(tmp_path / "missing.ckpt"))


def test_module_trains_the_encoder_through_the_frozen_generator(tmp_path):
    ckpt = gan_checkpoint(tmp_path / "gan.ckpt")
    gen, config, scale = load_generator(str(ckpt), RES)
    assert config["resolution"] == RES and scale == pytest.approx(0.08)
    module = Detailed3DMMModule(init_ckpt=str(ckpt), resolution=RES, hidden=HIDDEN, log_images_every_n_steps=0)
    assert module.model.scale == pytest.approx(0.08)
    frozen = {n: p.clone() for n, p in module.model.generator.named_parameters()}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.encoder.") for n in trainable)
    grads: set[str] = set()

    class Recorder(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads.update(n for n, p in pl_module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0)

    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Recorder()], default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(batches(), batch_size=None), DataLoader(batches()[:1], batch_size=None))
    assert trainable - grads == set()
    assert all(torch.equal(p, frozen[n]) for n, p in module.model.generator.named_parameters())
    assert torch.isfinite(torch.as_tensor(trainer.callback_metrics["val/psnr"]))
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] < 5e-4  # cosine decay per epoch
    path = tmp_path / "d3.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_detailed3dmm(str(path))  # one file: encoder + frozen generator
    ident, exp = batches()[0].identity, batches()[0].expression
    with torch.no_grad():
        torch.testing.assert_close(loaded(ident, exp).displacement, module.model.eval()(ident, exp).displacement)
