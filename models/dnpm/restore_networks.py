"""The networks of detailed reconstruction from a degraded image (DNPM paper §IV-B, Eq. 11).

* :class:`GradualStyleEncoder` is ``E_deg``: the pSp "gradual style" encoder (Richardson et al. 2021, §3): a
  feature pyramid over an IResNet trunk (ArcFace's improved ResNet, :mod:`facelab.losses.iresnet`; pSp uses its
  IR-SE-50 variant, ``se=True`` here adds the squeeze-excitation), three levels (``c1``: stride 4, ``c2``: 8,
  ``c3``: 16; FPN top-down ``p2 = up(c3) + lat(c2)``, ``p1 = up(p2) + lat(c1)``), one ``map2style`` block per style
  (strided 3x3 convs + LeakyReLU down to 1x1, then an equalised linear layer). Coarse styles come from ``c3``, medium
  from ``p2``, fine from ``p1``: pSp's 0-2 / 3-6 / 7-17 of the 18 styles of a 1024^2 generator, scaled to
  ``n_latent`` at other resolutions (:func:`restore_style_split`). The output is the *offset* added to ``w_mean``:
  ``I_gen = G(E_deg(I_low) + w_mean)`` (Eq. 11; :func:`restore`).
* :class:`GlobalGenerator` is the image -> UV displacement regressor: pix2pixHD's global generator (Wang et al. 2018,
  §3.2, "G1"): ``c7s1-64`` (reflection pad, 7x7 conv, instance norm, ReLU), ``n_downsampling`` stride-2 3x3 convs
  doubling the width, ``n_blocks`` residual blocks (:class:`facelab.nn.ResidualBlock`: reflection-padded,
  instance norm), as many stride-2 transposed convs halving it, ``c7s1-out``. Its input is a face image, its output a
  UV displacement map (in the regressor's map units; no ``tanh``: displacement maps are unbounded floats).

The trunk's weights are optional and local (``trunk_weights``: insightface ``arcface_torch``'s IResNet
``backbone.pth``, whose names the trunk keeps; pSp initialises its IR-SE-50 from an ArcFace model the same way);
without them the trunk starts random (pSp trains the whole encoder either way).

Shapes: ``B`` batch, ``C`` channels, ``S`` map side, ``N`` = ``n_latent``, ``D`` = ``w_dim``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnpm.detailed3dmm import style_split, synthesize
from facelab.io.weights import read_state_dict
from facelab.losses.iresnet import IRESNET_LAYERS, IBasicBlock, IResNet
from facelab.nn import EqualLinear, ResidualBlock, norm_layer

__all__ = [
    "PSP_SPLIT",
    "GlobalGenerator",
    "GradualStyleBlock",
    "GradualStyleEncoder",
    "IRSEBlock",
    "restore",
    "restore_style_split",
]

#: pSp's split of a 1024^2 generator's 18 styles: coarse 0-2, medium 3-6, fine 7-17.
PSP_SPLIT = (3, 4, 11)


def restore_style_split(n_latent: int) -> tuple[int, int, int]:
    """Coarse / medium / fine style counts: pSp's 3 / 4 / 11 of 18, scaled to ``n_latent`` (rounded, each >= 1, the
    fine level takes the rest; :func:`dnpm.detailed3dmm.style_split`).

    >>> restore_style_split(18), restore_style_split(14), restore_style_split(8)
    ((3, 4, 11), (2, 3, 9), (1, 2, 5))
    """
    return style_split(n_latent, PSP_SPLIT)


class SqueezeExcite(nn.Module):
    """Channel attention of IR-SE blocks (Hu et al. 2018): ``x * sigmoid(W2 relu(W1 avgpool(x)))``."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class IRSEBlock(IBasicBlock):
    """pSp's ``bottleneck_IR_SE``: the IResNet block (:class:`facelab.losses.iresnet.IBasicBlock`) with a
    squeeze-excitation on the residual branch before the sum."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__(in_channels, channels, stride)
        self.se = SqueezeExcite(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.se(self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x)))))))
        return out + (x if self.downsample is None else self.downsample(x))


def _se_trunk(layers: Sequence[int]) -> IResNet:
    """An IResNet whose stage blocks are :class:`IRSEBlock` (same names plus ``se.*``)."""
    net = IResNet(layers)
    widths, in_channels = (64, 128, 256, 512), 64
    for index, (width, blocks) in enumerate(zip(widths, layers), start=1):
        stage = [IRSEBlock(in_channels, width, stride=2)] + [IRSEBlock(width, width) for _ in range(blocks - 1)]
        setattr(net, f"layer{index}", nn.Sequential(*stage))
        in_channels = width
    return net


class GradualStyleBlock(nn.Module):
    """pSp's ``map2style``: ``log2(spatial)`` stride-2 3x3 convs with LeakyReLU(0.01) to a 1x1 map, then an
    equalised linear layer: (B, C, s, s) -> (B, D)."""

    def __init__(self, in_channels: int, out_channels: int, spatial: int) -> None:
        super().__init__()
        pools = max(0, int(math.log2(max(1, spatial))))
        convs: list[nn.Module] = []
        channels = in_channels
        for _ in range(pools):
            convs += [nn.Conv2d(channels, out_channels, 3, stride=2, padding=1), nn.LeakyReLU(0.01)]
            channels = out_channels
        if not convs:  # already 1x1: a 1x1 conv to the width
            convs = [nn.Conv2d(channels, out_channels, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*convs)
        self.linear = EqualLinear(out_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)
        x = F.adaptive_avg_pool2d(x, 1) if x.shape[-1] != 1 else x  # a non-power-of-two input ends above 1x1
        return self.linear(x.flatten(1))


class GradualStyleEncoder(nn.Module):
    """``E_deg``: pSp's gradual style encoder (module docstring) producing the w+ offset of a map or image.

    Args:
        n_latent: ``N`` styles of the generator.
        w_dim: ``D``.
        in_channels: channels of the input (1: a displacement map; repeated to the trunk's 3).
        input_size: the side the input is resized to before the trunk (pSp: 256; a multiple of 16).
        depth: IResNet depth (pSp: 50; :data:`facelab.losses.iresnet.IRESNET_LAYERS`).
        se: IR-SE blocks (pSp's ``ir_se``) instead of plain IR.
        trunk_weights: optional local ArcFace IResNet ``backbone.pth`` for the trunk (the IR variant's names;
            with ``se`` the SE weights stay random). None: a random trunk.
        head_init: gain of the linear heads' initial weights (small: ``E + w_mean`` starts near the mean face).

    Shapes:
        ``forward(x (B, in_channels, H, W)) -> (B, N, D)``.
    """

    def __init__(
        self,
        n_latent: int,
        w_dim: int,
        in_channels: int = 1,
        input_size: int = 256,
        depth: int = 50,
        se: bool = True,
        trunk_weights: str | None = None,
        head_init: float = 0.1,
    ) -> None:
        super().__init__()
        if depth not in IRESNET_LAYERS:
            raise ValueError(f"depth must be one of {sorted(IRESNET_LAYERS)}, got {depth}")
        if input_size < 16 or input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16 (four stride-2 stages), got {input_size}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (maps) or 3 (images), got {in_channels}")
        self.n_latent, self.w_dim = int(n_latent), int(w_dim)
        self.in_channels, self.input_size = int(in_channels), int(input_size)
        self.split = restore_style_split(self.n_latent)
        trunk = _se_trunk(IRESNET_LAYERS[depth]) if se else IResNet(IRESNET_LAYERS[depth])
        if trunk_weights is not None:
            state = read_state_dict(
                trunk_weights,
                what=f"ArcFace IResNet-{depth} weights (arcface_torch backbone.pth) for E_deg's trunk",
                config_key="model.init_args.trunk_weights",
            )
            keep = {
                k: v
                for k, v in state.items()
                if k.split(".")[0] in ("conv1", "bn1", "prelu", "layer1", "layer2", "layer3", "layer4")
            }
            missing, unexpected = trunk.load_state_dict(keep, strict=False)
            missing = [k for k in missing if ".se." not in k and k.split(".")[0] not in ("bn2", "fc", "features")]
            if missing or unexpected:
                raise ValueError(
                    f"{trunk_weights}: not an IResNet-{depth} state dict (missing {missing[:4]}, "
                    f"unexpected {unexpected[:4]})"
                )
        self.input_layer = nn.Sequential(trunk.conv1, trunk.bn1, trunk.prelu)  # stride 1, 64 channels
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        side = self.input_size
        spatial = {"c3": side // 16, "p2": side // 8, "p1": side // 4}
        self.styles = nn.ModuleList()
        for level, n in zip(("c3", "p2", "p1"), self.split):
            self.styles.extend(GradualStyleBlock(512, self.w_dim, spatial[level]) for _ in range(n))
        self.latlayer1 = nn.Conv2d(256, 512, 1)  # c2 -> p2
        self.latlayer2 = nn.Conv2d(128, 512, 1)  # c1 -> p1
        for block in self.styles:
            block.linear.weight.data.mul_(head_init)  # EqualLinear: runtime scale 1/sqrt(in); weights ~N(0, 1)

    def _input(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"E_deg expects (B, {self.in_channels}, H, W) inputs, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("E_deg input contains NaN or infinite values")
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x,
                size=(self.input_size,) * 2,
                mode="bilinear",
                align_corners=False,
                antialias=x.shape[-1] > self.input_size,
            )
        return x.expand(-1, 3, -1, -1) if self.in_channels == 1 else x

    @staticmethod
    def _upsample_add(x: Tensor, y: Tensor) -> Tensor:
        return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer1(self.input_layer(self._input(x)))  # stride 2
        c1 = self.layer2(x)  # stride 4, 128
        c2 = self.layer3(c1)  # stride 8, 256
        c3 = self.layer4(c2)  # stride 16, 512
        n0, n1, _ = self.split
        styles = [block(c3) for block in self.styles[:n0]]  # coarse
        p2 = self._upsample_add(c3, self.latlayer1(c2))
        styles += [block(p2) for block in self.styles[n0 : n0 + n1]]  # medium
        p1 = self._upsample_add(p2, self.latlayer2(c1))
        styles += [block(p1) for block in self.styles[n0 + n1 :]]  # fine
        return torch.stack(styles, dim=1)


def restore(encoder: nn.Module, generator: nn.Module, low: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 11: ``I_gen = G(E_deg(I_low) + w_mean)`` with the generator's constant noise.

    Returns:
        ``(I_gen (B, 1, S, S), ws (B, N, D))``.
    """
    ws = encoder(low) + generator.w_avg.to(low)
    return synthesize(generator, ws), ws


class GlobalGenerator(nn.Module):
    """pix2pixHD's global generator G1 (module docstring): a face image -> a UV displacement map.

    Args:
        in_channels: image channels (3).
        out_channels: map channels (1).
        ngf: width of the first layer (pix2pixHD: 64).
        n_downsampling: stride-2 stages (pix2pixHD: 4 for G1 at 1024x512; 3 suits 256^2 inputs).
        n_blocks: residual blocks at the bottleneck (pix2pixHD: 9).
        max_channels: cap on the width.
        input_size: the side the input image is resized to (None: as given; must divide by 2^n_downsampling).
        output_size: the side of the output map (None: the input side); resized by area averaging / bilinearly.

    Shapes:
        ``forward(image (B, in, H, W)) -> (B, out, output_size, output_size)``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        ngf: int = 64,
        n_downsampling: int = 3,
        n_blocks: int = 9,
        max_channels: int = 1024,
        input_size: int | None = None,
        output_size: int | None = None,
    ) -> None:
        super().__init__()
        if n_downsampling < 0 or n_blocks < 0 or ngf < 1:
            raise ValueError("need ngf >= 1, n_downsampling >= 0 and n_blocks >= 0")
        if input_size is not None and input_size % (2**n_downsampling):
            raise ValueError(f"input_size {input_size} must divide by 2^n_downsampling = {2**n_downsampling}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.input_size, self.output_size = input_size, output_size
        self.n_downsampling = int(n_downsampling)
        width = lambda i: min(ngf * 2**i, max_channels)  # noqa: E731
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, width(0), 7),
            norm_layer("instance", width(0)),
            nn.ReLU(True),
        ]
        for i in range(n_downsampling):
            layers += [
                nn.Conv2d(width(i), width(i + 1), 3, stride=2, padding=1),
                norm_layer("instance", width(i + 1)),
                nn.ReLU(True),
            ]
        layers += [ResidualBlock(width(n_downsampling), norm="instance") for _ in range(n_blocks)]
        for i in range(n_downsampling, 0, -1):
            layers += [
                nn.ConvTranspose2d(width(i), width(i - 1), 3, stride=2, padding=1, output_padding=1),
                norm_layer("instance", width(i - 1)),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width(0), out_channels, 7)]
        self.model = nn.Sequential(*layers)

    def forward(self, image: Tensor) -> Tensor:
        if image.dim() != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"the regressor expects (B, {self.in_channels}, H, W) images, got {tuple(image.shape)}")
        if not torch.isfinite(image).all():
            raise ValueError("the regressor's input image contains NaN or infinite values")
        if self.input_size is not None and image.shape[-2:] != (self.input_size, self.input_size):
            image = F.interpolate(
                image,
                size=(self.input_size,) * 2,
                mode="bilinear",
                align_corners=False,
                antialias=image.shape[-1] > self.input_size,
            )
        step = 2**self.n_downsampling
        if image.shape[-1] % step or image.shape[-2] % step:
            raise ValueError(
                f"image side {tuple(image.shape[-2:])} must divide by 2^n_downsampling = {step} (or set input_size)"
            )
        out = self.model(image)
        size = self.output_size
        if size is not None and out.shape[-2:] != (size, size):
            mode = "area" if out.shape[-1] > size else "bilinear"
            out = F.interpolate(
                out, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False})
            )
        return out
