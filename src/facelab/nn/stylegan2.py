"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN", CVPR) with the
StyleGAN2-ADA recipe defaults (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data"),
float and channel-agnostic: any power-of-two resolution, any output channel count (1 for displacement maps), no
8-bit assumption and no output squashing (the output is linear, in the data's own units).

Usage::

    G = Generator(resolution=64, channels=1)              # small CPU defaults; paper: channel_base=32768
    D = Discriminator(resolution=64, channels=1)
    z = torch.randn(B, G.z_dim)
    ws = G.mapping(z, update_w_avg=True)                  # (B, G.n_latent, G.w_dim); training tracks w_avg
    ws = style_mix(ws, G.mapping(torch.randn_like(z)), prob=0.9)
    fake = G.synthesis(ws, noise_mode="random")           # (B, 1, 64, 64)
    logits = D(augment(fake))                             # (B,); augment = AdaptiveAugment (facelab.nn.ada)
    augment.update(D(augment(real)))                      # D step: ADA's p follows E[sign(D(real))]
    loss_g = facelab.losses.generator_loss(logits)        # non-saturating; R1: facelab.losses.LazyR1
    loss_pl = pl_reg(fake_pl, ws_pl) if pl_reg.due else pl_reg.step()  # PathLengthRegularizer, lazy (every 4)
    update_ema(G_ema, G, ema_beta(B, half_life_kimg=10))  # G_ema = copy.deepcopy(G).eval().requires_grad_(False)

Eq. / § numbers refer to the StyleGAN2 paper unless marked ADA. NVlabs' code is read, never copied.

Shapes: ``B`` batch, ``C`` channels, ``R`` resolution, ``L`` = ``n_latent`` styles, ``D`` = ``w_dim``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.errors import FacelabError
from facelab.nn.equalized import EqualConv2d, EqualLinear, bias_act
from facelab.nn.stylegan import MinibatchStdDev, ModulatedConv2d, NoiseInjection

__all__ = [
    "CheckpointMismatchError",
    "Discriminator",
    "Generator",
    "KimgCounter",
    "MappingNetwork",
    "NoiseMode",
    "PathLengthRegularizer",
    "SynthesisNetwork",
    "blur2d",
    "check_compatible_state_dict",
    "describe_state_dict",
    "ema_beta",
    "lazy_optimizer_params",
    "n_latent_for",
    "normalize_2nd_moment",
    "path_lengths",
    "style_mix",
    "update_ema",
]

NoiseMode = Literal["random", "const", "none"]
_NOISE_MODES = ("random", "const", "none")


class CheckpointMismatchError(FacelabError, ValueError):
    """A state dict of another architecture (resolution, channels, widths) than the module it is loaded into."""


# --------------------------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------------------------


def _check_resolution(resolution: int) -> int:
    log2 = int(round(math.log2(resolution))) if resolution > 0 else 0
    if resolution < 8 or 2 ** log2 != resolution:
        raise ValueError(f"resolution must be a power of two >= 8 (32..1024 in practice), got {resolution}")
    return log2


def n_latent_for(resolution: int) -> int:
    """The number of styles of the w+ space: ``2 log2(R) - 2`` (two per resolution from 8^2, one for the 4^2
    block, one for the last toOut layer; 18 at 1024^2)."""
    return 2 * _check_resolution(resolution) - 2


def _block_channels(resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """Feature maps per block resolution: ``min(channel_base // res, channel_max)`` (StyleGAN2-ADA's rule)."""
    log2 = _check_resolution(resolution)
    channels = {2 ** i: min(channel_base // 2 ** i, channel_max) for i in range(2, log2 + 1)}
    if min(channels.values()) < 1:
        raise ValueError(f"channel_base {channel_base} gives no feature maps at {resolution}^2 (needs >= resolution)")
    return channels


# --------------------------------------------------------------------------------------------------------------
# Mapping network (§2, Fig. 2; StyleGAN §2)
# --------------------------------------------------------------------------------------------------------------


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """``x / sqrt(mean(x^2) + eps)`` along ``dim`` (StyleGAN's input normalization of z)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def _check_finite(name: str, x: Tensor) -> None:
    """Clear error for NaN / Inf latents. Run in eval mode only (inference, projection, Detailed3DMM): on a GPU the
    test synchronises, and in training non-finite values come from the weights, which the loss guard catches."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values ({int((~torch.isfinite(x)).sum())} of {x.numel()})")


class MappingNetwork(nn.Module):
    """z -> w: z normalised to unit second moment, ``num_layers`` equalized-lr fully connected layers with leaky
    ReLU (lr multiplier 0.01), broadcast to ``num_ws`` styles; tracks ``w_avg`` (EMA of w, beta 0.995) for the
    truncation trick (StyleGAN §3.2 / StyleGAN2 Appendix B: ``w' = w_avg + psi (w - w_avg)``).

    Args:
        z_dim: latent size.
        w_dim: style size ``D``.
        num_ws: number of styles ``L`` to broadcast to.
        num_layers: fully connected layers (8).
        lr_multiplier: equalized-lr multiplier of every layer (0.01).
        w_avg_beta: EMA decay of ``w_avg`` per update.

    Shapes:
        ``forward(z (B, z_dim)) -> ws (B, L, D)``.
    """

    w_avg: Tensor

    def __init__(self, z_dim: int = 512, w_dim: int = 512, num_ws: int = 18, num_layers: int = 8,
                 lr_multiplier: float = 0.01, w_avg_beta: float = 0.995) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.z_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, w_dim, num_ws, w_avg_beta
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(*(EqualLinear(i, o, lr_multiplier=lr_multiplier, activation="leaky_relu")
                                      for i, o in zip(dims[:-1], dims[1:])))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_w_avg: bool = False) -> Tensor:
        """Args:
            z: (B, z_dim) latents.
            truncation_psi: 1 = no truncation, 0 = every style is ``w_avg``.
            truncation_cutoff: truncate only the first N styles (None: all).
            update_w_avg: move ``w_avg`` towards this batch's mean w (training only).

        Returns:
            (B, L, D).

        Raises:
            ValueError: z of the wrong shape, or (eval mode) with NaN / Inf values.
        """
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"mapping expects z of shape (B, {self.z_dim}), got {tuple(z.shape)}")
        if not self.training:  # see _check_finite
            _check_finite("z", z)
        w = self.layers(normalize_2nd_moment(z))
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = w[:, None].repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, w_avg_beta={self.w_avg_beta}"


# --------------------------------------------------------------------------------------------------------------
# Synthesis network (§2.2, Fig. 2d; skip architecture §4.1, Fig. 7b)
# --------------------------------------------------------------------------------------------------------------


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (Eq. 1-3, optionally up-sampling x2), per-pixel noise with a learned strength,
    bias and leaky ReLU (x sqrt(2)).

    ``noise_mode``: ``random`` fresh N(0, 1) per call, ``const`` a fixed map stored in the buffer ``noise_const``
    (deterministic synthesis, the projector's starting point), ``none`` no noise.

    Shapes:
        ``forward(x (B, I, H, W), w (B, D)) -> (B, O, R, R)`` with ``R`` = ``resolution``.
    """

    noise_const: Tensor

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, upsample: bool = False,
                 fused: bool | None = None) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, upsample=upsample, fused=fused)
        self.noise = NoiseInjection()
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: Tensor, w: Tensor, noise_mode: NoiseMode = "random", noise: Tensor | None = None) -> Tensor:
        x = self.conv(x, w)
        if noise is not None:  # explicit noise (e.g. optimised by a projector); broadcast over the batch
            x = self.noise(x, noise.expand(x.shape[0], 1, *x.shape[-2:]))
        elif noise_mode == "random":
            x = self.noise(x)
        elif noise_mode == "const":
            x = self.noise(x, self.noise_const.expand(x.shape[0], -1, -1, -1))
        return bias_act(x, self.bias, "leaky_relu")


class ToOut(nn.Module):
    """The toRGB layer for any channel count: modulated 1x1 convolution without demodulation, plus bias (§2.2).

    Shapes:
        ``forward(x (B, I, H, W), w (B, D)) -> (B, C, H, W)``.
    """

    def __init__(self, in_channels: int, channels: int, w_dim: int, fused: bool | None = None) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, channels, 1, w_dim, demodulate=False, fused=fused)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return bias_act(self.conv(x, w), self.bias)


def _upsample2x(x: Tensor) -> Tensor:
    """Bilinear x2 (half-pixel centres): StyleGAN2's [1, 3, 3, 1] FIR up-sampling with replicated borders."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (4^2: the learned constant input) two synthesis layers, the first
    up-sampling, and a toOut layer whose output is added to the up-sampled output of the previous block.

    Uses ``num_conv + 1`` consecutive styles; the toOut style is shared with the next block's first layer, as in
    StyleGAN2 (so the whole network uses ``2 log2(R) - 2``).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, channels: int,
                 fused: bool | None = None) -> None:
        super().__init__()
        self.resolution = resolution
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.conv0 = None
        else:
            self.const = None
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, upsample=True, fused=fused)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, fused=fused)
        self.to_out = ToOut(out_channels, channels, w_dim, fused=fused)
        self.num_conv = 1 if resolution == 4 else 2

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: NoiseMode,
                noise: list[Tensor | None]) -> tuple[Tensor, Tensor]:
        """ws: (B, num_conv + 1, D); noise: one entry per synthesis layer. Returns (features, output image)."""
        if self.conv0 is None:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode, noise[0])
        else:
            x = self.conv0(x, ws[:, 0], noise_mode, noise[0])
            x = self.conv1(x, ws[:, 1], noise_mode, noise[1])
        y = self.to_out(x, ws[:, self.num_conv])
        img = y if img is None else _upsample2x(img) + y  # skip architecture (Fig. 7b)
        return x, img


