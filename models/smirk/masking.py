"""What SMIRK's generator sees of the real image: a face hole plus ~1% sparse face pixels.

Recipe: ``shared/docs/smirk_reference.md`` ("Masking"); supplementary §3.1 (1% of the pixels, not 5%) and §1.2
(transfer pixels). Steps, for a batch of crops:

1. Hole: convex hull of the 2D landmarks (478 mediapipe points in SMIRK), dilated by max-pool 21 (10 px), plus every
   pixel the render covers; ``masked = image * keep``.
2. Sparse guidance: sample ``n = 1% of H*W`` points on the mesh (triangle ~ region weight x projected area x
   front-facing, uniform barycentric point), read the image at their projection, multiply by noise N(1, 0.05),
   drop those inside random 11x11 patches (centres Bernoulli(p)), paste them into the masked image.

Frames: pixel coordinates ``(u, v)`` as in :mod:`facelab.render.camera` (origin at the top-left corner, +v down,
pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``). Shapes: ``B`` batch, ``V`` vertices, ``F`` faces, ``N`` sampled
points, ``L`` landmarks, ``H, W`` image size.

Randomness comes only from the ``generator`` arguments (``torch.Generator`` on the tensors' device, or None for the
global RNG), so a seeded generator reproduces a mask exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.masks import convex_hull_mask
from facelab.morphable.base import barycentric_points, faces_in_region

__all__ = [
    "DEFAULT_REGION_WEIGHTS",
    "MaskedInput",
    "MeshPoints",
    "SmirkMasker",
    "convex_hull_mask",
    "face_hole_keep_mask",
    "multiplicative_noise",
    "patch_dropout_mask",
    "random_barycentric",
    "region_face_weights",
    "sample_mesh_points",
    "transfer_pixels",
]

#: Sampling weight per FLAME region (smirk_reference.md "Masking"). Faces in no listed region get 0.
DEFAULT_REGION_WEIGHTS: dict[str, float] = {
    "face": 1.0,
    "forehead": 1.0,
    "eye_region": 1.0,
    "left_eye_region": 1.0,
    "right_eye_region": 1.0,
    "lips": 0.5,
    "nose": 0.5,
    "neck": 0.0,
    "left_eyeball": 0.0,
    "right_eyeball": 0.0,
    "left_ear": 0.0,
    "right_ear": 0.0,
}


@dataclass
class MeshPoints:
    """Points on a mesh given by triangle and barycentric coordinates (they move with the mesh).

    Attributes:
        face_idx: (B, N) long index into ``faces``.
        bary: (B, N, 3) barycentric coordinates (non-negative, summing to 1).
        pix: (B, N, 2) continuous pixel coordinates on the mesh they were sampled on (None if unknown); on
            another pose of the mesh use :meth:`pixels`.
    """

    face_idx: Tensor
    bary: Tensor
    pix: Tensor | None = None

    def pixels(self, verts_px: Tensor, faces: Tensor) -> Tensor:
        """(B, N, 2) continuous pixel coordinates of the points on a mesh projected to ``verts_px`` (B, V, 2+)."""
        return barycentric_points(verts_px[..., :2], faces, self.face_idx, self.bary)

    def repeat(self, times: int) -> MeshPoints:
        """The batch repeated ``times`` (``[x; x; ...]``)."""
        pix = None if self.pix is None else self.pix.repeat(times, 1, 1)
        return MeshPoints(self.face_idx.repeat(times, 1), self.bary.repeat(times, 1, 1), pix)


@dataclass
class MaskedInput:
    """What :class:`SmirkMasker` returns.

    Attributes:
        masked_image: (B, C, H, W) image with the face hole, sparse guidance pixels pasted in (detached).
        mask: (B, 1, H, W) float, 1 where ``masked_image`` shows real image content (outside the hole, or a
            pasted point), 0 in the hole.
        point_mask: (B, 1, H, W) float, 1 at the pasted guidance pixels.
        points: the sampled mesh points (reuse them to transfer the same pixels onto a modified mesh).
    """

    masked_image: Tensor
    mask: Tensor
    point_mask: Tensor
    points: MeshPoints


# --------------------------------------------------------------------------------------------------------------
# The face hole
# --------------------------------------------------------------------------------------------------------------


def _max_filter(x: Tensor, size: int) -> Tensor:
    """``F.max_pool2d(x, size, stride=1, padding=size // 2)`` for odd ``size``, computed separably.

    A max over a square window is the max over its rows of the max over its columns, so a (1, size) pass then a
    (size, 1) pass give exactly the same values with ``2 size`` instead of ``size**2`` comparisons per pixel
    (21x21: ~6x faster on CPU). (B, C, H, W) -> (B, C, H, W).
    """
    rows = F.max_pool2d(x, (1, size), stride=1, padding=(0, size // 2))
    return F.max_pool2d(rows, (size, 1), stride=1, padding=(size // 2, 0))


def face_hole_keep_mask(hull_mask: Tensor, render_mask: Tensor | None = None, dilation: int = 21) -> Tensor:
    """Which pixels of the real image the generator may see (reference "Masking" step 1).

    Args:
        hull_mask: (B, 1, H, W) float, 1 inside the landmark hull.
        render_mask: (B, 1, H, W) float, 1 where the render covers; removed too. None: not used.
        dilation: odd max-pool kernel growing the hull (21 = 10 px, SMIRK's ``mask_dilation_radius``).

    Returns:
        (B, 1, H, W) float ``keep``: 1 outside the dilated hull and the render, 0 in the hole.
    """
    if dilation % 2 != 1:
        raise ValueError(f"dilation must be an odd kernel size, got {dilation}")
    hole = _max_filter(hull_mask.float(), dilation)
    keep = 1.0 - hole
    if render_mask is not None:
        keep = keep * (1.0 - (render_mask > 0).to(keep.dtype))
    return keep


# --------------------------------------------------------------------------------------------------------------
# Sparse guidance points
# --------------------------------------------------------------------------------------------------------------


def region_face_weights(faces: Tensor, regions: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """Per-face sampling weight from named vertex regions.

    A face belongs to a region when its three corners do (:func:`facelab.morphable.base.faces_in_region`). A face
    in several listed regions takes the *smallest* weight, so lips/nose inside ``face`` get 0.5 and a zero-weight
    region (neck, eyeballs, ears) always stays excluded; faces in no listed region get 0.

    Args:
        faces: (F, 3) long.
        regions: region name -> (V_r,) long vertex ids (e.g. ``Flame.regions``).
        weights: region name -> weight; names absent from ``regions`` raise.

    Returns:
        (F,) float weights.
    """
    unknown = sorted(set(weights) - set(regions))
    if unknown:
        raise KeyError(f"region weights name unknown regions {unknown}; the model has {sorted(regions)}")
    out = torch.full((faces.shape[0],), math.inf, device=faces.device)
    for name, weight in weights.items():
        ids = faces_in_region(faces, regions[name].to(faces.device))
        out[ids] = out[ids].clamp(max=float(weight))
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)


def random_barycentric(shape: tuple[int, ...], generator: torch.Generator | None = None, device=None,
                       dtype=torch.float32) -> Tensor:
    """Barycentric coordinates uniform over a triangle (fold the unit square along its diagonal).

    Returns:
        (*shape, 3) coordinates ``(1 - a - b, a, b)``.
    """
    ab = torch.rand(*shape, 2, generator=generator, device=device, dtype=dtype)
    ab = torch.where(ab.sum(dim=-1, keepdim=True) > 1, 1 - ab, ab)
    return torch.cat([1 - ab.sum(dim=-1, keepdim=True), ab], dim=-1)


def sample_mesh_points(verts_px: Tensor, faces: Tensor, face_weights: Tensor, n_points: int,
                       generator: torch.Generator | None = None, front_facing: bool = True,
                       allowed_faces: Tensor | None = None) -> MeshPoints:
    """Sample points on projected meshes (reference "Masking" step 2).

    A triangle is drawn with probability proportional to ``face_weights x projected area x front-facing`` (with
    replacement), then a uniform point inside it. Front-facing means counter-clockwise in NDC, which is clockwise
    in pixels (+v down): negative signed pixel area. Occlusion by other front faces is ignored (as in SMIRK). A row
    whose weights vanish (e.g. a head seen from behind) falls back to ``face_weights x area``, then to uniform.

    Args:
        verts_px: (B, V, 2+) projected vertices in pixels (only ``u, v`` are used).
        faces: (F, 3) long.
        face_weights: (F,) non-negative weights (:func:`region_face_weights`).
        n_points: ``N`` points per batch row (SMIRK: 1% of H*W, 501 at 224²).
        generator: random source (on ``verts_px``'s device).
        front_facing: drop back-facing triangles.
        allowed_faces: (F_a,) long indices of the only faces that may be drawn (e.g. the rendered face region);
            None: all.

    Returns:
        :class:`MeshPoints` with (B, N) faces, (B, N, 3) barycentric coordinates and (B, N, 2) pixel coordinates.
    """
    if verts_px.dim() != 3 or verts_px.shape[-1] < 2:
        raise ValueError(f"verts_px must be (B, V, 2+), got {tuple(verts_px.shape)}")
    if face_weights.shape != (faces.shape[0],):
        raise ValueError(f"face_weights must be (F,) = ({faces.shape[0]},), got {tuple(face_weights.shape)}")
    tri = verts_px.detach()[:, faces, :2]  # (B, F, 3, 2)
    e1, e2 = tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]
    signed_area = 0.5 * (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0])  # (B, F), < 0 when front-facing
    weights = face_weights.to(signed_area.dtype)
    if allowed_faces is not None:
        weights = torch.zeros_like(weights).index_copy(0, allowed_faces, weights[allowed_faces])
    probs = weights * signed_area.abs()
    if front_facing:
        front = probs * (signed_area < 0)
        probs = torch.where(front.sum(dim=1, keepdim=True) > 0, front, probs)
    probs = torch.where(probs.sum(dim=1, keepdim=True) > 0, probs, torch.ones_like(probs))
    face_idx = torch.multinomial(probs, n_points, replacement=True, generator=generator)
    bary = random_barycentric((verts_px.shape[0], n_points), generator, verts_px.device, verts_px.dtype)
    points = MeshPoints(face_idx=face_idx, bary=bary)
    points.pix = points.pixels(verts_px.detach(), faces)
    return points


def _pixel_index(points_px: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """(B, N, 2) continuous pixels -> integer (row, col) of the containing pixel and (B, N) in-image flags."""
    h, w = size
    col, row = points_px[..., 0].floor().long(), points_px[..., 1].floor().long()
    valid = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    return row.clamp(0, h - 1), col.clamp(0, w - 1), valid


def transfer_pixels(image: Tensor, points: MeshPoints, verts_px_src: Tensor, verts_px_dst: Tensor,
                    faces: Tensor) -> tuple[Tensor, Tensor]:
    """Move sparse image samples with the mesh (supplementary §1.2, "transfer pixels").

    Each point keeps its triangle and barycentric coordinates; its colour is read at its projection on the source
    mesh and written at its projection on the destination mesh: ``I_aug(floor(x_i + d_i)) = I(floor(x_i))``.
    Points whose source or destination falls outside the image are dropped; when two points land on one pixel,
    one of them wins. With ``verts_px_dst = verts_px_src`` this is the reconstruction path's paste.

    Args:
        image: (B, C, H, W) the real image (read without gradient).
        points: sampled :class:`MeshPoints` (B, N).
        verts_px_src: (B, V, 2+) the mesh the points were sampled on, in pixels.
        verts_px_dst: (B, V, 2+) the modified mesh (same topology), in pixels.
        faces: (F, 3) long.

    Returns:
        ``(image_with_points, mask)``: (B, C, H, W) the colours at the destination pixels, 0 elsewhere, and
        (B, 1, H, W) float 1 at those pixels.
    """
    b, c, h, w = image.shape
    src_row, src_col, src_ok = _pixel_index(points.pixels(verts_px_src.detach(), faces), (h, w))
    dst_row, dst_col, dst_ok = _pixel_index(points.pixels(verts_px_dst.detach(), faces), (h, w))
    ok = src_ok & dst_ok
    batch = torch.arange(b, device=image.device)[:, None].expand_as(ok)
    colours = image.detach()[batch[ok], :, src_row[ok], src_col[ok]]  # (M, C)
    out = image.new_zeros(b, h, w, c)
    mask = image.new_zeros(b, h, w)
    out[batch[ok], dst_row[ok], dst_col[ok]] = colours
    mask[batch[ok], dst_row[ok], dst_col[ok]] = 1.0
    return out.permute(0, 3, 1, 2), mask[:, None]


def multiplicative_noise(image: Tensor, std: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """``image * n`` with per-pixel, per-channel ``n ~ N(1, std)`` (reference "Masking": N(1, 0.05))."""
    noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    return image * (1.0 + std * noise)


def patch_dropout_mask(shape: tuple[int, int, int, int], p: float, patch_size: int = 11,
                       generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> Tensor:
    """Keep-mask that removes random square patches (reference "Masking": 11x11 patches, centres Bernoulli(p)).

    A pixel is dropped when a patch centre lies within ``patch_size // 2`` of it (Chebyshev distance), so away from
    the borders a pixel is dropped with probability ``1 - (1 - p) ** patch_size**2``.

    Args:
        shape: ``(B, 1, H, W)``.
        p: probability that a pixel is a patch centre.
        patch_size: odd patch side.

    Returns:
        (B, 1, H, W) float, 0 inside dropped patches.
    """
    if patch_size % 2 != 1:
        raise ValueError(f"patch_size must be odd, got {patch_size}")
    if p <= 0:
        return torch.ones(shape, device=device, dtype=dtype)
    centres = (torch.rand(shape, generator=generator, device=device) < p).to(dtype)
    return 1.0 - _max_filter(centres, patch_size)


class SmirkMasker(nn.Module):
    """Builds the generator's masked input (reference "Masking"; supplementary §3.1 and §1.2).

    Bind the mesh topology once with :meth:`set_topology` (per-face sampling weights from the region weights; a
    non-persistent buffer, so it follows ``.to()`` but is not saved in checkpoints: bind it in the owner's
    ``__init__``), then call per batch. The reconstruction path samples new points; the cycle path passes the
    reconstruction path's ``points`` with the modified mesh as ``verts_px_dst`` and
    ``patch_drop_p=cycle_patch_drop_p``.

    Args:
        point_ratio: guidance points as a fraction of ``H * W`` (1%; 5% makes the generator copy pixels, §3.1).
        hull_dilation: odd max-pool kernel growing the landmark hull (21 = 10 px).
        remove_render: also hide every pixel the render covers.
        noise_std: std of the multiplicative N(1, std) noise on pasted pixels.
        patch_size: side of the dropped patches.
        patch_drop_p: patch-centre probability in the reconstruction path.
        cycle_patch_drop_p: patch-centre probability in the cycle path (exposed for the recipe to pass).
        region_weights: region name -> sampling weight; None: :data:`DEFAULT_REGION_WEIGHTS`.
        front_facing: sample only front-facing triangles.
        hull_directions: supporting directions of :func:`convex_hull_mask`.
    """

    face_weights: Tensor

    def __init__(self, point_ratio: float = 0.01, hull_dilation: int = 21, remove_render: bool = True,
                 noise_std: float = 0.05, patch_size: int = 11, patch_drop_p: float = 0.01,
                 cycle_patch_drop_p: float = 0.005, region_weights: dict[str, float] | None = None,
                 front_facing: bool = True, hull_directions: int = 128) -> None:
        super().__init__()
        self.point_ratio, self.hull_dilation, self.remove_render = point_ratio, hull_dilation, remove_render
        self.noise_std, self.patch_size = noise_std, patch_size
        self.patch_drop_p, self.cycle_patch_drop_p = patch_drop_p, cycle_patch_drop_p
        self.region_weights = dict(DEFAULT_REGION_WEIGHTS if region_weights is None else region_weights)
        self.front_facing, self.hull_directions = front_facing, hull_directions
        self.register_buffer("face_weights", torch.zeros(0), persistent=False)

    def set_topology(self, faces: Tensor, regions: Mapping[str, Tensor], allowed_faces: Tensor | None = None) -> None:
        """Compute the (F,) per-face sampling weights from ``regions`` (e.g. ``flame.faces, flame.regions``).

        Args:
            faces: (F, 3) long. regions: region name -> vertex ids.
            allowed_faces: (F_a,) long, the only faces that may be sampled (e.g. ``flame.region_faces("face")``,
                the faces SMIRK renders); None: every face with a positive region weight.
        """
        weights = region_face_weights(faces, regions, self.region_weights)
        if allowed_faces is not None:
            weights = torch.zeros_like(weights).index_copy(0, allowed_faces, weights[allowed_faces])
        self.face_weights = weights.to(self.face_weights.device)

    def n_points(self, size: tuple[int, int]) -> int:
        """Guidance points per image: ``int(point_ratio * H * W)`` (501 at 224²)."""
        return int(self.point_ratio * size[0] * size[1])

    def forward(self, image: Tensor, landmarks_px: Tensor | None, render_mask: Tensor | None, verts_px: Tensor,
                faces: Tensor, *, hull_mask: Tensor | None = None, points: MeshPoints | None = None,
                verts_px_dst: Tensor | None = None, patch_drop_p: float | None = None,
                face_weights: Tensor | None = None, generator: torch.Generator | None = None) -> MaskedInput:
        """Mask the face and paste sparse, noisy face pixels.

        Args:
            image: (B, 3, H, W) real image in [0, 1].
            landmarks_px: (B, L, 2) 2D landmarks in pixels whose hull is the hole (ignored if ``hull_mask``).
            render_mask: (B, 1, H, W) coverage of the render the generator receives (the modified mesh's in the
                cycle path); None keeps those pixels.
            verts_px: (B, V, 2+) projected vertices of the mesh the points are sampled on, in pixels.
            faces: (F, 3) long, the mesh's faces (the full model's; ``face_weights`` index them).
            hull_mask: (B, 1, H, W) precomputed hull (e.g. the dataset's); overrides ``landmarks_px``.
            points: reuse these mesh points instead of sampling (cycle path).
            verts_px_dst: (B, V, 2+) where to write the points (modified mesh); default ``verts_px``.
            patch_drop_p: patch-centre probability; default ``self.patch_drop_p``.
            face_weights: (F,) override of the weights bound by :meth:`set_topology`.
            generator: random source on ``image``'s device.

        Returns:
            :class:`MaskedInput`.
        """
        b, _, h, w = image.shape
        if hull_mask is None:
            if landmarks_px is None:
                raise ValueError("give landmarks_px or hull_mask")
            hull_mask = convex_hull_mask(landmarks_px, (h, w), n_directions=self.hull_directions)
        keep = face_hole_keep_mask(hull_mask, render_mask if self.remove_render else None, self.hull_dilation)
        if points is None:
            weights = self.face_weights if face_weights is None else face_weights
            if weights.numel() == 0:
                raise RuntimeError("SmirkMasker has no face weights: call set_topology(faces, regions) first")
            points = sample_mesh_points(verts_px, faces, weights, self.n_points((h, w)), generator,
                                        self.front_facing)
        dst = verts_px if verts_px_dst is None else verts_px_dst
        guidance, point_mask = transfer_pixels(image, points, verts_px, dst, faces)
        if self.training:  # the augmentations of training; eval mode (inference) keeps the guidance pixels as is
            guidance = multiplicative_noise(guidance, self.noise_std, generator)
            p = self.patch_drop_p if patch_drop_p is None else patch_drop_p
            point_mask = point_mask * patch_dropout_mask((b, 1, h, w), p, self.patch_size, generator, image.device,
                                                         image.dtype)
        masked = image.detach() * keep * (1 - point_mask) + guidance * point_mask
        return MaskedInput(masked_image=masked, mask=torch.maximum(keep, point_mask), point_mask=point_mask,
                           points=points)

    def extra_repr(self) -> str:
        return (f"point_ratio={self.point_ratio}, hull_dilation={self.hull_dilation}, noise_std={self.noise_std}, "
                f"patch_size={self.patch_size}, patch_drop_p={self.patch_drop_p}, "
                f"cycle_patch_drop_p={self.cycle_patch_drop_p}")
