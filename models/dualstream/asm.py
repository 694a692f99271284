"""Attribute spatial maps (ASMs) <-> mesh vertices, and the value range the attribute decoders produce.

An ASM is a UV position map (PRNet): texel ``(m, n)`` of a (3, S, S) map holds the image-aligned position
``(x, y, z)`` of the surface point with that UV: ``x, y`` the pixel coordinates in the input crop (origin top-left
corner, +y down), ``z`` the height toward the camera in the same pixel units, shifted so that the identity face's
nearest-to-the-back point is 0 (PRNet / face3d's "z shifted to min 0"). DualStream splits it into the identity ASM
``A_id`` (the neutral face under the same pose and crop) and the expression ASM ``A_exp = A - A_id`` (Eq. 2).

* vertices -> ASM: :meth:`AsmCodec.from_vertices` rasterizes the per-vertex positions into the UV layout with
  barycentric interpolation (:class:`facelab.uv.UVMapper`, the core UV rasterizer) and grows the charts two texels
  into the gutter (so that bilinear lookups at chart borders read the surface);
* ASM -> vertices: :meth:`AsmCodec.to_vertices` samples the map bilinearly at every vertex's UV (DualStream's
  fusion module, Sec. III-C: "the spatial locations of all vertices are recorded" in the maps).

The decoders end in ``tanh`` (Eq. 2), so the maps are learned in a normalised range (:class:`AsmRange`):
``a_id = (A_id - S_img / 2) / (0.55 S_img)`` (PRNet divides by ``1.1 S``; centring uses the whole of tanh's
range), ``a_exp = gain * A_exp / (0.55 S_img)`` with ``expression_gain`` (default 8) because expression offsets are
a few pixels: without the gain they would use < 5% of the output range and the MSE of Eq. 5 would barely see them.

Shapes: ``B`` batch, ``V`` vertices, ``S`` UV side, ``H`` image side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from facelab.uv import UVMapper, dilate_uv_map

__all__ = ["AsmCodec", "AsmRange", "shift_z_to_min_zero"]


@dataclass(frozen=True)
class AsmRange:
    """Pixel positions <-> the decoders' tanh range (module docstring).

    Attributes:
        image_size: side of the input crop in pixels (the frame of the positions).
        expression_gain: multiplier of the normalised expression offsets.
    """

    image_size: int
    expression_gain: float = 8.0

    @property
    def scale(self) -> float:
        return 0.55 * self.image_size

    def normalize_identity(self, pos: Tensor) -> Tensor:
        """(B, 3, S, S) pixel positions -> normalised ``a_id``."""
        return (pos - self.image_size / 2.0) / self.scale

    def denormalize_identity(self, a_id: Tensor) -> Tensor:
        return a_id * self.scale + self.image_size / 2.0

    def normalize_expression(self, offset: Tensor) -> Tensor:
        """(B, 3, S, S) pixel offsets -> normalised ``a_exp``."""
        return offset * (self.expression_gain / self.scale)

    def denormalize_expression(self, a_exp: Tensor) -> Tensor:
        return a_exp * (self.scale / self.expression_gain)


def shift_z_to_min_zero(identity: Tensor, full: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Shift the z channel of both maps by the identity map's minimum z over valid texels (PRNet's recipe).

    One shift for both keeps ``full - identity`` the pure expression offset. Texels that hold no surface (off the
    charts and their grown gutter: all three channels 0) stay 0.

    Args:
        identity, full: (B, 3, S, S) position maps. mask: (1 or B, 1, S, S) chart validity.

    Returns:
        The shifted ``(identity, full)``.
    """
    valid = (mask > 0).expand(identity.shape[0], 1, -1, -1)
    z = identity[:, 2:3]
    zmin = torch.where(valid, z, torch.full_like(z, float("inf"))).flatten(1).amin(1)  # (B,)
    support = (identity != 0).any(dim=1, keepdim=True) | valid
    shift = torch.zeros_like(identity)
    shift[:, 2] = zmin[:, None, None]
    shift = shift * support
    return identity - shift, full - shift


class AsmCodec(nn.Module):
    """One UV layout's ASM tools: vertices <-> position maps, and the normalised range.

    Args:
        faces: (F, 3) long triangles. uv: (T, 2) UVs in [0, 1] (v up). faces_uv: (F, 3) long.
        uv_size: side ``S`` of the ASMs.
        image_size: side of the input crop in pixels.
        expression_gain: see :class:`AsmRange`.
        num_verts: ``V`` (default: the largest index in ``faces`` plus one).
    """

    def __init__(self, faces: Tensor, uv: Tensor, faces_uv: Tensor, uv_size: int, image_size: int,
                 expression_gain: float = 8.0, num_verts: int | None = None) -> None:
        super().__init__()
        self.mapper = UVMapper(faces, uv, faces_uv, uv_size, num_verts=num_verts)
        self.range = AsmRange(image_size, expression_gain)
        self.uv_size = int(uv_size)

    @classmethod
    def from_model(cls, model, uv_size: int, image_size: int, expression_gain: float = 8.0) -> AsmCodec:
        """The codec of a morphable model with UVs (:class:`facelab.morphable.base.MorphableModel`)."""
        if not model.has_uv:
            raise ValueError(f"{type(model).__name__} has no UV layout: ASMs need one")
        return cls(model.faces, model.uv, model.faces_uv, uv_size, image_size, expression_gain,
                   num_verts=model.num_verts)

    @property
    def mask(self) -> Tensor:
        """(1, 1, S, S) float: 1 on texels covered by the UV charts."""
        return self.mapper.mask

    def check_map(self, asm: Tensor, name: str = "ASM") -> None:
        """Raise ``ValueError`` unless ``asm`` is (B, 3, S, S) at this codec's size."""
        if asm.dim() != 4 or asm.shape[1] != 3 or tuple(asm.shape[-2:]) != self.mapper.size:
            raise ValueError(f"{name} must be (B, 3, {self.uv_size}, {self.uv_size}), got {tuple(asm.shape)}")

    def from_vertices(self, verts: Tensor, dilate: int = 2) -> Tensor:
        """(B, V, 3) image-aligned vertices -> (B, 3, S, S) position map (barycentric; gutter grown ``dilate``)."""
        pos = self.mapper.position_map(verts)
        return dilate_uv_map(pos, self.mapper.mask, dilate) if dilate else pos

    def to_vertices(self, asm: Tensor) -> Tensor:
        """(B, 3, S, S) position map -> (B, V, 3) vertices (bilinear at each vertex's UV)."""
        self.check_map(asm)
        return self.mapper.to_vertices(asm, mode="bilinear")

    def decode(self, a_id: Tensor, a_exp: Tensor | None) -> tuple[Tensor, Tensor]:
        """Normalised decoder outputs -> pixel ``(A_id, A)`` (identity and full maps; ``a_exp`` None: A = A_id)."""
        pos_id = self.range.denormalize_identity(a_id)
        full = pos_id if a_exp is None else pos_id + self.range.denormalize_expression(a_exp)
        return pos_id, full

    def encode(self, pos_id: Tensor, pos_full: Tensor) -> tuple[Tensor, Tensor]:
        """Pixel identity and full maps -> normalised ``(a_id, a_exp)`` targets (off-chart texels 0)."""
        keep = self.mask.to(pos_id.dtype)
        return (self.range.normalize_identity(pos_id) * keep,
                self.range.normalize_expression(pos_full - pos_id) * keep)