class SynthesisNetwork(nn.Module):
    """ws -> image: blocks at 4^2, 8^2, ..., R^2 with widths ``min(channel_base // res, channel_max)``.

    Args:
        resolution: output size ``R`` (power of two >= 8).
        channels: output channels ``C``.
        w_dim: style size ``D``.
        channel_base: width numerator (StyleGAN2 paper configs: 32768).
        channel_max: widest block (512).
        fused: modulated convs as grouped convolutions (True), in the equivalent non-fused form (False), or None:
            non-fused in training mode, grouped in eval mode (NVlabs' rule; see :class:`ModulatedConv2d`).

    Shapes:
        ``forward(ws (B, L, D)) -> (B, C, R, R)``.
    """

    def __init__(self, resolution: int, channels: int = 1, w_dim: int = 512, channel_base: int = 8192,
                 channel_max: int = 256, fused: bool | None = None) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        widths = _block_channels(resolution, channel_base, channel_max)
        self.resolution, self.channels, self.w_dim = resolution, channels, w_dim
        self.n_latent = n_latent_for(resolution)
        self.blocks = nn.ModuleDict()
        for res, width in widths.items():
            in_width = widths.get(res // 2, 0)
            self.blocks[f"b{res}"] = SynthesisBlock(in_width, width, w_dim, res, channels, fused=fused)

    def layers(self) -> list[SynthesisLayer]:
        """The synthesis layers in order (one noise input each)."""
        return [layer for block in self.blocks.values() for layer in (block.conv0, block.conv1) if layer is not None]

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """The shape ``(1, 1, r, r)`` of each layer's noise map, in the order of ``noise`` in :meth:`forward`."""
        return [(1, 1, layer.resolution, layer.resolution) for layer in self.layers()]

    def forward(self, ws: Tensor, noise_mode: NoiseMode = "random", noise: list[Tensor] | None = None) -> Tensor:
        """Args:
            ws: (B, L, D) styles (w+).
            noise_mode: ``random`` | ``const`` | ``none`` (see :class:`SynthesisLayer`).
            noise: optional explicit maps, one per layer, each (1 or B, 1, r, r) (:meth:`noise_shapes`); overrides
                ``noise_mode``.

        Returns:
            (B, C, R, R).

        Raises:
            ValueError: ws of the wrong shape, or (eval mode) with NaN / Inf values; a bad noise_mode / noise list.
        """
        if ws.dim() != 3 or ws.shape[1:] != (self.n_latent, self.w_dim):
            raise ValueError(f"synthesis expects ws of shape (B, {self.n_latent}, {self.w_dim}) at "
                             f"{self.resolution}^2, got {tuple(ws.shape)}")
        if noise_mode not in _NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {_NOISE_MODES}, got {noise_mode!r}")
        if not self.training:
            _check_finite("ws", ws)
        n_layers = len(self.layers())
        if noise is not None and len(noise) != n_layers:
            raise ValueError(f"noise must hold {n_layers} maps (noise_shapes()), got {len(noise)}")
        noise_list: list[Tensor | None] = list(noise) if noise is not None else [None] * n_layers
        x = img = None
        w_idx = layer_idx = 0
        for block in self.blocks.values():
            x, img = block(x, img, ws[:, w_idx:w_idx + block.num_conv + 1], noise_mode,
                           noise_list[layer_idx:layer_idx + block.num_conv])
            w_idx += block.num_conv
            layer_idx += block.num_conv
        return img


class Generator(nn.Module):
    """StyleGAN2's generator (config F, skip architecture), float and channel-agnostic.

    Args:
        resolution: output size ``R``, a power of two (32..1024; 8 and 16 work too, for tests).
        channels: output channels ``C`` (1 for displacement maps).
        z_dim: latent size (512).
        w_dim: style size ``D`` (512).
        mapping_layers: mapping network depth (8).
        channel_base: width numerator, block width ``min(channel_base // res, channel_max)``. The default 8192 with
            ``channel_max`` 256 is CPU-sized; the StyleGAN2 paper configs use 32768 and 512.
        channel_max: widest block.
        mapping_lr_multiplier: the mapping network's learning-rate multiplier (0.01).
        w_avg_beta: EMA decay of the tracked mean w (0.995).
        fused_modconv: modulated convs as grouped convolutions (True), in the equivalent non-fused form (False:
            input scaled by the styles, one shared convolution, output scaled by the demodulation), or None (default):
            non-fused in training mode, grouped in eval mode, as NVlabs does. Same result; measured on CPU
            the non-fused form trains the CPU-sized 64^2 generator 2.3x faster (forward + backward, B = 8).

    Attributes:
        n_latent: number of styles ``L = 2 log2(R) - 2``.
        w_avg: (D,) the tracked mean w (the mapping network's buffer).

    Shapes:
        ``forward(z (B, z_dim)) -> (B, C, R, R)``; ``mapping(z) -> ws (B, L, D)``; ``synthesis(ws) -> (B, C, R, R)``.
    """

    def __init__(self, resolution: int, channels: int = 1, z_dim: int = 512, w_dim: int = 512,
                 mapping_layers: int = 8, channel_base: int = 8192, channel_max: int = 256,
                 mapping_lr_multiplier: float = 0.01, w_avg_beta: float = 0.995,
                 fused_modconv: bool | None = None) -> None:
        super().__init__()
        self.resolution, self.channels, self.z_dim, self.w_dim = resolution, channels, z_dim, w_dim
        self.channel_base, self.channel_max = channel_base, channel_max
        self.synthesis = SynthesisNetwork(resolution, channels, w_dim, channel_base, channel_max, fused_modconv)
        self.n_latent = self.synthesis.n_latent
        self.mapping = MappingNetwork(z_dim, w_dim, self.n_latent, mapping_layers, mapping_lr_multiplier, w_avg_beta)
        self.register_load_state_dict_pre_hook(_compatibility_hook)

    @property
    def w_avg(self) -> Tensor:
        """(D,) the mean w tracked during training (truncation centre)."""
        return self.mapping.w_avg

    def forward(self, z: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: NoiseMode = "random", update_w_avg: bool = False) -> Tensor:
        """``synthesis(mapping(z, ...), noise_mode)``: (B, z_dim) -> (B, C, R, R)."""
        ws = self.mapping(z, truncation_psi, truncation_cutoff, update_w_avg)
        return self.synthesis(ws, noise_mode)

    def describe(self) -> str:
        return f"{self.resolution}^2, {self.channels}-channel"

    def extra_repr(self) -> str:
        return (f"resolution={self.resolution}, channels={self.channels}, n_latent={self.n_latent}, "
                f"channel_base={self.channel_base}, channel_max={self.channel_max}")


# --------------------------------------------------------------------------------------------------------------
# Discriminator (residual architecture, §4.1, Fig. 7c; minibatch stddev, ProGAN §3)
# --------------------------------------------------------------------------------------------------------------


def blur2d(x: Tensor, padding: int) -> Tensor:
    """Separable [1, 3, 3, 1] / 8 low-pass filter (StyleGAN2's resampling filter) with zero padding on every side.

    Shapes:
        (B, C, H, W) -> (B, C, H + 2 padding - 3, W + 2 padding - 3).
    """
    k1 = torch.tensor([1.0, 3.0, 3.0, 1.0], device=x.device, dtype=x.dtype) / 8
    kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 4, 4)
    return F.conv2d(F.pad(x, [padding] * 4), kernel, groups=x.shape[1])


