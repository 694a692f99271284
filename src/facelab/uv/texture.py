"""Texture sampling (UV texture -> image) and unwrapping (image -> UV texture with visibility).

Conventions are those of :mod:`facelab.uv.maps` (UV, v up, row 0 of a texture is v = 1) and
:mod:`facelab.render.camera` (NDC +y up, pixel centres).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from facelab.render.rasterize import Fragments
from facelab.uv.maps import UVMapper, uv_to_grid

__all__ = ["UnwrappedTexture", "grid_sample_packed", "sample_texture", "sample_texture_packed", "unwrap_texture"]


def sample_texture(texture: Tensor, uv: Tensor, mode: str = "bilinear", padding_mode: str = "border") -> Tensor:
    """Look a UV texture up at per-pixel UV coordinates (``grid_sample`` through interpolated UVs).

    Args:
        texture: (B, C, Ht, Wt) texture, row 0 = v = 1.
        uv: (B, H, W, 2) UV coordinates per pixel (e.g. :func:`facelab.render.interpolate` of per-corner UVs).
        mode: ``grid_sample`` mode.
        padding_mode: ``grid_sample`` padding outside [0, 1].

    Returns:
        (B, C, H, W) sampled values (differentiable w.r.t. the texture and the UVs).
    """
    if texture.dim() != 4 or uv.dim() != 4 or uv.shape[-1] != 2:
        raise ValueError(f"texture must be (B, C, Ht, Wt) and uv (B, H, W, 2); got {tuple(texture.shape)}, "
                         f"{tuple(uv.shape)}")
    if texture.shape[0] != uv.shape[0]:
        texture = texture.expand(uv.shape[0], -1, -1, -1)
    return F.grid_sample(texture, uv_to_grid(uv).to(texture.dtype), mode=mode, padding_mode=padding_mode,
                         align_corners=False)


def grid_sample_packed(texture: Tensor, grid: Tensor, counts: list[int], mode: str = "bilinear",
                       padding_mode: str = "border") -> Tensor:
    """``grid_sample`` of per-image textures at the scattered points of each image (the low-level form of
    :func:`sample_texture_packed`, for callers that hold ``grid_sample`` coordinates and per-image counts).

    Args:
        texture: (B, C, Ht, Wt) textures (B = 1 is shared by every point).
        grid: (M, 2) or (M, K, 2) ``grid_sample`` coordinates (:func:`facelab.uv.uv_to_grid`), the points of image 0
            first, then those of image 1, ...
        counts: points of each image (``sum(counts) == M``).
        mode, padding_mode: ``grid_sample`` options.

    Returns:
        (M, C) or (M, K, C).
    """
    single = grid.dim() == 2
    points = grid[:, None] if single else grid  # (M, K, 2)

    def lookup(tex: Tensor, pts: Tensor) -> Tensor:
        out = F.grid_sample(tex, pts[None], mode=mode, padding_mode=padding_mode, align_corners=False)
        return out[0].permute(1, 2, 0)  # (M_n, K, C)

    if texture.shape[0] == 1:
        out = lookup(texture, points)
    else:
        if len(counts) > texture.shape[0] or sum(counts) != points.shape[0]:
            raise ValueError(f"counts {len(counts)} images / {sum(counts)} points do not fit {texture.shape[0]} "
                             f"textures and {points.shape[0]} points")
        parts = [lookup(texture[n : n + 1], chunk) for n, chunk in enumerate(points.split(counts)) if counts[n]]
        out = torch.cat(parts) if parts else texture.new_zeros(0, points.shape[1], texture.shape[1])
    return out[:, 0] if single else out


def sample_texture_packed(texture: Tensor, uv: Tensor, batch_idx: Tensor, mode: str = "bilinear",
                          padding_mode: str = "border") -> Tensor:
    """Look UV textures up at scattered points of a batch: the packed pixels of :class:`~facelab.render.Fragments`.

    One ``grid_sample`` per image over just its points, so the cost follows the covered pixels rather than the
    whole images (several times faster than sampling the full image grid and gathering).

    Args:
        texture: (B, C, Ht, Wt) textures (B = 1 is shared by every point).
        uv: (M, 2) UV coordinates of the points.
        batch_idx: (M,) long image of each point, ascending (the order of ``Fragments.pix_idx``).
        mode, padding_mode: ``grid_sample`` options.

    Returns:
        (M, C) sampled values (differentiable w.r.t. the texture and the UVs).
    """
    if texture.dim() != 4 or uv.dim() != 2 or uv.shape[-1] != 2 or batch_idx.shape != uv.shape[:1]:
        raise ValueError(f"texture must be (B, C, Ht, Wt), uv (M, 2) and batch_idx (M,); got {tuple(texture.shape)}, "
                         f"{tuple(uv.shape)}, {tuple(batch_idx.shape)}")
    counts = torch.bincount(batch_idx, minlength=texture.shape[0]).tolist() if texture.shape[0] > 1 else [uv.shape[0]]
    return grid_sample_packed(texture, uv_to_grid(uv).to(texture.dtype), counts, mode, padding_mode)


@dataclass
class UnwrappedTexture:
    """A texture map extracted from images.

    Attributes:
        texture: (B, C, S_h, S_w) image colour at each visible texel, 0 elsewhere.
        visibility: (B, 1, S_h, S_w) float, 1 where the texel was seen in the image.
    """

    texture: Tensor
    visibility: Tensor


def unwrap_texture(image: Tensor, verts_ndc: Tensor, uv_mapper: UVMapper, fragments: Fragments | None = None,
                   perspective: bool = False, depth_tolerance: float = 0.01, normals_view: Tensor | None = None,
                   min_cos: float = 0.0) -> UnwrappedTexture:
    """Unwrap images into UV space (the texture-map extraction of FaceDet3D / DualStream).

    Each texel's surface point is projected into the image and the image is sampled bilinearly there. A texel
    counts as visible when its face is front-facing (counter-clockwise in NDC), it projects inside the image and,
    if ``fragments`` of the same meshes are given, it is not behind the rendered surface: the face visible at the
    nearest pixel, extended as a plane to the texel's exact position, must not be nearer than the texel by more
    than ``depth_tolerance`` times the mesh's depth extent (comparing against that plane rather than the pixel's
    depth keeps steep, grazing surfaces visible). With view-frame
    ``normals_view`` the texel's interpolated normal must also face the camera by more than ``min_cos``
    (DECA drops grazing texels this way).

    Args:
        image: (B, C, H, W) images.
        verts_ndc: (B, V, 3) NDC vertices the images show.
        uv_mapper: the mesh's :class:`~facelab.uv.maps.UVMapper`.
        fragments: rasterization of ``verts_ndc`` at the image size, for the occlusion test.
        perspective: NDC come from a perspective camera (texel positions are depth-weighted, exact in 3D).
        depth_tolerance: occlusion slack relative to the mesh's depth extent.
        normals_view: (B, V, 3) unit vertex normals in the view frame, for the grazing test.
        min_cos: smallest admissible ``n_z`` with ``normals_view``.

    Returns:
        :class:`UnwrappedTexture`.
    """
    b, c = image.shape[:2]
    corners = uv_mapper.texel_corners  # (M, 3)
    bary = uv_mapper.texel_bary.to(verts_ndc.dtype)
    tri = verts_ndc[:, corners]  # (B, M, 3, 3)
    depth = torch.einsum("mk,bmk->bm", bary, tri[..., 2])
    if perspective:  # a 3D point's NDC is the depth-weighted mean of its corners' NDC
        weights = bary * tri[..., 2]
        xy = (weights.unsqueeze(-1) * tri[..., :2]).sum(dim=2) / weights.sum(dim=2, keepdim=True)
    else:
        xy = torch.einsum("mk,bmkc->bmc", bary, tri[..., :2])
    grid = torch.stack([xy[..., 0], -xy[..., 1]], dim=-1)[:, None]  # (B, 1, M, 2) grid_sample: +y down
    colors = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border",
                           align_corners=False)[:, :, 0]  # (B, C, M)
    e1, e2 = tri[:, :, 1, :2] - tri[:, :, 0, :2], tri[:, :, 2, :2] - tri[:, :, 0, :2]
    visible = (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0] > 0) & (xy.abs() <= 1).all(dim=-1)
    if fragments is not None:
        visible &= _not_occluded(xy, depth, verts_ndc, fragments, perspective, depth_tolerance)
    if normals_view is not None:
        n_z = torch.einsum("mk,bmk->bm", bary, normals_view[:, corners, 2])
        visible &= n_z > min_cos
    vis = visible.to(image.dtype)
    size = uv_mapper.size
    flat = image.new_zeros(b, c + 1, size[0] * size[1])
    values = torch.cat([colors * vis[:, None], vis[:, None]], dim=1)
    flat = flat.index_copy(2, uv_mapper.texel_idx, values)
    maps = flat.view(b, c + 1, *size)
    return UnwrappedTexture(texture=maps[:, :c], visibility=maps[:, c:])


def _not_occluded(xy: Tensor, depth: Tensor, verts_ndc: Tensor, fragments: Fragments, perspective: bool,
                  depth_tolerance: float) -> Tensor:
    """(B, M) whether texels at NDC ``xy`` (B, M, 2) with ``depth`` (B, M) are in front of the rendered surface."""
    b, h, w = fragments.pix_to_face.shape
    col = ((xy[..., 0] + 1) * (0.5 * w)).floor().long().clamp(0, w - 1)
    row = ((1 - xy[..., 1]) * (0.5 * h)).floor().long().clamp(0, h - 1)
    batch = torch.arange(b, device=xy.device)[:, None]
    face = fragments.pix_to_face[batch, row, col]  # (B, M) face visible at the nearest pixel
    corners = fragments.faces[face.clamp(min=0)]  # (B, M, 3)
    tri = verts_ndc[batch[..., None], corners]  # (B, M, 3, 3)
    rel = tri[..., :2] - xy[..., None, :]  # corners relative to the texel's position
    nxt, nxt2 = [1, 2, 0], [2, 0, 1]
    edge = rel[..., nxt, 0] * rel[..., nxt2, 1] - rel[..., nxt, 1] * rel[..., nxt2, 0]  # (B, M, 3)
    bary = edge / edge.sum(-1, keepdim=True)  # may lie outside [0, 1]: the plane is extrapolated
    z = tri[..., 2]
    surface = 1.0 / (bary / z).sum(-1) if perspective else (bary * z).sum(-1)
    extent = verts_ndc[..., 2].amax(dim=1, keepdim=True) - verts_ndc[..., 2].amin(dim=1, keepdim=True)
    return (face >= 0) & (depth <= surface + depth_tolerance * extent)
