"""DualStream's texture stream (paper §III-B, Eq. 9-14): SSRPM, SRSM and the texture generator ``G_t``.

The generator turns the unwrapped linear 3DMM albedo map ``I_ua`` (canonical UV layout, unreal texture) into an
albedo map ``Î_a`` with the input photo ``I_o``'s appearance, region by region:

* :class:`SSRPM` (Shared Semantic Region Prediction Module, Eq. 9-11) predicts ``n`` soft semantic regions shared by
  the mid-level features of ``I_o`` and ``I_ua``: both are aligned by a filter group each and added (``X'``), a conv
  with ``n`` filters gives ``F_s(X')``, a landmark branch ``F_a([K(I_o), I_o])`` (68 landmark heatmaps concatenated
  with the image) gives initial regions ``X_a`` added with a learnable scale ``kappa`` (initialised to 1e-2), and a
  softmax over the ``n`` channels gives ``X_s``.
* :class:`SRSM` (Semantic Region Stylization Mechanism, Eq. 12-14): region-wise instance normalisation of the albedo
  features, with per-region ``(alpha_j, beta_j)`` computed from the image features by two convolutions.
* :class:`TextureGenerator`: a U-Net whose skip connections *add* layer ``l`` to layer ``h - l`` (no
  concatenation), with SRSM in the middle layers; :class:`GlobalAdaIN` replaces SRSM for the paper's ablation.

Reconstructed equations (the OCR of the paper lost them; what the surrounding text fixes):

* Eq. 12, the activation maps: "SRSM receives the mid-level feature maps ``X^u`` and ``X^o`` of ``I_ua`` and
  ``I_o`` ... It first calculates the corresponding activation maps ``X^m_u`` and ``X^m_o`` with respect to them".
  We read it as one learned layer each, ``X^m_u = ReLU(conv_u(X^u))``, ``X^m_o = ReLU(conv_o(X^o))`` (3x3), the
  inputs of Eq. 13 ``X^s_u = X^m_u ⊙ X_s``, ``X^s_o = X^m_o ⊙ X_s`` (per region ``j``: the features weighted by
  ``X_s[j]``). The same number also precedes ``Î_a = G_t(I_ua, I_o)`` in the OCR (the mapping this module is).
* Eq. 14 keeps its printed form ``X_r = sum_j [alpha_j (X^s_u,j - mu(X^s_u,j)) / sqrt(sigma^2(X^s_u,j) + eps)
  + beta_j] ⊙ X_s[j]`` with ``mu``, ``sigma`` the instance-norm statistics *inside region j* (the soft-mask-weighted
  mean and variance over ``H, W``). ``alpha_j, beta_j`` are "extracted from ``X^s_o`` by two convolutional layers":
  a conv each over ``X^m_o``, averaged over region ``j`` (soft-mask weights), so each region gets one style code per
  channel (as in SEAN's per-region style codes). ``alpha = 1 + gamma`` (StarGAN-v2 / SPADE ``(1 + gamma)``
  convention), so with one region covering everything SRSM is exactly instance-norm AdaIN
  (:func:`facelab.nn.conditioning.adain`) with the image-averaged ``(gamma, beta)`` (a unit test checks it).

It is computed without materialising ``n`` copies of the features: ``X_r = x * sum_j a_j X_s[j] + sum_j b_j
X_s[j]`` with ``a_j = alpha_j / sigma_j`` and ``b_j = beta_j - a_j mu_j`` (per sample, region and channel), so the
memory is that of one feature map whatever ``n``.

Shapes: ``B`` batch, ``C`` channels, ``n`` regions, ``H, W`` image size, ``S`` UV size, ``h, w`` feature size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SRSM",
    "SSRPM",
    "GlobalAdaIN",
    "StylizationKind",
    "TextureGenerator",
    "landmark_heatmaps",
    "region_instance_norm",
    "region_mean",
]

StylizationKind = Literal["srsm", "adain"]


def landmark_heatmaps(landmarks_pix: Tensor, size: tuple[int, int], sigma: float = 2.0) -> Tensor:
    """Gaussian heatmaps of landmarks, one channel per landmark (the ``K(I_o)`` input of Eq. 9).

    The paper takes the 68 heatmaps of a stacked-hourglass 3D landmark detector (FAN); we take the 68 landmarks
    themselves (the synthetic truth, or any detector's output, e.g. FAN through ``facelab.data.landmarks``) and draw
    the detector's heatmap target, ``exp(-|p - l|^2 / (2 sigma^2))``.

    Args:
        landmarks_pix: (B, L, 2) pixel coordinates ``(u, v)`` (origin top-left corner, pixel centres at +0.5).
        size: ``(H, W)`` of the heatmaps.
        sigma: Gaussian width in pixels.

    Returns:
        (B, L, H, W) in [0, 1].
    """
    if landmarks_pix.dim() != 3 or landmarks_pix.shape[-1] != 2:
        raise ValueError(f"landmarks_pix must be (B, L, 2), got {tuple(landmarks_pix.shape)}")
    h, w = size
    ys = torch.arange(h, device=landmarks_pix.device, dtype=landmarks_pix.dtype) + 0.5
    xs = torch.arange(w, device=landmarks_pix.device, dtype=landmarks_pix.dtype) + 0.5
    dx = (xs[None, None, :] - landmarks_pix[..., 0:1]) ** 2  # (B, L, W)
    dy = (ys[None, None, :] - landmarks_pix[..., 1:2]) ** 2  # (B, L, H)
    return torch.exp(-(dy[..., :, None] + dx[..., None, :]) / (2.0 * sigma**2))


def region_mean(x: Tensor, regions: Tensor, eps: float = 1e-6) -> Tensor:
    """Soft-mask-weighted mean of features over each region.

    Args:
        x: (B, C, h, w) features. regions: (B, n, h, w) non-negative soft masks.

    Returns:
        (B, n, C): ``sum_hw x X_s[j] / sum_hw X_s[j]``.
    """
    mass = regions.sum(dim=(2, 3))[..., None]  # (B, n, 1)
    return torch.einsum("bchw,bnhw->bnc", x, regions) / (mass + eps)


def region_instance_norm(x: Tensor, regions: Tensor, alpha: Tensor, beta: Tensor, eps: float = 1e-5) -> Tensor:
    """Region-wise instance normalisation with per-region affine parameters (DualStream Eq. 13-14).

    ``X_r = sum_j [alpha_j (x - mu_j) / sqrt(sigma_j^2 + eps) + beta_j] ⊙ X_s[j]`` with ``mu_j``, ``sigma_j^2`` the
    mean and (biased) variance of ``x`` over ``H, W`` weighted by region ``j``'s soft mask (Eq. 13's ``X^s_u,j``),
    evaluated as ``x * sum_j a_j X_s[j] + sum_j b_j X_s[j]``.

    Args:
        x: (B, C, h, w) features (the albedo activation maps ``X^m_u``).
        regions: (B, n, h, w) soft regions ``X_s`` (softmax over ``n``: they sum to 1 at each position).
        alpha, beta: (B, n, C) per-region scale and shift.
        eps: added to the variance.

    Returns:
        (B, C, h, w).
    """
    b, c = x.shape[:2]
    n = regions.shape[1]
    if regions.dim() != 4 or regions.shape[0] != b or regions.shape[2:] != x.shape[2:]:
        raise ValueError(f"regions must be (B, n, h, w) matching x {tuple(x.shape)}, got {tuple(regions.shape)}")
    if alpha.shape != (b, n, c) or beta.shape != (b, n, c):
        raise ValueError(f"alpha and beta must be (B, n, C) = {(b, n, c)}, got {tuple(alpha.shape)}, "
                         f"{tuple(beta.shape)}")
    mu = region_mean(x, regions)  # (B, n, C)
    var = (region_mean(x * x, regions) - mu * mu).clamp_min(0.0)
    scale = alpha * torch.rsqrt(var + eps)
    shift = beta - scale * mu
    return x * torch.einsum("bnc,bnhw->bchw", scale, regions) + torch.einsum("bnc,bnhw->bchw", shift, regions)


def _conv_block(cin: int, cout: int, stride: int = 1, norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.InstanceNorm2d(cout, affine=True))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class SSRPM(nn.Module):
    """Shared Semantic Region Prediction Module (DualStream Eq. 9-11, Fig. 4).

    Args:
        image_channels: channels of the image features ``X_o``.
        albedo_channels: channels of the albedo-map features ``X_u``.
        hidden_channels: channels of the aligned joint features ``X'``.
        num_regions: ``n`` (16 in the paper; the ablation tries 8, 16, 32).
        num_landmarks: heatmap channels of the landmark branch (68).
        landmark_hidden: width of the landmark branch ``F_a``.
        kappa_init: initial landmark-branch scale ``kappa`` (1e-2).

    Shapes:
        ``forward(x_o (B, C_o, h, w), x_u (B, C_u, h, w), heatmaps (B, L, H, W), image (B, 3, H, W))`` ->
        (B, n, h, w) region probabilities (softmax over ``n``).
    """

    def __init__(self, image_channels: int, albedo_channels: int, hidden_channels: int = 128, num_regions: int = 16,
                 num_landmarks: int = 68, landmark_hidden: int = 64, kappa_init: float = 1e-2) -> None:
        super().__init__()
        if num_regions < 1:
            raise ValueError(f"num_regions must be >= 1, got {num_regions}")
        self.num_regions, self.num_landmarks = num_regions, num_landmarks
        # "align their mid-level features X_o and X_u using two groups of filters" (before Eq. 9)
        self.align_image = nn.Sequential(_conv_block(image_channels, hidden_channels),
                                         nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1))
        self.align_albedo = nn.Sequential(_conv_block(albedo_channels, hidden_channels),
                                          nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1))
        self.regions = nn.Conv2d(hidden_channels, num_regions, 3, padding=1)  # F_s: n filters
        # F_a of Eq. 9: [K(I_o), I_o] -> n channels (strided convs down to the feature size, then resized)
        self.landmark_branch = nn.Sequential(
            _conv_block(num_landmarks + 3, landmark_hidden, stride=2, norm=False),
            _conv_block(landmark_hidden, landmark_hidden, stride=2),
            nn.Conv2d(landmark_hidden, num_regions, 3, padding=1))
        self.kappa = nn.Parameter(torch.tensor(float(kappa_init)))

    def initial_regions(self, heatmaps: Tensor, image: Tensor, size: tuple[int, int]) -> Tensor:
        """``X_a = F_a[K(I_o), I_o]`` (Eq. 9) at feature size ``size``: (B, n, h, w)."""
        if heatmaps.shape[1] != self.num_landmarks or heatmaps.shape[2:] != image.shape[2:]:
            raise ValueError(f"SSRPM expects ({self.num_landmarks}, H, W) heatmaps at the image size "
                             f"{tuple(image.shape[2:])}, got {tuple(heatmaps.shape[1:])}")
        x_a = self.landmark_branch(torch.cat([heatmaps, image], dim=1))
        return F.interpolate(x_a, size=size, mode="bilinear", align_corners=False)

    def forward(self, x_o: Tensor, x_u: Tensor, heatmaps: Tensor, image: Tensor) -> Tensor:
        size = tuple(x_u.shape[2:])
        if x_o.shape[2:] != x_u.shape[2:]:
            x_o = F.interpolate(x_o, size=size, mode="bilinear", align_corners=False)
        joint = self.align_image(x_o) + self.align_albedo(x_u)  # X'
        logits = self.regions(joint) + self.kappa * self.initial_regions(heatmaps, image, size)  # Eq. 10
        return torch.softmax(logits, dim=1)  # Eq. 11


class _StyleHead(nn.Module):
    """The activation maps (Eq. 12) and the two convolutions of ``(gamma, beta)`` shared by SRSM and GlobalAdaIN."""

    def __init__(self, albedo_channels: int, image_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.act_albedo = nn.Sequential(nn.Conv2d(albedo_channels, albedo_channels, 3, padding=1), nn.ReLU())
        self.act_image = nn.Sequential(nn.Conv2d(image_channels, hidden_channels, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden_channels, albedo_channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden_channels, albedo_channels, 3, padding=1)
        for conv in (self.gamma, self.beta):  # start near plain instance norm, (1 + ~0) IN(x) + ~0 (not exactly 0:
            nn.init.normal_(conv.weight, std=1e-3)  # the image branch must receive gradients from the first step)
            nn.init.zeros_(conv.bias)

    def activations(self, x_u: Tensor, x_o: Tensor) -> tuple[Tensor, Tensor]:
        if x_o.shape[2:] != x_u.shape[2:]:
            x_o = F.interpolate(x_o, size=tuple(x_u.shape[2:]), mode="bilinear", align_corners=False)
        return self.act_albedo(x_u), self.act_image(x_o)  # X^m_u, X^m_o (Eq. 12)


class SRSM(_StyleHead):
    """Semantic Region Stylization Mechanism (DualStream Eq. 12-14, Fig. 5): region-adaptive AdaIN.

    Args:
        albedo_channels: channels ``C`` of the albedo features (modulated).
        image_channels: channels of the image features (the style source).
        hidden_channels: width of the image activation maps (128, SPADE's hidden width).
        eps: variance epsilon.

    Shapes:
        ``forward(x_u (B, C, h, w), x_o (B, C_o, h', w'), regions (B, n, h, w))`` -> (B, C, h, w). Image
        features of another size are resized bilinearly to ``(h, w)``.
    """

    def __init__(self, albedo_channels: int, image_channels: int, hidden_channels: int = 128,
                 eps: float = 1e-5) -> None:
        super().__init__(albedo_channels, image_channels, hidden_channels)
        self.eps = eps

    def region_codes(self, image_act: Tensor, regions: Tensor) -> tuple[Tensor, Tensor]:
        """Per-region ``(alpha_j, beta_j)``, each (B, n, C): the two convs averaged inside each region."""
        alpha = 1.0 + region_mean(self.gamma(image_act), regions)
        beta = region_mean(self.beta(image_act), regions)
        return alpha, beta

    def forward(self, x_u: Tensor, x_o: Tensor, regions: Tensor) -> Tensor:
        albedo_act, image_act = self.activations(x_u, x_o)
        alpha, beta = self.region_codes(image_act, regions)
        return region_instance_norm(albedo_act, regions, alpha, beta, self.eps)  # Eq. 13-14


class GlobalAdaIN(_StyleHead):
    """The ablation of SRSM (paper Table II "w/o SRSM"): one global AdaIN, ``(gamma, beta)`` from the same two
    convolutions averaged over the whole image features; the regions are ignored. Same signature as :class:`SRSM`.
    """

    def __init__(self, albedo_channels: int, image_channels: int, hidden_channels: int = 128,
                 eps: float = 1e-5) -> None:
        super().__init__(albedo_channels, image_channels, hidden_channels)
        self.eps = eps

    def forward(self, x_u: Tensor, x_o: Tensor, regions: Tensor | None = None) -> Tensor:
        albedo_act, image_act = self.activations(x_u, x_o)
        gamma = self.gamma(image_act).mean(dim=(2, 3))
        beta = self.beta(image_act).mean(dim=(2, 3))
        return (1 + gamma[..., None, None]) * F.instance_norm(albedo_act, eps=self.eps) + beta[..., None, None]


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int, norm: bool = True) -> None:
        super().__init__()
        self.block = _conv_block(cin, cout, stride=2, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class _Up(nn.Module):
    """Bilinear x2 upsampling, conv-IN-LeakyReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block = _conv_block(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))


