"""GeometryModule smoke: both phases train through Lightning, every parameter gets a gradient, ablation switches."""

import lightning.pytorch as pl
import pytest
import torch

from dualstream.data import AsmDataModule, AsmSample
from dualstream.module_geometry import GeometryModule

TINY = dict(model_path="synthetic:tiny", image_size=32, uv_size=16, width=0.125, decoder_width=0.125)


@pytest.fixture(scope="module")
def data():
    return AsmDataModule(model_path="synthetic:tiny", image_size=32, uv_size=16, num_train=4, num_val=2, batch_size=2,
                         render_wrinkles=False)


@pytest.fixture(scope="module")
def batch(data) -> AsmSample:
    return next(iter(data.train_dataloader()))


def test_fit_runs_both_phases(data, tmp_path):
    module = GeometryModule(**TINY, parametric_steps=1, log_images_every_n_steps=1)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", default_root_dir=tmp_path, limit_val_batches=1,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, datamodule=data)
    logged = trainer.logged_metrics
    assert torch.isfinite(logged["train/loss_total"]) and "val/asm_error_px" in logged
    assert "val/vertex_error_px" in logged and "val/loss_symmetry" in logged
    path = next(tmp_path.rglob("*.ckpt"))
    ckpt = torch.load(path, weights_only=True)
    assert any(k.startswith("stream.decoder_exp.") for k in ckpt["state_dict"])
    # the checkpoint is what `facelab evaluate --method dualstream --ckpt` loads
    import argparse

    from dualstream.evaluate import load_predictor
    from facelab.methods import EvaluateRequest

    predictor = load_predictor(EvaluateRequest(ckpt=str(path)), argparse.Namespace())
    same = predictor.stream.decoder_id.net[1].weight
    assert torch.equal(same, module.stream.decoder_id.net[1].weight.cpu())


@pytest.mark.parametrize("switches", [{}, {"expression_asm": False}, {"weight_mask": False},
                                      {"symmetry": False, "laplacian": False}])
def test_every_parameter_gets_a_gradient(batch, switches):
    module = GeometryModule(**TINY, **switches)
    losses = module.losses(module.stream(batch.image), batch)
    assert torch.isfinite(losses["total"])
    assert ("symmetry" in losses) == (switches.get("symmetry", True) and switches.get("expression_asm", True))
    assert ("laplacian" in losses) == switches.get("laplacian", True)
    losses["total"].backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_weight_mask_switch_changes_the_asm_term(batch):
    torch.manual_seed(0)
    a = GeometryModule(**TINY)
    b = GeometryModule(**TINY, weight_mask=False)
    b.load_state_dict(a.state_dict())
    out = a.stream(batch.image)
    assert a.losses(out, batch)["asm"] > b.losses(out, batch)["asm"]  # W >= 3 on the face vs 1


def test_wrong_map_size_is_a_clear_error(batch):
    module = GeometryModule(**{**TINY, "uv_size": 32})
    with pytest.raises(ValueError, match=r"asm_id must be \(B, 3, 32, 32\)"):
        module.losses(module.stream(batch.image), batch)