class DownConv2d(nn.Module):
    """Low-pass then stride-2 equalized convolution: StyleGAN2's down-sampling conv (3x3: blur padded by 2 then
    conv without padding; 1x1: blur padded by 1), halving the size exactly."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: Literal["linear", "leaky_relu"] = "leaky_relu") -> None:
        super().__init__()
        self.blur_padding = (kernel_size + 1) // 2
        self.conv = EqualConv2d(in_channels, out_channels, kernel_size, stride=2, padding=0, bias=bias,
                                activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(blur2d(x, self.blur_padding))


class DiscriminatorBlock(nn.Module):
    """Residual block: ``(skip(x) + conv1(conv0(x))) / sqrt(2)``, conv0 3x3, conv1 3x3 down, skip 1x1 down without
    bias (Fig. 7c). The first block also holds the fromIn layer (1x1 from the data's channels)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, data_channels: int | None) -> None:
        super().__init__()
        self.from_in = None if data_channels is None else EqualConv2d(data_channels, in_channels, 1,
                                                                      activation="leaky_relu")
        self.conv0 = EqualConv2d(in_channels, mid_channels, 3, activation="leaky_relu")
        self.conv1 = DownConv2d(mid_channels, out_channels, 3)
        self.skip = DownConv2d(in_channels, out_channels, 1, bias=False, activation="linear")

    def forward(self, x: Tensor) -> Tensor:
        if self.from_in is not None:
            x = self.from_in(x)
        return (self.skip(x) + self.conv1(self.conv0(x))) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """StyleGAN2's residual discriminator for any channel count and resolution: fromIn at ``R``, residual blocks
    down to 4^2, then minibatch standard deviation, a 3x3 conv, a fully connected layer and the logit.

    Args:
        resolution: input size ``R`` (power of two >= 8).
        channels: input channels ``C``.
        channel_base: width numerator (block at res ``r`` has ``min(channel_base // r, channel_max)`` maps).
        channel_max: widest block.
        mbstd_group_size: minibatch-stddev group size (4; clipped to the batch; the batch must be divisible by it).
        mbstd_num_channels: minibatch-stddev feature maps (1).

    Shapes:
        (B, C, R, R) -> (B,) logits.
    """

    def __init__(self, resolution: int, channels: int = 1, channel_base: int = 8192, channel_max: int = 256,
                 mbstd_group_size: int = 4, mbstd_num_channels: int = 1) -> None:
        super().__init__()
        widths = _block_channels(resolution, channel_base, channel_max)
        self.resolution, self.channels = resolution, channels
        self.channel_base, self.channel_max = channel_base, channel_max
        self.blocks = nn.ModuleDict()
        for res in sorted(widths, reverse=True)[:-1]:  # R, R/2, ..., 8
            self.blocks[f"b{res}"] = DiscriminatorBlock(widths[res], widths[res], widths[res // 2],
                                                        channels if res == resolution else None)
        c4 = widths[4]
        self.mbstd = MinibatchStdDev(mbstd_group_size, mbstd_num_channels)
        self.conv = EqualConv2d(c4 + mbstd_num_channels, c4, 3, activation="leaky_relu")
        self.fc = EqualLinear(c4 * 16, c4, activation="leaky_relu")
        self.out = EqualLinear(c4, 1)
        self.register_load_state_dict_pre_hook(_compatibility_hook)

    def forward(self, x: Tensor) -> Tensor:
        expected = (self.channels, self.resolution, self.resolution)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"Discriminator expects (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        for block in self.blocks.values():
            x = block(x)
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1))).squeeze(1)

    def describe(self) -> str:
        return f"{self.resolution}^2, {self.channels}-channel"

    def extra_repr(self) -> str:
        return (f"resolution={self.resolution}, channels={self.channels}, channel_base={self.channel_base}, "
                f"channel_max={self.channel_max}")


