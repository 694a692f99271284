"""SMIRK encoders and translator: sizes (supplementary Table 1, §3.3), head initialisation, clamps, weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from facelab.errors import AssetFormatError, MissingAssetError
from smirk.networks import (
    EXPRESSION_BACKBONE,
    ExpressionEncoder,
    PoseEncoder,
    SmirkEncoder,
    SmirkGenerator,
    UNet,
    create_backbone,
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def encoder() -> SmirkEncoder:
    torch.manual_seed(0)
    return SmirkEncoder().eval()


def test_encoder_parameter_count_matches_table_1(encoder):
    assert n_params(encoder.pose_encoder) == 428_888 + 576 * 6 + 6
    assert n_params(encoder.shape_encoder) == 1_413_208 + 960 * 300 + 300
    assert n_params(encoder.expression_encoder) == 1_413_208 + 960 * 55 + 55
    assert abs(n_params(encoder) - 3.6e6) / 3.6e6 < 0.03  # 3,599,921


def test_generator_parameter_count():
    generator = SmirkGenerator()
    assert abs(n_params(generator) - 31.4e6) / 31.4e6 < 0.03  # 31,367,171


def test_encoder_outputs_at_init(encoder, flame):
    image = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        enc = encoder(image)
    assert enc.shape.shape == (2, 300) and enc.expression.shape == (2, 50)
    assert enc.eyelids.shape == (2, 2) and enc.jaw_pose.shape == (2, 3)
    assert enc.global_pose.shape == (2, 3) and enc.cam.shape == (2, 3)
    torch.testing.assert_close(enc.cam[:, 0], torch.full((2,), 7.0))  # scale bias 7, scale row zeroed
    assert enc.global_pose.abs().max() < 0.05 and enc.cam[:, 1:].abs().max() < 0.05  # head x 0.001
    assert torch.count_nonzero(enc.shape) == 0  # shape head starts at zero
    with torch.no_grad():
        mesh = flame(enc.flame_params())
    assert mesh.verts.shape == (2, flame.num_verts, 3) and torch.isfinite(mesh.verts).all()
    assert enc.camera().scale.shape == (2,)
    assert enc.repeat(3).expression.shape == (6, 50)


def test_expression_clamps():
    enc = ExpressionEncoder(n_expression=50)
    with torch.no_grad():
        enc.head.weight.zero_()
        enc.head.bias.copy_(torch.linspace(-3, 3, 55))
        enc.head.bias[50:55] = torch.tensor([-2.0, 2.0, -1.0, 1.0, -1.0])
        out = enc(torch.rand(1, 3, 64, 64))
    torch.testing.assert_close(out.eyelids, torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(out.jaw_pose, torch.tensor([[0.0, 0.2, -0.2]]))
    torch.testing.assert_close(out.expression, torch.linspace(-3, 3, 55)[None, :50])


def test_input_normalization_uses_pretrained_cfg():
    enc = PoseEncoder()
    torch.testing.assert_close(enc.mean.flatten(), torch.tensor(enc.backbone.pretrained_cfg["mean"]))
    assert enc.normalize_input


def test_random_init_warns_on_the_console(capsys):
    create_backbone(EXPRESSION_BACKBONE, config_key="model.init_args.expression_backbone_weights")
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and "random initialisation" in err
    assert "`model.init_args.expression_backbone_weights`" in err


def test_pretrained_weights_load_strictly(tmp_path):
    torch.manual_seed(0)
    full = timm.create_model(EXPRESSION_BACKBONE, pretrained=False)  # the published layout, with its classifier
    path = tmp_path / "mnv3_large.pth"
    torch.save(full.state_dict(), path)
    backbone = create_backbone(EXPRESSION_BACKBONE, str(path))
    torch.testing.assert_close(backbone.state_dict()["conv_stem.weight"], full.state_dict()["conv_stem.weight"])

    broken = {k: v for k, v in full.state_dict().items() if not k.startswith("blocks.6")}
    torch.save(broken, path)
    with pytest.raises(AssetFormatError, match=r"mnv3_large\.pth.*missing keys.*blocks\.6"):
        create_backbone(EXPRESSION_BACKBONE, str(path))
    with pytest.raises(MissingAssetError, match="nowhere.pth"):
        PoseEncoder(pretrained_path=str(tmp_path / "nowhere.pth"))


def test_generator_shape_and_range():
    generator = SmirkGenerator().eval()
    rendered, masked = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = generator(rendered, masked)
    assert out.shape == (2, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="divisible by 16"):
        generator(torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24))


def test_unet_is_generic():
    unet = UNet(4, 2, channels=(8, 16), bottleneck_channels=32, n_res_blocks=1)
    x = torch.rand(1, 4, 16, 16, requires_grad=True)
    unet(x).sum().backward()
    assert unet(x).shape == (1, 2, 16, 16) and x.grad is not None


def test_channels_last_gives_the_same_numbers():
    plain = PoseEncoder(channels_last=False).eval()
    fast = PoseEncoder(channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    assert fast.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(image).global_pose, plain(image).global_pose, atol=1e-5, rtol=1e-4)


def test_inward_clamp_matches_clamp_and_lets_saturated_outputs_return():
    from smirk.networks import inward_clamp

    x = torch.tensor([-0.5, 0.1, 0.5, 0.7], requires_grad=True)
    y = inward_clamp(x, -0.2, 0.2)
    assert torch.equal(y, x.detach().clamp(-0.2, 0.2))
    y.backward(torch.tensor([1.0, 1.0, 1.0, -1.0]))
    # x=-0.5: grad 1 > 0 moves it down (further out) -> blocked; x=0.1 inside -> 1; x=0.5: grad 1 > 0 moves it
    # down (inward) -> kept; x=0.7: grad -1 moves it up (outward) -> blocked
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_expression_encoder_clamps_keep_reference_outputs():
    from smirk.networks import ExpressionEncoder

    torch.manual_seed(0)
    enc = ExpressionEncoder(n_expression=10, channels_last=False).eval()
    with torch.no_grad():
        enc.head.bias.copy_(torch.linspace(-3, 3, 15))
    image = torch.rand(2, 3, 64, 64)
    soft = enc(image)
    enc.inward_gradients = False
    hard = enc(image)
    for a, b in zip((soft.expression, soft.eyelids, soft.jaw_pose), (hard.expression, hard.eyelids, hard.jaw_pose)):
        assert torch.equal(a, b)
    assert soft.eyelids.min() >= 0 and soft.eyelids.max() <= 1 and soft.jaw_pose[:, 1:].abs().max() <= 0.2


def test_generator_is_the_core_unet_with_smirk_checkpoint_keys():
    """The translator is a facelab.nn.UNet; parameter count and state-dict keys are those of SMIRK checkpoints."""
    from facelab.nn import UNet as CoreUNet

    generator = SmirkGenerator()
    assert isinstance(generator.unet, CoreUNet) and UNet is CoreUNet
    assert n_params(generator) == 31_367_171
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def double_conv(prefix):
        return {f"{prefix}.{i}.weight" for i in (0, 3)} | {f"{prefix}.{i}.{b}" for i in (1, 4) for b in bn}

    expected = set().union(*(double_conv(f"unet.down.{i}") for i in range(4)), double_conv("unet.bottleneck"),
                           *(double_conv(f"unet.up_convs.{i}") for i in range(4)))
    expected |= {f"unet.res_blocks.{j}.body.{i}.weight" for j in range(5) for i in (1, 5)}
    expected |= {f"unet.res_blocks.{j}.body.{i}.{b}" for j in range(5) for i in (2, 6) for b in bn}
    expected |= {f"unet.{m}.{b}" for m in ("up.0", "up.1", "up.2", "up.3", "out") for b in ("weight", "bias")}
    assert set(generator.state_dict()) == expected


def test_inward_gradients_switch_is_reachable_from_config():
    """``model.init_args.encoder.init_args.inward_gradients`` reaches the expression encoder's clamps (issue 9)."""
    import subprocess
    import sys

    from smirk.networks import SmirkEncoder

    assert SmirkEncoder(inward_gradients=False).expression_encoder.inward_gradients is False
    assert SmirkEncoder().expression_encoder.inward_gradients is True
    out = subprocess.run([sys.executable, "-m", "facelab.cli.train", "fit", "--config", "configs/smirk_pretrain.yaml",
                          "--config", "configs/smirk_synthetic.yaml",
                          "--model.init_args.encoder.init_args.inward_gradients=false", "--print_config"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "inward_gradients: false" in out.stdout
