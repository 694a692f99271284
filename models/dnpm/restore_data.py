"""Degradations and data of detailed reconstruction from a degraded image (DNPM paper §IV-B, §V-D).

Degradations (composable functions, and :class:`Degradation`, their YAML-configurable chain
``downsample -> blur -> upsample``):

* Table II (maps): ``Degradation(factor=4)`` / ``Degradation(factor=8)``: a high-quality map area-averaged to 1/4 or
  1/8 of its side (:func:`downsample`), then bicubic-upsampled back (:func:`upsample`): the bicubic baseline and
  E_deg's input ``I_low``. The maps come from :class:`dnpm.data.DisplacementDataModule` and are degraded on the fly
  (deterministic: the same map always degrades the same way).
* Table III (photos): ``Degradation(size=64, blur_sigma=1.0)``: a face image downsampled to 64^2 and blurred by a
  Gaussian (:func:`gaussian_blur`), then upsampled to the regressor's input side.

Photos of the synthetic world (Table III's stand-in for FFHQ, whose displacement maps nobody has):
:class:`FaceRenderer` renders the bilinear face of a map's identity and expression, frontal, gray, lit by DECA's
five shape lights, its shading bump-mapped by the map itself (:class:`facelab.render.MeshRenderer`), so the
wrinkles, age lines and pores of the true UV map are visible in the image. The DataModule stays the displacement
maps' (:class:`dnpm.data.DisplacementDataModule`): the modules render each batch on the fly from its
``identity`` / ``expression`` / ``map_mm()`` (on the training device, no gradient), so every image comes with its
true UV map.

Shapes: ``B`` batch, ``S`` map side, ``H`` image side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.morphable import BilinearParams
from facelab.render import MeshRenderer, WeakPerspectiveCamera, shape_lights

__all__ = ["Degradation", "FaceRenderer", "downsample", "gaussian_blur", "upsample"]

Upsample = Literal["bicubic", "bilinear", "nearest", "none"]


def _check_images(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(
            f"{what}: expected (B, C, H, W) tensors, got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: contains NaN or infinite values")


def downsample(x: Tensor, factor: int | None = None, size: int | None = None) -> Tensor:
    """Area-average (B, C, H, W) by an integer ``factor`` or to a ``size`` x ``size`` side (one of them)."""
    _check_images(x, "downsample")
    if (factor is None) == (size is None):
        raise ValueError("give a downsampling factor or a size, not both / neither")
    if factor is not None:
        if int(factor) < 1 or x.shape[-1] % int(factor) or x.shape[-2] % int(factor):
            raise ValueError(f"factor {factor} must be >= 1 and divide the side {tuple(x.shape[-2:])}")
        size_hw = (x.shape[-2] // int(factor), x.shape[-1] // int(factor))
    else:
        if int(size) < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        size_hw = (int(size), int(size))
    if size_hw == tuple(x.shape[-2:]):
        return x
    if size_hw[0] > x.shape[-2]:
        raise ValueError(f"cannot downsample {tuple(x.shape[-2:])} to the larger {size_hw}")
    return F.interpolate(x, size=size_hw, mode="area")


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian smoothing of (B, C, H, W) with std ``sigma`` pixels (kernel ``2 ceil(3 sigma) + 1``, reflected
    borders); ``sigma = 0`` returns ``x``."""
    _check_images(x, "gaussian_blur")
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return x
    k = 2 * math.ceil(3 * sigma) + 1
    k = min(k, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)  # reflect padding needs the kernel inside the image
    return kornia.filters.gaussian_blur2d(x, (k, k), (float(sigma), float(sigma)), border_type="reflect")


def upsample(x: Tensor, size: int, mode: Upsample = "bicubic") -> Tensor:
    """Interpolate (B, C, h, w) up to ``size`` x ``size`` (``bicubic``: the Table II baseline)."""
    _check_images(x, "upsample")
    if mode == "none" or tuple(x.shape[-2:]) == (size, size):
        return x
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(x, size=(int(size), int(size)), mode=mode, **kwargs)


