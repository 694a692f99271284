"""ArcFace's improved ResNet (IResNet; Duta et al. 2020, as trained by insightface's ``arcface_torch``).

The module and parameter names follow ``arcface_torch/backbones/iresnet.py``, so its published ``backbone.pth``
state dicts (e.g. ``ms1mv3_arcface_r50_fp16/backbone.pth``, ``glint360k_cosface_r100_fp16_0.1/backbone.pth``)
load strictly: ``conv1, bn1, prelu``, ``layer1..4.<i>.{bn1, conv1, bn2, prelu, conv2, bn3}`` (+ ``downsample.0/1``
on each stage's first block), ``bn2``, ``fc`` (512 * 7 * 7 -> 512), ``features`` (BatchNorm1d).

Input: (B, 3, 112, 112) RGB aligned to ArcFace's 5-point template, normalised to [-1, 1] (``(x - 0.5) / 0.5``
for x in [0, 1]); output: the (B, 512) embedding (not normalised; compare with cosine similarity).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["IRESNET_LAYERS", "IBasicBlock", "IResNet", "iresnet"]

#: Blocks per stage of the published depths.
IRESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride) -> BN, plus the (projected) input."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels, eps=1e-5))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """The IResNet backbone (four stride-2 stages of :class:`IBasicBlock`, widths 64-128-256-512).

    Args:
        layers: blocks per stage (:data:`IRESNET_LAYERS`).
        num_features: embedding size (512).
        dropout: dropout before ``fc`` (0 at inference).
        input_size: the square input side (112: the ``fc`` expects a 7 x 7 map).
    """

    def __init__(self, layers: Sequence[int] = IRESNET_LAYERS[50], num_features: int = 512, dropout: float = 0.0,
                 input_size: int = 112) -> None:
        super().__init__()
        if len(layers) != 4 or input_size % 16:
            raise ValueError(f"expected 4 stages and an input side divisible by 16, got {layers}, {input_size}")
        self.input_size = input_size
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        widths, in_channels = (64, 128, 256, 512), 64
        for index, (width, blocks) in enumerate(zip(widths, layers), start=1):
            stage = [IBasicBlock(in_channels, width, stride=2)] + [IBasicBlock(width, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            in_channels = width
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        side = input_size // 16
        self.fc = nn.Linear(512 * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # fixed in arcface_torch too

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) normalised to [-1, 1] -> (B, num_features)."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"IResNet expects (B, 3, {self.input_size}, {self.input_size}), got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x).flatten(1))
        return self.features(self.fc(x))


def iresnet(depth: int = 50, **kwargs) -> IResNet:
    """IResNet-``depth`` (18, 34, 50, 100 or 200). kwargs: :class:`IResNet`'s."""
    if depth not in IRESNET_LAYERS:
        raise ValueError(f"depth must be one of {sorted(IRESNET_LAYERS)}, got {depth}")
    return IResNet(IRESNET_LAYERS[depth], **kwargs)
