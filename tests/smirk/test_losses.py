"""SMIRK loss terms against hand-computed values; frozen feature networks with random and loaded weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facelab.errors import AssetFormatError, MissingAssetError
from smirk.losses import (
    CycleLoss,
    EmotionFeatureLoss,
    MicaShapeTeacher,
    VGGPerceptualLoss,
    affine_aligned_landmark_loss,
    cycle_loss,
    expression_regularization,
    fan_contour_landmark_loss,
    jaw_regularization,
    landmark_loss,
    reconstruction_loss,
    structural_identity_loss,
)
from smirk.networks import SmirkEncoding


def test_landmark_loss_values():
    pred = torch.zeros(2, 2, 2, requires_grad=True)
    target = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 3.0], [3.0, 3.0]]])
    assert landmark_loss(pred[:1], target[:1]).item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    assert landmark_loss(pred, target, valid=torch.tensor([True, False])).item() == pytest.approx(1.25)
    per_point = torch.tensor([[True, False], [False, False]])
    assert landmark_loss(pred, target, valid=per_point).item() == pytest.approx(0.5)
    none = landmark_loss(pred, target, valid=torch.tensor([False, False]))
    assert none.item() == 0.0
    none.backward()  # still attached to pred
    assert pred.grad is not None


def test_fan_contour_uses_points_0_to_16_only():
    pred = torch.zeros(1, 68, 2)
    target = torch.zeros(1, 68, 2)
    target[:, 17:] = 10.0  # interior points are ignored
    target[:, 0, 0] = 1.0
    assert fan_contour_landmark_loss(pred, target).item() == pytest.approx(1.0 / (17 * 2))


def test_regularizers_and_reconstruction():
    assert expression_regularization(torch.tensor([[1.0, 2.0, 3.0]])).item() == pytest.approx(14 / 3)
    assert jaw_regularization(torch.tensor([[0.5, 0.0, 0.0]])).item() == pytest.approx(0.25 / 3)
    assert expression_regularization(torch.ones(1, 3), torch.ones(1, 3)).item() == 0.0
    a, b = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.25)
    assert reconstruction_loss(a, b).item() == pytest.approx(0.25)


def encoding(value: float, n: int = 1) -> SmirkEncoding:
    full = lambda k: torch.full((n, k), value)  # noqa: E731
    return SmirkEncoding(shape=full(4), expression=full(5), eyelids=full(2), jaw_pose=full(3),
                         global_pose=full(3), cam=full(3))


def test_cycle_loss_weights():
    pred, target = encoding(1.0), encoding(0.0)
    assert cycle_loss(pred, target).item() == pytest.approx(1 + 10 + 10)
    assert cycle_loss(pred, target, shape_weight=1.0).item() == pytest.approx(22)
    loss = CycleLoss(expression_weight=2.0, jaw_weight=0.0, eyelid_weight=1.0, shape_weight=3.0)
    assert loss(pred, target).item() == pytest.approx(3.0)
    assert loss(pred, target, include_shape=True).item() == pytest.approx(6.0)


class TinyShapeEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)).mean(dim=(2, 3))


def test_structural_identity_loss_trains_the_generator_only():
    torch.manual_seed(0)
    encoder = TinyShapeEncoder().train()
    generated = torch.rand(2, 3, 8, 8, requires_grad=True)
    image = torch.rand(2, 3, 8, 8)
    stats = encoder.bn.running_mean.clone()
    loss = structural_identity_loss(encoder, generated, image)
    loss.backward()
    assert generated.grad is not None and generated.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())
    assert encoder.training and torch.equal(encoder.bn.running_mean, stats)  # run in eval mode, restored
    encoder.eval()
    with torch.no_grad():
        expected = ((encoder(generated) - encoder(image)) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item())


@pytest.fixture(scope="module")
def vgg() -> VGGPerceptualLoss:
    torch.manual_seed(0)
    return VGGPerceptualLoss(allow_random=True)


def test_vgg_loss_random_weights(vgg):
    a = torch.rand(1, 3, 32, 32, requires_grad=True)
    b = torch.rand(1, 3, 32, 32)
    loss = vgg(a, b)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    assert vgg(b, b).item() == 0.0
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    # per-layer weights follow their layer names, whatever the order given
    single = [VGGPerceptualLoss(allow_random=True, layers=(name,)) for name in ("relu2_2", "relu1_2")]
    for loss_fn in single:
        loss_fn.load_state_dict(vgg.state_dict(), strict=False)
    weighted = VGGPerceptualLoss(allow_random=True, layers=("relu2_2", "relu1_2"), layer_weights=(2.0, 3.0))
    weighted.load_state_dict(vgg.state_dict(), strict=False)
    with torch.no_grad():
        expected = 2.0 * single[0](a, b) + 3.0 * single[1](a, b)
        torch.testing.assert_close(weighted(a, b), expected)


def test_vgg_loads_torchvision_layout(tmp_path, vgg):
    state = {f"features.{k}": v for k, v in vgg.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)  # the full vgg16 checkpoint's head: ignored
    torch.save(state, tmp_path / "vgg16.pth")
    loaded = VGGPerceptualLoss(str(tmp_path / "vgg16.pth"))
    torch.testing.assert_close(loaded.features[0].weight, vgg.features[0].weight)
    del state["features.21.weight"]
    torch.save(state, tmp_path / "vgg16.pth")
    with pytest.raises(AssetFormatError, match=r"missing keys \['21.weight'\]"):
        VGGPerceptualLoss(str(tmp_path / "vgg16.pth"))


def test_missing_weights_are_explained(tmp_path):
    with pytest.raises(MissingAssetError, match=r"(?s)VGG16 weights.*nope\.pth.*weights_path"):
        VGGPerceptualLoss(str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="allow_random"):
        VGGPerceptualLoss()
    with pytest.raises(MissingAssetError, match="emotion-recognition ResNet-50"):
        EmotionFeatureLoss(str(tmp_path / "emoca.ckpt"))


def test_emotion_loss_random_and_emoca_layout(tmp_path):
    torch.manual_seed(0)
    loss_fn = EmotionFeatureLoss(allow_random=True, input_mean=(0.485, 0.456, 0.406),
                                 input_std=(0.229, 0.224, 0.225))
    a = torch.rand(2, 3, 32, 32, requires_grad=True)
    b = torch.rand(2, 3, 32, 32)
    loss = loss_fn(a, b)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    # an EMOCA-style Lightning checkpoint: ResNet-50 under "backbone.", its fc and a "linear" head are ignored
    resnet = loss_fn.net.state_dict()
    ckpt = {"state_dict": {**{f"backbone.{k}": v for k, v in resnet.items()}, "linear.weight": torch.zeros(1)}}
    torch.save(ckpt, tmp_path / "emoca.ckpt")
    loaded = EmotionFeatureLoss(str(tmp_path / "emoca.ckpt"), key_prefix="backbone.")
    torch.testing.assert_close(loaded.net.conv1.weight, resnet["conv1.weight"])


class TinyMica(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.flatten(1)[:, :6] * 2.0


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_mica_teacher(tmp_path):
    off = MicaShapeTeacher()
    assert not off.enabled
    with pytest.raises(RuntimeError, match="weights_path"):
        off(torch.zeros(1, 6), torch.zeros(1, 3, 2, 2))
    torch.jit.script(TinyMica()).save(str(tmp_path / "mica.pt"))
    teacher = MicaShapeTeacher(str(tmp_path / "mica.pt"), n_shape=6)
    assert teacher.enabled
    image = torch.rand(2, 3, 2, 2)
    shape = torch.zeros(2, 6, requires_grad=True)
    loss = teacher(shape, image)
    assert loss.item() == pytest.approx((4 * image.flatten(1)[:, :6] ** 2).mean().item())
    exported = torch.export.export(TinyMica(), (torch.rand(2, 3, 2, 2),))
    torch.export.save(exported, str(tmp_path / "mica.pt2"))
    assert MicaShapeTeacher(str(tmp_path / "mica.pt2"), n_shape=6)(shape, image).item() == pytest.approx(loss.item())
    torch.save({"w": torch.zeros(1)}, tmp_path / "mica_state.pth")
    with pytest.raises(AssetFormatError, match="model"):
        MicaShapeTeacher(str(tmp_path / "mica_state.pth"))
    with pytest.raises(MissingAssetError, match="MICA"):
        MicaShapeTeacher(str(tmp_path / "absent.pt"))


def test_affine_aligned_landmark_loss_ignores_rigid_motion_and_keeps_the_non_rigid_residual():
    """Any rotation + scale + image shift of the points costs 0; a non-rigid move costs its residual after the
    least-squares affine camera, hand-checked against numpy's lstsq; a rigid parameter gets no gradient."""
    import kornia
    import numpy as np

    gen = torch.Generator().manual_seed(0)
    points = torch.randn(2, 30, 3, generator=gen, dtype=torch.float64)
    rot = kornia.geometry.conversions.axis_angle_to_rotation_matrix(torch.tensor([[0.3, -0.5, 0.2], [0.0, 0.1, 0.9]],
                                                                                 dtype=torch.float64))
    target = 7.0 * (points @ rot.transpose(1, 2))[..., :2] + torch.tensor([0.2, -0.1], dtype=torch.float64)
    assert float(affine_aligned_landmark_loss(points, target)) < 1e-12
    moved = target.clone()
    moved[:, :5, 1] += 0.3  # a "jaw" that opens: no affine map of the points explains it
    loss = affine_aligned_landmark_loss(points, moved)
    expected = 0.0
    for b in range(2):
        design = np.concatenate([points[b].numpy(), np.ones((30, 1))], axis=1)
        sol, *_ = np.linalg.lstsq(design, moved[b].numpy(), rcond=None)
        expected += ((design @ sol - moved[b].numpy()) ** 2).sum()
    assert float(loss) == pytest.approx(expected / (2 * 30 * 2), rel=1e-6)
    angle = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)  # a rigid parameter of the prediction
    rotated = points[:1] @ kornia.geometry.conversions.axis_angle_to_rotation_matrix(angle).transpose(1, 2)
    (grad,) = torch.autograd.grad(affine_aligned_landmark_loss(rotated, moved[:1]), angle)
    assert float(grad.abs().max()) < 1e-9
    with pytest.raises(ValueError, match="affine_aligned_landmark_loss"):
        affine_aligned_landmark_loss(points[..., :2], target)