# --------------------------------------------------------------------------------------------------------------
# Checkpoint compatibility
# --------------------------------------------------------------------------------------------------------------


def describe_state_dict(state_dict: Mapping[str, Tensor], prefix: str = "") -> str:
    """What a Generator / Discriminator state dict holds, from its keys and shapes: ``"64^2, 1-channel"``.

    Resolution = the largest block ``b<res>``; channels = the last toOut's output (generator) or the fromIn's input
    (discriminator).
    """
    resolutions = [int(m.group(1)) for key in state_dict if key.startswith(prefix)
                   for m in [re.search(r"(?:^|\.)b(\d+)\.", key[len(prefix):])] if m]
    if not resolutions:
        return "no StyleGAN2 blocks"
    res = max(resolutions)
    channels = "?"
    for key, value in state_dict.items():
        rest = key[len(prefix):] if key.startswith(prefix) else None
        if rest == f"synthesis.blocks.b{res}.to_out.conv.weight":
            channels = str(value.shape[0])
        elif rest == f"blocks.b{res}.from_in.weight":
            channels = str(value.shape[1])
    return f"{res}^2, {channels}-channel"


def check_compatible_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], prefix: str = "",
                                strict: bool = True) -> None:
    """Raise :class:`CheckpointMismatchError` naming both architectures when ``state_dict`` (entries under
    ``prefix``) does not fit ``module``: a shape differs, or (``strict``) keys are missing or unexpected.

    Generator and Discriminator run this automatically on ``load_state_dict`` (also inside a LightningModule's).
    """
    own = module.state_dict()
    theirs = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    shapes = [key for key, value in theirs.items() if key in own and tuple(value.shape) != tuple(own[key].shape)]
    missing = [key for key in own if key not in theirs]
    unexpected = [key for key in theirs if key not in own]
    if not shapes and not (strict and (missing or unexpected)):
        return
    name = type(module).__name__
    this = module.describe() if hasattr(module, "describe") else name
    detail = (f"{len(shapes)} shape mismatches (e.g. {shapes[0]}: checkpoint {tuple(theirs[shapes[0]].shape)}, "
              f"model {tuple(own[shapes[0]].shape)})" if shapes else
              f"{len(missing)} missing and {len(unexpected)} unexpected keys (e.g. {(missing + unexpected)[0]})")
    raise CheckpointMismatchError(
        f"the checkpoint's {name}{' at ' + repr(prefix.rstrip('.')) if prefix else ''} is "
        f"{describe_state_dict(state_dict, prefix)} but this {name} is {this}; build it with the checkpoint's "
        f"resolution / channels / channel_base / channel_max ({detail})")


