"""Discriminators: pix2pix's PatchGAN, pix2pixHD's multi-scale PatchGAN and the U-Net discriminator with optional
regression heads.

- :class:`PatchDiscriminator`: Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial
  Networks" (pix2pix), §3.2.2 and appendix 6.1.2: C64-C128-C256-C512 (4x4 convolutions, stride 2 except the last
  two, LeakyReLU 0.2, no norm on the first layer), a 4x4 convolution to one logit per patch; with 3 strided layers
  every logit sees a 70x70 receptive field. DualStream's texture stream trains against it.
- :class:`MultiscaleDiscriminator`: Wang et al. 2018, "High-Resolution Image Synthesis and Semantic Manipulation with
  Conditional GANs" (pix2pixHD), §3.2: ``num_d`` PatchGANs of one architecture on the input and its 2x, 4x, ...
  average-pooled copies (3x3, stride 2, padding 1, ``count_include_pad=False``); each returns its intermediate
  activations too, for the feature-matching loss (§3.2 Eq. 4, :func:`facelab.losses.feature_matching_loss`).
- :class:`UNetDiscriminator`: Schönfeld, Schiele & Khoreva 2020, "A U-Net Based Discriminator for Generative
  Adversarial Networks" (CVPR): a BigGAN residual encoder whose bottleneck gives a global realism logit, and a
  residual decoder with skip connections from the encoder that gives a per-pixel realism logit map (§3.1, Fig. 2).
  Extra regression heads on the pooled bottleneck features serve e.g. FaceDet3D's expression discriminators, which
  output a realism score *and* the action units of their input (FaceDet3D Eq. 5, 17).

Shapes: ``B`` batch, ``C`` channels, ``H, W`` image size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from facelab.nn.blocks import Norm, norm_layer

__all__ = ["MultiscaleDiscriminator", "PatchDiscriminator", "UNetDiscriminator", "UNetDiscriminatorOutput",
           "conv_receptive_field"]


def _sn(module: nn.Module, enabled: bool) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of ``module``'s weight when ``enabled``."""
    return _spectral_norm(module) if enabled else module