class TextureGenerator(nn.Module):
    """``Î_a = G_t(I_ua, I_o)``: U-Net with additive skips and SRSM in the middle layers (DualStream §III-B2).

    The albedo map goes down through ``D = len(channels)`` strided layers (``e_1 .. e_D``) and back up through ``D``
    upsampling layers; the network has ``h = 2D`` layers and layer ``l`` is *added* to the input of layer ``h - l``
    (``d_l = up_l(d_{l+1} + e_l)``-style, channels mirrored, no concatenation). The outermost skip (layer 0, the
    input map itself, to layer ``h``) makes the output ``sigmoid(logit(I_ua) + .)`` with ``input_skip`` (the
    generator predicts the correction to the linear albedo, added in logit space so the output stays in (0, 1)
    with gradients everywhere). An image encoder with the same
    widths gives the image features ``X_o`` per level (down to the deepest level SSRPM or SRSM reads); SSRPM
    runs on the features of level ``region_level`` (``X_o`` and the albedo encoder's ``X_u``); SRSM (or
    :class:`GlobalAdaIN` with ``stylization="adain"``) modulates the decoder features at ``stylize_levels``
    with the regions resized to each level.

    Args:
        channels: encoder widths per level (the decoder mirrors them).
        num_regions: ``n`` of SSRPM (16).
        stylization: ``"srsm"`` (the paper) or ``"adain"`` (the ablation).
        region_level: encoder level (1-based, resolution ``S / 2^level``) whose features SSRPM reads.
        stylize_levels: decoder levels (1-based like the encoder's) followed by SRSM: the middle ones by default.
        num_landmarks: landmark heatmap channels (68).
        hidden_channels: width of SSRPM's joint features and of SRSM's image activations.
        kappa_init: SSRPM's landmark-branch scale at initialisation (1e-2).
        input_skip: the outermost additive skip (output = ``sigmoid(logit(input map) + correction)``).

    Shapes:
        ``forward(albedo_map (B, 3, S, S), image (B, 3, H, W), heatmaps (B, L, H, W))`` -> ``(texture (B, 3, S, S)
        in [0, 1], regions (B, n, S / 2^region_level, ...))``. ``S`` and ``H`` must be divisible by ``2^D``.
    """

    def __init__(self, channels: Sequence[int] = (64, 128, 256, 256, 256), num_regions: int = 16,
                 stylization: StylizationKind = "srsm", region_level: int = 3,
                 stylize_levels: Sequence[int] = (3, 4), num_landmarks: int = 68, hidden_channels: int = 128,
                 kappa_init: float = 1e-2, input_skip: bool = True) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        depth = len(channels)
        if depth < 2:
            raise ValueError(f"channels needs >= 2 levels, got {channels}")
        if not 1 <= region_level <= depth or any(not 1 <= lv <= depth for lv in stylize_levels):
            raise ValueError(f"region_level {region_level} and stylize_levels {list(stylize_levels)} must be in "
                             f"1..{depth} (one per entry of channels)")
        if stylization not in ("srsm", "adain"):
            raise ValueError(f"stylization must be 'srsm' or 'adain', got {stylization!r}")
        self.depth, self.channels = depth, channels
        self.region_level, self.stylize_levels = int(region_level), tuple(int(lv) for lv in stylize_levels)
        self.stylization, self.input_skip = stylization, bool(input_skip)
        widths = [3, *channels]
        self.albedo_encoder = nn.ModuleList(_Down(widths[i], widths[i + 1], norm=i > 0) for i in range(depth))
        image_depth = max(self.region_level, *self.stylize_levels)  # deeper image features would be unused
        self.image_encoder = nn.ModuleList(_Down(widths[i], widths[i + 1], norm=i > 0) for i in range(image_depth))
        # decoder level l (1..D) maps width channels[l-1] at S/2^l to channels[l-2] at S/2^(l-1)
        self.decoder = nn.ModuleList(_Up(channels[lv - 1], channels[lv - 2] if lv > 1 else channels[0])
                                     for lv in range(1, depth + 1))
        self.ssrpm = SSRPM(channels[region_level - 1], channels[region_level - 1], hidden_channels, num_regions,
                           num_landmarks, kappa_init=kappa_init)
        style = SRSM if stylization == "srsm" else GlobalAdaIN
        self.stylize = nn.ModuleDict({str(lv): style(channels[lv - 1], channels[lv - 1], hidden_channels)
                                      for lv in self.stylize_levels})
        self.head = nn.Conv2d(channels[0], 3, 3, padding=1)
        if self.input_skip:  # start (almost) at the linear albedo: a near-zero correction that still passes
            nn.init.normal_(self.head.weight, std=1e-3)  # gradients to every layer from the first step
            nn.init.zeros_(self.head.bias)

    @staticmethod
    def additive_skip(x: Tensor, skip: Tensor) -> Tensor:
        """The U-Net skip of ``G_t``: layer ``l``'s output added to layer ``h - l``'s input (all channels)."""
        if x.shape != skip.shape:
            raise ValueError(f"additive skip needs equal shapes, got {tuple(x.shape)} and {tuple(skip.shape)}")
        return x + skip

    def _check(self, albedo_map: Tensor, image: Tensor, heatmaps: Tensor) -> None:
        k = 2**self.depth
        if albedo_map.dim() != 4 or albedo_map.shape[1] != 3 or image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"TextureGenerator expects (B, 3, S, S) albedo maps and (B, 3, H, W) images, got "
                             f"{tuple(albedo_map.shape)} and {tuple(image.shape)}")
        if any(s % k for s in (*albedo_map.shape[2:], *image.shape[2:])):
            raise ValueError(f"albedo map {tuple(albedo_map.shape[2:])} and image {tuple(image.shape[2:])} sizes "
                             f"must be divisible by 2^{self.depth} = {k} (the generator's depth)")
        if albedo_map.shape[0] != image.shape[0] or heatmaps.shape[0] != image.shape[0]:
            raise ValueError(f"batch sizes differ: albedo map {albedo_map.shape[0]}, image {image.shape[0]}, "
                             f"heatmaps {heatmaps.shape[0]}")

    def encode_image(self, image: Tensor) -> list[Tensor]:
        """The image features per level, ``[X_o at S/2, ..., at S/2^D]``."""
        feats, x = [], image
        for block in self.image_encoder:
            x = block(x)
            feats.append(x)
        return feats

    def forward(self, albedo_map: Tensor, image: Tensor, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        self._check(albedo_map, image, heatmaps)
        image_feats = self.encode_image(image)
        skips, x = [], albedo_map
        for block in self.albedo_encoder:
            x = block(x)
            skips.append(x)
        lv = self.region_level
        regions = self.ssrpm(image_feats[lv - 1], skips[lv - 1], heatmaps, image)
        for level in range(self.depth, 0, -1):
            if level < self.depth:
                x = self.additive_skip(x, skips[level - 1])  # layer l -> layer h - l
            if str(level) in self.stylize:
                size = tuple(x.shape[2:])
                reg = regions if regions.shape[2:] == size else F.interpolate(regions, size=size, mode="bilinear",
                                                                              align_corners=False)
                x = self.stylize[str(level)](x, image_feats[level - 1], reg)
            x = self.decoder[level - 1](x)
        out = self.head(x)
        if self.input_skip:  # layer 0 (the input map) -> layer h, added in logit space: smooth, stays in (0, 1)
            return torch.sigmoid(torch.logit(albedo_map.clamp(1e-3, 1.0 - 1e-3)) + out), regions
        return torch.sigmoid(out), regions