@dataclass
class Degradation:
    """``upsample(blur(downsample(x)))``: the degradations of Tables II / III (module docstring).

    Attributes:
        factor: downsampling factor (Table II: 4 or 8); or
        size: the low-resolution side (Table III: 64). Neither: no downsampling.
        blur_sigma: Gaussian std in pixels of the low-resolution image (Table III's smoothing; 0: none).
        upsample: interpolation back to the input's side (``none``: return the low-resolution image).
    """

    factor: int | None = None
    size: int | None = None
    blur_sigma: float = 0.0
    upsample: Upsample = "bicubic"

    def __post_init__(self) -> None:
        if self.factor is not None and self.size is not None:
            raise ValueError("Degradation: give factor or size, not both")
        if self.upsample not in ("bicubic", "bilinear", "nearest", "none"):
            raise ValueError(f"Degradation.upsample must be bicubic|bilinear|nearest|none, got {self.upsample!r}")
        if self.blur_sigma < 0:
            raise ValueError(f"Degradation.blur_sigma must be >= 0, got {self.blur_sigma}")

    def low(self, x: Tensor) -> Tensor:
        """The degraded image at its low resolution."""
        if self.factor is not None or self.size is not None:
            x = downsample(x, self.factor, self.size)
        else:
            _check_images(x, "degradation")
        return gaussian_blur(x, self.blur_sigma)

    def __call__(self, x: Tensor) -> Tensor:
        """The degraded (B, C, H, W) image, back at (H, W) unless ``upsample`` is ``none``."""
        low = self.low(x)
        return low if self.upsample == "none" else upsample(low, x.shape[-1], self.upsample)

    def describe(self) -> str:
        parts = []
        if self.factor is not None:
            parts.append(f"x1/{self.factor}")
        if self.size is not None:
            parts.append(f"{self.size}^2")
        if self.blur_sigma:
            parts.append(f"blur {self.blur_sigma:g}")
        return " + ".join(parts) or "identity"


class FaceRenderer(nn.Module):
    """Gray, frontal, bump-mapped renders of bilinear faces with their UV displacement maps (module docstring).

    Args:
        bilinear: the bilinear model (:class:`facelab.morphable.BilinearModel`; its UV layout is the maps').
        image_size: the render's side.
        bump_gain: multiplier of the displacement in the shading (1: true scale; more makes fine detail stand out
            at low image sizes).
        margin: the mean face's box fills ``1 - margin`` of the image.

    Shapes:
        ``forward(identity (B, K), expression (B, 52), displacement_mm (B, 1, S, S)) -> (B, 3, H, H)`` in [0, 1].
    """

    def __init__(self, bilinear: nn.Module, image_size: int = 128, bump_gain: float = 1.0, margin: float = 0.1) -> None:
        super().__init__()
        self.bilinear = bilinear.eval()
        self.renderer = MeshRenderer.from_model(bilinear, image_size=int(image_size))
        self.image_size, self.bump_gain = int(image_size), float(bump_gain)
        with torch.no_grad():
            mean = bilinear(bilinear.neutral_params(1)).verts[0]
        lo, hi = mean.amin(0), mean.amax(0)
        self.register_buffer("centre", 0.5 * (lo + hi), persistent=False)
        self.half = float(0.5 * (hi - lo)[:2].max()) / (1.0 - float(margin))
        self.depth = float(hi[2] - lo[2])

    def camera(self, batch: int, like: Tensor) -> WeakPerspectiveCamera:
        scale = 1.0 / self.half
        params = torch.cat([like.new_full((batch, 1), scale), (-self.centre[:2].to(like)).expand(batch, 2)], dim=1)
        return WeakPerspectiveCamera.from_params(params, depth_offset=10.0 + self.depth * scale)

    @torch.no_grad()
    def forward(self, identity: Tensor, expression: Tensor, displacement_mm: Tensor) -> Tensor:
        if identity.dim() != 2 or expression.dim() != 2 or identity.shape[0] != expression.shape[0]:
            raise ValueError(
                f"identity (B, K) and expression (B, 52) batches expected, got {tuple(identity.shape)}, "
                f"{tuple(expression.shape)}"
            )
        _check_images(displacement_mm, "displacement map")
        exp = expression[:, 1:] if expression.shape[1] == self.bilinear.num_expression + 1 else expression
        verts = self.bilinear(BilinearParams(identity=identity, expression=exp)).verts
        b = verts.shape[0]
        lights = shape_lights(device=verts.device, dtype=verts.dtype)
        out = self.renderer(
            verts,
            self.camera(b, verts),
            albedo=0.75,
            lights=lights,
            displacement_map=self.bump_gain * displacement_mm.to(verts),
        )
        return out.image.clamp(0, 1)