def _compatibility_hook(module: nn.Module, state_dict, prefix, local_metadata, strict, missing_keys,
                        unexpected_keys, error_msgs) -> None:
    check_compatible_state_dict(module, state_dict, prefix, strict)


# --------------------------------------------------------------------------------------------------------------
# Training recipe pieces
# --------------------------------------------------------------------------------------------------------------


def style_mix(ws: Tensor, ws_other: Tensor, prob: float = 0.9, generator: torch.Generator | None = None) -> Tensor:
    """Style mixing regularisation (StyleGAN §3.1; 0.9 in StyleGAN2): with probability ``prob`` a sample takes the
    styles from a random crossover ``k in [1, L)`` on from ``ws_other`` (NVlabs draws one crossover per batch; here
    each sample draws its own, the same distribution per sample).

    Args:
        ws: (B, L, D) styles of the first latents.
        ws_other: (B, L, D) styles of independent latents.
        prob: mixing probability.

    Returns:
        (B, L, D): ``ws[b, :k]`` then ``ws_other[b, k:]`` for mixed samples, ``ws[b]`` otherwise.
    """
    if ws.shape != ws_other.shape or ws.dim() != 3:
        raise ValueError(f"style_mix expects two (B, L, D) tensors, got {tuple(ws.shape)} and {tuple(ws_other.shape)}")
    b, n = ws.shape[:2]
    if prob <= 0 or n < 2:
        return ws
    device = generator.device if generator is not None else ws.device
    cutoff = torch.randint(1, n, (b,), generator=generator, device=device)
    mixed = torch.rand(b, generator=generator, device=device) < prob
    cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, n)).to(ws.device)
    take_other = torch.arange(n, device=ws.device)[None, :] >= cutoff[:, None]  # (B, L)
    return torch.where(take_other[..., None], ws_other, ws)


