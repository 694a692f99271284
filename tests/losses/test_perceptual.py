"""PerceptualLoss / VGGFeatures against torchvision's own VGG modules; loud random weights; local weight files."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from facelab.errors import AssetFormatError, MissingAssetError
from facelab.losses import IMAGENET_MEAN, IMAGENET_STD, PerceptualLoss, VGGFeatures, vgg_layer_names


def torchvision_features(arch: str, state: dict[str, torch.Tensor]) -> nn.Sequential:
    """torchvision's own ``<arch>().features`` (built on the meta device: no 120 M-parameter init) with ``state``."""
    with torch.device("meta"):
        net = getattr(torchvision.models, arch)(weights=None)
    features = net.features.to_empty(device="cpu")
    features.load_state_dict(state, strict=False)
    return features.eval()


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_layer_names_follow_torchvision(arch):
    names = vgg_layer_names(arch)
    with torch.device("meta"):
        features = getattr(torchvision.models, arch)(weights=None).features
    for name, index in names.items():
        kind = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d}[name[:4].rstrip("0123456789_")]
        assert isinstance(features[index], kind), (name, index)
    assert names["relu1_2"] == 3 and names["relu4_3"] == (22 if arch == "vgg16" else 24)
    assert len(names) == len(features)


def test_random_weights_are_loud_and_explicit(capsys):
    capsys.readouterr()
    PerceptualLoss(allow_random=True, layers=("relu1_2",))
    err = capsys.readouterr().err
    assert "WARNING" in err and "VGG16 (PerceptualLoss)" in err and "weights_path" in err and "RANDOM" in err
    with pytest.raises(ValueError, match="allow_random"):
        PerceptualLoss(layers=("relu1_2",))
    with pytest.raises(ValueError, match="unknown vgg19 layers"):
        PerceptualLoss(allow_random=True, arch="vgg19", layers=("relu4_5",))


def test_loss_equals_torchvision_features_by_hand(tmp_path):
    torch.manual_seed(0)
    loss_fn = PerceptualLoss(allow_random=True, arch="vgg19", layers=("relu3_4", "relu1_1"), layer_weights=(2.0, 0.5),
                             norm="l2")
    state = {f"features.{k}": v for k, v in loss_fn.features.state_dict().items()}
    reference = torchvision_features("vgg19", {k[len("features."):]: v for k, v in state.items()})
    x, y = torch.rand(2, 3, 16, 16, requires_grad=True), torch.rand(2, 3, 16, 16)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        fx, fy = reference[:18]((x - mean) / std), reference[:18]((y - mean) / std)  # up to relu3_4 (index 17)
        gx, gy = reference[:2]((x - mean) / std), reference[:2]((y - mean) / std)  # relu1_1 (index 1)
        expected = 2.0 * (fx - fy).square().mean() + 0.5 * (gx - gy).square().mean()
    loss = loss_fn(x, y)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert x.grad.abs().sum() > 0 and not any(p.requires_grad for p in loss_fn.parameters())
    # one-channel maps (displacements) are repeated to RGB
    torch.testing.assert_close(loss_fn(x[:, :1], y[:, :1]), loss_fn(x[:, :1].expand(-1, 3, -1, -1),
                                                                    y[:, :1].expand(-1, 3, -1, -1)))
    # a torchvision state dict file loads (classifier keys and deeper layers ignored)
    torch.save({**state, "classifier.0.weight": torch.zeros(1)}, tmp_path / "vgg19.pth")
    loaded = PerceptualLoss(str(tmp_path / "vgg19.pth"), arch="vgg19", layers=("relu1_1",))
    torch.testing.assert_close(loaded.features[0].weight, reference[0].weight)
    assert len(loaded.features) == 2


def test_target_gradient_and_weight_file_errors(tmp_path):
    torch.manual_seed(0)
    loss_fn = PerceptualLoss(allow_random=True, layers=("relu2_2",), detach_target=False)
    x, y = torch.rand(1, 3, 8, 8, requires_grad=True), torch.rand(1, 3, 8, 8, requires_grad=True)
    loss_fn(x, y).backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    detached = PerceptualLoss(allow_random=True, layers=("relu2_2",))
    y.grad = None
    detached(x, y).backward()
    assert y.grad is None
    with pytest.raises(MissingAssetError, match=r"(?s)VGG16 weights.*absent\.pth.*weights_path"):
        PerceptualLoss(str(tmp_path / "absent.pth"))
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(AssetFormatError, match=r"missing keys \['0.bias'"):
        VGGFeatures("vgg16", ("relu1_1",), str(tmp_path / "partial.pth"))
    with pytest.raises(ValueError, match="differ"):
        loss_fn(x, y[..., :4])