def conv_receptive_field(module: nn.Module) -> int:
    """The receptive field (pixels along one axis) of a plain chain of convolutions, in module order.

    Walks the ``nn.Conv2d`` modules from the last to the first: ``r <- (r - 1) * stride + dilation * (k - 1) + 1``.
    Valid only for a sequential stack (no branches).
    """
    r = 1
    for conv in reversed([m for m in module.modules() if isinstance(m, nn.Conv2d)]):
        r = (r - 1) * conv.stride[0] + conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
    return r


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN discriminator (``NLayerDiscriminator``): one realism logit per overlapping patch.

    Widths ``base_channels * min(2 ** n, 8)``; ``n_layers`` strided 4x4 convolutions, one 4x4 stride-1 convolution
    and the 4x4 stride-1 logit convolution, all with padding 1. ``n_layers = 3`` is the 70x70 PatchGAN (receptive
    field 70, a (B, 1, 30, 30) map for 256x256 input); 1 is the 16x16 PatchGAN, 5 the 286x286 ImageGAN.

    For a conditional GAN feed ``cat([condition_image, image], dim=1)`` and set ``in_channels`` accordingly.

    Args:
        in_channels: input channels.
        base_channels: width of the first layer (64).
        n_layers: strided layers.
        norm: normalisation after every convolution except the first and the last.
        spectral_norm: spectral-normalise every convolution.

    Shapes:
        (B, in_channels, H, W) -> (B, 1, H', W') logits.
    """

    def __init__(self, in_channels: int = 6, base_channels: int = 64, n_layers: int = 3, norm: Norm = "batch",
                 spectral_norm: bool = False) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        bias = norm != "batch"
        layers: list[nn.Module] = [_sn(nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1), spectral_norm),
                  nn.LeakyReLU(0.2, True)]
        width = base_channels
        for n in range(1, n_layers + 1):
            out = base_channels * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [_sn(nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=bias), spectral_norm),
                       norm_layer(norm, out), nn.LeakyReLU(0.2, True)]
            width = out
        layers.append(_sn(nn.Conv2d(width, 1, 4, stride=1, padding=1), spectral_norm))
        self.model = nn.Sequential(*layers)

    @property
    def receptive_field(self) -> int:
        """Input pixels along one axis that one output logit sees (70 for ``n_layers = 3``)."""
        return conv_receptive_field(self.model)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"PatchDiscriminator expects (B, C, H, W), got {tuple(x.shape)}")
        return self.model(x)

    def features(self, x: Tensor) -> list[Tensor]:
        """The activation after every LeakyReLU, then the (B, 1, H', W') logits (last): pix2pixHD's
        ``getIntermFeat`` outputs, for feature matching."""
        if x.dim() != 4:
            raise ValueError(f"PatchDiscriminator expects (B, C, H, W), got {tuple(x.shape)}")
        out = []
        for layer in self.model:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                out.append(x)
        return [*out, x]


class MultiscaleDiscriminator(nn.Module):
    """pix2pixHD's multi-scale discriminator (module docstring): ``num_d`` :class:`PatchDiscriminator` s, the k-th
    on the input average-pooled k times.

    Args:
        in_channels: input channels (conditional: condition + image channels).
        base_channels: width of each PatchGAN's first layer (pix2pixHD: 64).
        n_layers: strided layers of each PatchGAN (3).
        num_d: scales (pix2pixHD: 3 at 1024x512, 2 at 512x256).
        norm: normalisation of the PatchGANs (pix2pixHD: instance).
        spectral_norm: spectral-normalise every convolution.

    Shapes:
        ``forward(x (B, C, H, W)) -> [features of scale 0, ..., of scale num_d - 1]``, each the list of
        :meth:`PatchDiscriminator.features` (logits last). :meth:`logits` gives the logits alone.
    """

    def __init__(self, in_channels: int = 6, base_channels: int = 64, n_layers: int = 3, num_d: int = 3,
                 norm: Norm = "instance", spectral_norm: bool = False) -> None:
        super().__init__()
        if num_d < 1:
            raise ValueError(f"num_d must be >= 1, got {num_d}")
        self.scales = nn.ModuleList(PatchDiscriminator(in_channels, base_channels, n_layers, norm, spectral_norm)
                                    for _ in range(num_d))

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        out = []
        for k, d in enumerate(self.scales):
            if k:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(d.features(x))
        return out

    @staticmethod
    def logits(features: list[list[Tensor]]) -> list[Tensor]:
        """The logits of every scale (for :func:`facelab.losses.generator_loss` / ``discriminator_loss``)."""
        return [f[-1] for f in features]


class _DBlock(nn.Module):
    """BigGAN's discriminator residual block (Brock et al. 2019): ``[relu] conv3x3 relu conv3x3 [avgpool]`` plus a
    shortcut (1x1 conv when the width changes or it down-samples; pooled after the conv, or before it on the
    non-pre-activated first block)."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, preactivation: bool,
                 spectral_norm: bool) -> None:
        super().__init__()
        self.downsample, self.preactivation = downsample, preactivation
        self.conv1 = _sn(nn.Conv2d(in_channels, out_channels, 3, padding=1), spectral_norm)
        self.conv2 = _sn(nn.Conv2d(out_channels, out_channels, 3, padding=1), spectral_norm)
        learnable = in_channels != out_channels or downsample
        self.shortcut = _sn(nn.Conv2d(in_channels, out_channels, 1), spectral_norm) if learnable else None

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self._pool(self.conv2(F.relu(self.conv1(h))))
        s = x
        if self.preactivation:
            s = self._pool(self.shortcut(s) if self.shortcut is not None else s)
        else:
            s = self._pool(s)
            s = self.shortcut(s) if self.shortcut is not None else s
        return h + s