def path_lengths(fake: Tensor, ws: Tensor, noise: Tensor | None = None) -> Tensor:
    """Per-sample Jacobian-vector lengths ``||J_w^T y||_2`` (StyleGAN2 Eq. 4), ``y ~ N(0, I) / sqrt(H W)``.

    ``J_w^T y`` is the gradient of ``sum(G(w) * y)`` with respect to the (B, L, D) ws; its square is summed over
    ``D`` and averaged over the ``L`` styles (as NVlabs), then square-rooted.

    Args:
        fake: (B, C, H, W) = G(ws), computed from ``ws`` with grad.
        ws: (B, L, D).
        noise: optional (B, C, H, W) y (default: fresh N(0, 1) / sqrt(H W)).

    Returns:
        (B,) lengths, differentiable (``create_graph``).
    """
    if noise is None:
        noise = torch.randn_like(fake) / math.sqrt(fake.shape[-2] * fake.shape[-1])
    (grad,) = torch.autograd.grad((fake * noise).sum(), ws, create_graph=True)
    return grad.square().sum(dim=2).mean(dim=1).sqrt()


class PathLengthRegularizer(nn.Module):
    """Lazy path-length regularisation (StyleGAN2 §3.2, Eq. 4): ``E (||J_w^T y|| - a)^2`` with ``a`` the EMA of
    the lengths (decay 0.01), every ``interval`` G steps, scaled by ``weight * interval`` (lazy regularisation,
    §3.1). Under torch.distributed the batch mean of the lengths is averaged over ranks before it updates ``a``.

    Call :attr:`due` before generating the regularisation batch (of :meth:`batch_size` samples, "pl batch
    shrink" 2), then ``forward(fake, ws)`` on due steps; the counter advances once per :meth:`step` / forward.

    Args:
        weight: ``pl_weight`` (2).
        interval: G steps between evaluations (4; 1 = not lazy; weight 0 disables it).
        decay: EMA decay of the mean length (0.01).
        batch_shrink: the regularisation batch is ``batch // batch_shrink`` (2).
    """

    pl_mean: Tensor
    steps: Tensor

    def __init__(self, weight: float = 2.0, interval: int = 4, decay: float = 0.01, batch_shrink: int = 2) -> None:
        super().__init__()
        if interval < 1 or batch_shrink < 1:
            raise ValueError(f"interval and batch_shrink must be >= 1, got {interval}, {batch_shrink}")
        self.weight, self.interval, self.decay, self.batch_shrink = weight, interval, decay, batch_shrink
        self.register_buffer("pl_mean", torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def due(self) -> bool:
        """Whether this G step regularises."""
        return self.weight != 0 and int(self.steps) % self.interval == 0

    def batch_size(self, batch: int) -> int:
        """The regularisation batch: ``max(1, batch // batch_shrink)``."""
        return max(1, batch // self.batch_shrink)

    def optimizer_ratio(self) -> float:
        """``interval / (interval + 1)`` (lazy regularisation's Adam correction, see :func:`lazy_optimizer_params`)."""
        return self.interval / (self.interval + 1) if self.interval > 1 and self.weight != 0 else 1.0

    def step(self) -> None:
        """Advance the G-step counter without regularising (a step that was not due)."""
        self.steps += 1

    def forward(self, fake: Tensor, ws: Tensor) -> Tensor:
        """Args: fake: (B, C, H, W) = G.synthesis(ws). ws: (B, L, D) with grad.

        Returns:
            Scalar ``weight * interval * mean_b (length_b - a)^2`` (a updated with this batch first, detached).
        """
        self.steps += 1
        lengths = path_lengths(fake, ws)
        batch_mean = lengths.detach().mean()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_mean)
            batch_mean = batch_mean / torch.distributed.get_world_size()
        with torch.no_grad():
            self.pl_mean.copy_(self.pl_mean.lerp(batch_mean.to(self.pl_mean.dtype), self.decay))
        penalty = (lengths - self.pl_mean.to(lengths.dtype)).square().mean()  # Eq. 4
        return self.weight * self.interval * penalty


def lazy_optimizer_params(lr: float, betas: tuple[float, float], interval: int) -> tuple[float, tuple[float, float]]:
    """Adam settings for a network with lazy regularisation every ``interval`` steps (StyleGAN2 Appendix B):
    ``lr * c`` and ``beta ** c`` with ``c = interval / (interval + 1)``; unchanged when ``interval`` <= 1."""
    if interval <= 1:
        return lr, betas
    c = interval / (interval + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)


def ema_beta(batch_size: int, half_life_kimg: float = 10.0, rampup: float | None = None,
             cur_nimg: int = 0) -> float:
    """The EMA decay per step for a half-life of ``half_life_kimg`` thousand images (StyleGAN2-ADA's G_ema):
    ``0.5 ** (batch_size / (1000 half_life_kimg))``; with ``rampup`` the half-life is at most
    ``rampup * cur_nimg`` images (ADA's 0.05 for small data: a short memory early on).

    Args:
        batch_size: images per step over all processes.
        half_life_kimg: ``ema_kimg`` (10 in the paper configs).
        rampup: None or the ramp-up ratio.
        cur_nimg: images shown so far.
    """
    ema_nimg = half_life_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema_module: nn.Module, module: nn.Module, beta: float) -> None:
    """``p_ema <- beta p_ema + (1 - beta) p`` for every parameter; buffers (w_avg, noise_const, ...) copied.

    The two modules must have the same structure (``ema_module = copy.deepcopy(module)``).
    """
    for p_ema, p in zip(ema_module.parameters(), module.parameters(), strict=True):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema_module.buffers(), module.buffers(), strict=True):
        b_ema.copy_(b)


class KimgCounter(nn.Module):
    """Images shown to the discriminator (StyleGAN's progress unit, kimg = 1000 images), kept as a buffer so that
    checkpoints resume the schedule (ADA, EMA ramp-up, ticks).

    Call :meth:`advance` with the global batch (all processes) once per step; :meth:`crossed` says whether that
    step passed a multiple of ``every_kimg`` (for kimg-based logging / snapshots).
    """

    nimg: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("nimg", torch.zeros((), dtype=torch.long))
        self._last = 0

    @property
    def kimg(self) -> float:
        """Thousands of images shown so far."""
        return int(self.nimg) / 1000

    def advance(self, batch_size: int) -> float:
        """Count ``batch_size`` more images; returns the new kimg."""
        self._last = int(self.nimg)
        self.nimg += batch_size
        return self.kimg

    def crossed(self, every_kimg: float) -> bool:
        """Whether the last :meth:`advance` crossed a multiple of ``every_kimg``."""
        every = max(1, int(round(every_kimg * 1000)))
        return int(self.nimg) // every > self._last // every
