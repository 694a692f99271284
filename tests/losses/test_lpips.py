"""The LPIPS wrapper equals ``lpips.LPIPS`` itself with the same (random) trunk weights, loaded from a local file."""

from __future__ import annotations

import lpips
import pytest
import torch
import torchvision

from facelab.errors import AssetFormatError, MissingAssetError
from facelab.losses import LPIPS


def random_alexnet_state() -> dict[str, torch.Tensor]:
    """A torchvision-layout AlexNet state dict with random ``features`` (and a stand-in classifier key)."""
    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        features = torchvision.models.alexnet(weights=None).features
    state = {f"features.{k}": 0.05 * torch.randn(v.shape, generator=gen) for k, v in features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(1)
    return state


@pytest.fixture(scope="module")
def trunk_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lpips") / "alexnet.pth"
    torch.save(random_alexnet_state(), path)
    return path


def reference_lpips(monkeypatch, state, **kwargs) -> lpips.LPIPS:
    """``lpips.LPIPS`` with its "pretrained" trunk: torchvision's alexnet, here holding ``state``."""
    build = torchvision.models.alexnet

    def pretrained_alexnet(pretrained: bool = False, **_):
        net = build(weights=None)
        net.features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
        return net

    monkeypatch.setattr(lpips.pretrained_networks.tv, "alexnet", pretrained_alexnet)
    return lpips.LPIPS(net="alex", pnet_rand=False, verbose=False, **kwargs)


def test_equals_lpips_itself(monkeypatch, trunk_file):
    state = random_alexnet_state()
    ours = LPIPS("alex", str(trunk_file), reduction="none")
    ref = reference_lpips(monkeypatch, state)
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        expected = ref(x, y, normalize=True).flatten()
        torch.testing.assert_close(ours(x, y), expected)
        ours.input_range = "signed"  # the constructor's input_range="signed": inputs already in [-1, 1]
        torch.testing.assert_close(ours(2 * x - 1, 2 * y - 1), expected)
        assert ours(x, x).abs().max() == 0
    # the shipped linear heads are the ones lpips loads
    torch.testing.assert_close(ours.lpips.lin0.model[-1].weight, ref.lin0.model[-1].weight)


def test_spatial_map_matches(monkeypatch, trunk_file):
    ref = reference_lpips(monkeypatch, random_alexnet_state(), spatial=True)
    ours = LPIPS("alex", str(trunk_file), spatial=True, reduction="none")
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, y), ref(x, y, normalize=True))
    assert ours(x, y).shape == (1, 1, 32, 32)


def test_frozen_gradients_and_random_trunk_warning(capsys):
    capsys.readouterr()
    loss_fn = LPIPS("alex", allow_random=True)
    err = capsys.readouterr().err
    assert "WARNING" in err and "LPIPS alexnet trunk" in err and "trunk_weights_path" in err
    assert not any(p.requires_grad for p in loss_fn.parameters())
    loss_fn.train()
    assert not loss_fn.lpips.training
    x = torch.rand(2, 1, 32, 32, requires_grad=True)  # one-channel maps are repeated to RGB
    loss = loss_fn(x, torch.rand(2, 1, 32, 32))
    loss.backward()
    assert loss.dim() == 0 and x.grad.abs().sum() > 0


def test_weight_errors(tmp_path):
    with pytest.raises(ValueError, match="allow_random"):
        LPIPS("alex")
    with pytest.raises(MissingAssetError, match=r"(?s)LPIPS trunk.*trunk_weights_path"):
        LPIPS("alex", str(tmp_path / "absent.pth"))
    state = random_alexnet_state()
    del state["features.3.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(AssetFormatError, match=r"slice2\.3\.weight"):
        LPIPS("alex", str(tmp_path / "partial.pth"))
    with pytest.raises(ValueError, match="net must be"):
        LPIPS("resnet", allow_random=True)