class _GBlock(nn.Module):
    """The U-Net discriminator's decoder residual block (BigGAN's generator block without batch norm):
    ``relu upsample conv3x3 relu conv3x3`` plus an up-sampled shortcut (1x1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, spectral_norm: bool) -> None:
        super().__init__()
        self.conv1 = _sn(nn.Conv2d(in_channels, out_channels, 3, padding=1), spectral_norm)
        self.conv2 = _sn(nn.Conv2d(out_channels, out_channels, 3, padding=1), spectral_norm)
        self.shortcut = (_sn(nn.Conv2d(in_channels, out_channels, 1), spectral_norm)
                         if in_channels != out_channels else None)

    def forward(self, x: Tensor) -> Tensor:
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.conv1(F.interpolate(F.relu(x), scale_factor=2, mode="nearest"))))
        return h + (self.shortcut(up) if self.shortcut is not None else up)


@dataclass
class UNetDiscriminatorOutput:
    """What :class:`UNetDiscriminator` returns.

    Attributes:
        global_logit: (B,) image-level realism logit (encoder).
        pixel_logits: (B, 1, H, W) per-pixel realism logits (decoder).
        heads: one (B, N_k) regression output per configured head name, e.g. ``heads["au"]`` (B, 17).
    """

    global_logit: Tensor
    pixel_logits: Tensor
    heads: dict[str, Tensor] = field(default_factory=dict)


class UNetDiscriminator(nn.Module):
    """The U-Net discriminator of Schönfeld et al. 2020, with optional regression heads.

    Encoder: ``len(channels)`` BigGAN residual down-blocks (``e_l`` at H / 2^(l+1) with ``channels[l]``);
    global logit = linear(sum over H, W of relu(e_last)) (BigGAN's global sum pooling). Decoder: residual up-blocks
    from the bottleneck back to full resolution, each output but the last concatenated with the encoder feature
    of the same resolution; per-pixel logits = 1x1 conv(relu(.)). Each head ``name: N`` is a linear layer on the
    spatial *mean* of relu(e_last) (resolution-independent targets such as action units in [0, 1]); heads are not
    spectral-normalised (they regress, they do not judge realism).

    Args:
        in_channels: input channels (3 for images, the displacement map's channels for detail maps).
        channels: encoder widths per level (each level halves the size).
        heads: regression heads, name -> number of outputs (e.g. ``{"au": 17}``); None for none.
        spectral_norm: spectral-normalise the encoder, decoder and both logit layers (as in the paper).

    Shapes:
        (B, in_channels, H, W) -> :class:`UNetDiscriminatorOutput`; H, W divisible by ``2 ** len(channels)``.
    """

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (64, 128, 256, 512, 512),
                 heads: Mapping[str, int] | None = None, spectral_norm: bool = True) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or min(channels) <= 0:
            raise ValueError(f"UNetDiscriminator needs positive level widths, got {channels}")
        heads = dict(heads or {})
        if any(int(n) <= 0 for n in heads.values()):
            raise ValueError(f"every head needs a positive number of outputs, got {heads}")
        self.factor = 2 ** len(channels)
        widths = [in_channels, *channels]
        self.encoder = nn.ModuleList(_DBlock(a, b, downsample=True, preactivation=i > 0, spectral_norm=spectral_norm)
                                     for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])))
        self.global_head = _sn(nn.Linear(channels[-1], 1), spectral_norm)
        # decoder block l maps to channels[l - 1] (channels[0] for the last), input = previous output ++ skip
        dec_in = [channels[-1]] + [2 * c for c in reversed(channels[:-1])]
        dec_out = [*reversed(channels[:-1]), channels[0]]
        self.decoder = nn.ModuleList(_GBlock(a, b, spectral_norm) for a, b in zip(dec_in, dec_out))
        self.pixel_head = _sn(nn.Conv2d(channels[0], 1, 1), spectral_norm)
        self.heads = nn.ModuleDict({name: nn.Linear(channels[-1], int(n)) for name, n in heads.items()})

    def forward(self, x: Tensor) -> UNetDiscriminatorOutput:
        if x.dim() != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"UNetDiscriminator input must be (B, C, H, W) with H, W divisible by {self.factor}, "
                             f"got {tuple(x.shape)}")
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        bottleneck = F.relu(x)
        global_logit = self.global_head(bottleneck.sum(dim=(2, 3))).squeeze(1)
        pooled = bottleneck.mean(dim=(2, 3))
        heads = {name: head(pooled) for name, head in self.heads.items()}
        h = x
        for block, skip in zip(self.decoder, [*reversed(skips[:-1]), None]):
            h = block(h)
            if skip is not None:
                h = torch.cat([h, skip], dim=1)
        return UNetDiscriminatorOutput(global_logit=global_logit, pixel_logits=self.pixel_head(F.relu(h)),
                                       heads=heads)
