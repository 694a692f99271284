"""SpeechModule (Eq. 8-10): vertices through the bilinear model, the LVE metric, a smoke fit, checkpoints."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from dnpm.module_speech import SpeechModule, lip_vertex_error, load_speech_model
from dnpm.speech_data import SpeechBatch, SpeechDataModule, SyntheticSpeechDataset
from facelab.errors import AssetFormatError, MissingAssetError
from facelab.morphable import BilinearParams

SMALL = dict(model_path="synthetic:tiny", d_model=16, max_frames=60, lr=1e-3)


@pytest.fixture(scope="module")
def module() -> SpeechModule:
    torch.manual_seed(0)
    return SpeechModule(**SMALL)


def _batch(n: int = 2, seconds: float = 0.5) -> SpeechBatch:
    ds = SyntheticSpeechDataset(n, "train", seconds=seconds, num_identity=50)
    return SpeechBatch.collate([ds[i] for i in range(n)])


def test_vertices_match_the_bilinear_model(module):
    b = _batch()
    verts = module.vertices(b.coefficients, b.identity)
    t = b.coefficients.shape[1]
    exp = b.coefficients.reshape(-1, 52) @ module.arkit_map
    ident = b.identity.repeat_interleave(t, 0)
    ref = module.bilinear(BilinearParams(identity=ident, expression=exp)).verts
    assert torch.allclose(verts.reshape(ref.shape), ref, atol=1e-3)
    assert module.lips.numel() > 0


def test_lip_vertex_error():
    gt = torch.zeros(1, 2, 4, 3)
    pred = gt.clone()
    pred[0, 0, 1] = torch.tensor([3.0, 4.0, 0.0])  # 5 mm on a lip vertex in frame 0
    pred[0, 1, 3] = torch.tensor([0.0, 0.0, 9.0])  # off the lips: ignored
    lips = torch.tensor([0, 1])
    assert lip_vertex_error(pred, gt, lips) == 2.5 and lip_vertex_error(pred, gt, lips, squared=True) == 12.5
    assert lip_vertex_error(pred, gt, lips, mask=torch.tensor([[1.0, 0.0]])) == 5.0


def test_smoke_fit_every_trainable_parameter_learns(module):
    b = _batch()
    opt = module.configure_optimizers()
    module.train()
    losses = []
    for _ in range(3):
        opt.zero_grad()
        terms, loss = module.losses(module.net(b.audio, b.coefficients), b)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert set(terms) == {"vertex_l1", "coef_l1", "loss"}
    dead = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not dead, f"no gradient reaches {dead}"
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
    # frozen: wav2vec 2.0's CNN, and the cross-attention's query / key under the diagonal alignment (one key each)
    assert frozen and all("feature_extractor" in n or "cross_attn.q" in n or "cross_attn.k" in n for n in frozen)


def test_lightning_fit_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SpeechModule(**SMALL)
    dm = SpeechDataModule(batch_size=2, num_train=4, num_val=2, num_test=2, seconds=0.5)
    trainer = L.Trainer(
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    assert {"val/lve", "val/lve_sq", "val/coef_l1", "val/vertex_l1"} <= set(metrics)
    assert all(torch.isfinite(metrics[k]) for k in ("val/lve", "val/coef_l1"))
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = load_speech_model(str(ckpt))
    audio = torch.randn(1, 8000)
    assert torch.allclose(loaded.net.generate(audio), model.eval().net.generate(audio), atol=1e-6)
    saved = torch.load(ckpt, weights_only=True)  # as lightning-cli saves it: its bookkeeping keys in hparams
    saved["hyper_parameters"].update(_class_path="dnpm.module_speech.SpeechModule", _instantiator="x.y")
    torch.save(saved, tmp_path / "cli.ckpt")
    assert torch.allclose(load_speech_model(str(tmp_path / "cli.ckpt")).net.generate(audio), loaded.net.generate(audio))
    with pytest.raises(MissingAssetError):
        load_speech_model(str(tmp_path / "none.ckpt"))
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(AssetFormatError):
        load_speech_model(str(tmp_path / "other.ckpt"))


def test_bad_lip_file(tmp_path):
    (tmp_path / "lips.txt").write_text("0 1 99999\n")
    with pytest.raises(AssetFormatError, match="lip vertex ids"):
        SpeechModule(**SMALL, lip_vertices=str(tmp_path / "lips.txt"))
    with pytest.raises(MissingAssetError):
        SpeechModule(**SMALL, lip_vertices=str(tmp_path / "none.npy"))
