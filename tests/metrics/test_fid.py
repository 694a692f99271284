"""FID through torchmetrics: injected features against a numpy/scipy Fréchet distance; Inception only from a file."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from facelab.errors import MissingAssetError
from facelab.metrics import FID

HAS_TORCH_FIDELITY = importlib.util.find_spec("torch_fidelity") is not None


class PooledProjection(nn.Module):
    """A fixed feature extractor: 4x4 average pooling then a fixed random projection to D = 6."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, 6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.adaptive_avg_pool2d(images, 4).flatten(1))


def _frechet_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Heusel et al. 2017 with scipy's matrix square root (the original FID code's formula)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@pytest.fixture()
def extractor() -> PooledProjection:
    torch.manual_seed(0)
    return PooledProjection()


def _sets(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    real = torch.rand(n, 3, 16, 16, generator=g)
    fake = (0.7 * torch.rand(n, 3, 16, 16, generator=g) + 0.2).clamp(0, 1)
    return real, fake


def test_fid_of_injected_features_equals_the_scipy_reference(extractor):
    real, fake = _sets()
    fid = FID(feature_extractor=extractor)
    for chunk in real.split(16):  # accumulated over batches
        fid.update(chunk, real=True)
    for chunk in fake.split(16):
        fid.update(chunk, real=False)
    value = float(fid.compute())
    with torch.no_grad():
        ref = _frechet_reference(extractor(real).double().numpy(), extractor(fake).double().numpy())
    assert value == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert value > 1e-3


def test_fid_of_a_set_with_itself_is_zero_and_shifted_features_are_not(extractor):
    real, _ = _sets()
    fid = FID(feature_extractor=extractor, feature_dim=6)
    assert float(fid(real, real.clone())) == pytest.approx(0.0, abs=1e-4)
    shifted = float(fid(real, (real + 0.1).clamp(0, 1)))
    assert shifted > 1e-3
    # a pure feature shift: FID = ||delta mu||^2 (the covariances are equal)
    with torch.no_grad():
        delta = extractor(real + 0.1) - extractor(real)
    assert float(fid(real, real + 0.1)) == pytest.approx(float(delta.mean(0).square().sum()), rel=1e-3)
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())


def test_fid_checks_its_inputs(extractor):
    fid = FID(feature_extractor=extractor)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        fid.update(torch.zeros(2, 1, 8, 8), real=True)
    with pytest.raises(ValueError, match="not both"):
        FID("weights.pth", feature_extractor=extractor)
    flat = FID(feature_extractor=nn.Flatten(0), feature_dim=3)  # returns (B*C*H*W,): not features
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        flat.update(torch.zeros(2, 3, 4, 4), real=True)


def test_missing_inception_weights_are_a_clear_error(tmp_path):
    with pytest.raises(MissingAssetError, match="inception_weights") as err:
        FID()
    assert "weights-inception-2015-12-05" in str(err.value) and "random" in str(err.value)
    with pytest.raises(MissingAssetError, match="inception_weights"):
        FID(str(tmp_path / "absent.pth"))


@pytest.mark.skipif(HAS_TORCH_FIDELITY, reason="torch-fidelity is installed")
def test_inception_without_torch_fidelity_says_what_to_install(tmp_path):
    weights = tmp_path / "inception.pth"
    torch.save({}, weights)
    with pytest.raises(ModuleNotFoundError, match="torch-fidelity"):
        FID(str(weights))


@pytest.mark.skipif(not HAS_TORCH_FIDELITY, reason="torchmetrics' Inception needs torch-fidelity")
def test_inception_fid_reads_the_local_weights(tmp_path, monkeypatch):
    """torchmetrics' FID Inception built from a local file (here random weights saved by the test: the network is
    built once with its download and weight loading stubbed out, only to get a state dict of the right layout)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    with monkeypatch.context() as patch:
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)
    real, fake = _sets(4)
    fid = FID(str(weights), feature=64)
    value = float(fid(real, fake))
    assert np.isfinite(value) and value >= 0
