"""Cameras, rotations and THE screen-space convention every facelab renderer, UV tool and loss uses.

Conventions (defined here, once; everything else refers to this docstring):

* **World / model frame**: right-handed, +x to the subject's left (image right), +y up, the face looks along +z
  (see :mod:`facelab.morphable.base`).
* **View frame** (``verts_view``): right-handed, +x right, +y up, the camera looks along **-z** (OpenGL eye
  space), so visible points have ``z_view < 0`` and ``+z`` points *toward the viewer*. Normals and light
  directions for shading (:mod:`facelab.render.shading`) are expressed in this frame: a light at ``(0, 0, 1)``
  shines from the camera.
* **NDC** (``verts_ndc``, what :func:`facelab.render.rasterize` consumes): ``(x, y, depth)`` with ``x`` in
  ``[-1, 1]`` from the left image edge to the right edge, ``y`` in ``[-1, 1]`` from the *bottom* edge to the
  *top* edge (+y up), on both axes independently (a non-square image is still ``[-1, 1]`` on each axis), and
  ``depth`` the distance along the viewing direction (larger = farther; for perspective cameras the view-space
  depth ``-z_view`` in scene units; for weak-perspective cameras ``depth_offset - z_view``).
* **Pixels** (``pix``): continuous image coordinates ``(u, v)`` in pixels, origin at the top-left *corner* of
  the image, +u right, +v down. Pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)`` and its centre is
  ``(j + 0.5, i + 0.5)``; ``x_ndc = 2u/W - 1`` and ``y_ndc = 1 - 2v/H``. The rasterizer samples coverage,
  barycentrics and depth at pixel centres.
* **Winding**: a triangle is *front-facing* when its corners are counter-clockwise in NDC (+x right, +y up),
  i.e. when its signed NDC area is positive. Morphable models store faces counter-clockwise seen from outside,
  so their outward faces are front-facing under every camera here.

Weak perspective (DECA, SMIRK): ``x_ndc = s (x + tx)``, ``y_ndc = s (y + ty)``. Pinhole perspective
(Deep3DFaceRecon, BFM): ``verts_view = R X + t``; ``u = cx + fx * x_view / depth``,
``v = cy - fy * y_view / depth`` with ``depth = -z_view``; OpenCV-style ``K [R|t]`` (y down, z forward) is
converted by :meth:`PerspectiveCamera.from_opencv`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from facelab.rotations import axis_angle_to_matrix, euler_to_matrix

__all__ = [
    "PerspectiveCamera",
    "WeakPerspectiveCamera",
    "axis_angle_to_matrix",
    "euler_to_matrix",
    "ndc_to_pixels",
    "pixel_centers_ndc",
    "pixels_to_ndc",
]

# Rotation between OpenCV camera axes (x right, y down, z forward) and the view frame (x right, y up, z back).
_CV_TO_GL = (1.0, -1.0, -1.0)


def _as_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def ndc_to_pixels(xy_ndc: Tensor, image_size: int | tuple[int, int]) -> Tensor:
    """NDC ``(x, y)`` to continuous pixel coordinates ``(u, v)`` (see the module docstring).

    Args:
        xy_ndc: (..., 2+) points; only the first two coordinates are used.
        image_size: ``H`` (square) or ``(H, W)``.

    Returns:
        (..., 2) pixel coordinates ``(u, v)``, pixel centres at half-integers.
    """
    h, w = _as_size(image_size)
    u = (xy_ndc[..., 0] + 1.0) * (0.5 * w)
    v = (1.0 - xy_ndc[..., 1]) * (0.5 * h)
    return torch.stack([u, v], dim=-1)


def pixels_to_ndc(uv_pix: Tensor, image_size: int | tuple[int, int]) -> Tensor:
    """Continuous pixel coordinates ``(u, v)`` to NDC ``(x, y)``; the inverse of :func:`ndc_to_pixels`.

    Args:
        uv_pix: (..., 2) pixel coordinates.
        image_size: ``H`` or ``(H, W)``.

    Returns:
        (..., 2) NDC coordinates.
    """
    h, w = _as_size(image_size)
    return torch.stack([uv_pix[..., 0] * (2.0 / w) - 1.0, 1.0 - uv_pix[..., 1] * (2.0 / h)], dim=-1)


def pixel_centers_ndc(image_size: int | tuple[int, int], device=None, dtype=torch.float32) -> Tensor:
    """NDC coordinates of every pixel centre.

    Args:
        image_size: ``H`` or ``(H, W)``.

    Returns:
        (H, W, 2) ``(x, y)`` of each pixel's centre.
    """
    h, w = _as_size(image_size)
    x = (2.0 * torch.arange(w, device=device, dtype=dtype) + 1.0) / w - 1.0
    y = 1.0 - (2.0 * torch.arange(h, device=device, dtype=dtype) + 1.0) / h
    return torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)


@dataclass
class WeakPerspectiveCamera:
    """Scaled orthographic camera of DECA/SMIRK: ``x_ndc = s (x + tx)``, ``y_ndc = s (y + ty)``.

    The camera looks along -z of the (already posed) model frame, so the view frame is the model frame scaled
    and shifted: ``verts_view = s * (x + tx, y + ty, z)``. ``depth = depth_offset - z_view`` keeps depths
    positive for any head-sized mesh (DECA adds 10 the same way). On a non-square image NDC spans each axis
    separately, so ``s`` is relative to each side (an ``H != W`` render is stretched; crop square instead).

    Attributes:
        scale: (B,) ``s``.
        translation: (B, 2) ``(tx, ty)`` in model units, applied before scaling.
        depth_offset: constant added to ``-z_view`` to form the depth.
    """

    scale: Tensor
    translation: Tensor
    depth_offset: float = 10.0

    is_perspective = False

    @classmethod
    def from_params(cls, cam: Tensor, depth_offset: float = 10.0) -> WeakPerspectiveCamera:
        """Build from the ``(B, 3)`` ``[s, tx, ty]`` vector that DECA/SMIRK encoders predict."""
        if cam.dim() != 2 or cam.shape[1] != 3:
            raise ValueError(f"weak-perspective parameters must be (B, 3) [s, tx, ty], got {tuple(cam.shape)}")
        return cls(scale=cam[:, 0], translation=cam[:, 1:], depth_offset=depth_offset)

    def to_view(self, points: Tensor) -> Tensor:
        """(B, N, 3) model-frame points to the (scaled) view frame."""
        shift = torch.cat([self.translation, torch.zeros_like(self.translation[:, :1])], dim=1)
        return self.scale[:, None, None] * (points + shift[:, None, :])

    def directions_to_view(self, directions: Tensor) -> Tensor:
        """(B, N, 3) directions (normals) to the view frame: unchanged (no rotation)."""
        return directions

    def view_to_ndc(self, points_view: Tensor) -> Tensor:
        """(B, N, 3) view-frame points to NDC ``(x, y, depth)``."""
        return torch.cat([points_view[..., :2], self.depth_offset - points_view[..., 2:]], dim=-1)

    def project(self, points: Tensor) -> Tensor:
        """(B, N, 3) model-frame points to (B, N, 3) NDC ``(x, y, depth)``."""
        _check_points(points, self.scale.shape[0])
        return self.view_to_ndc(self.to_view(points))

    def project_pixels(self, points: Tensor, image_size: int | tuple[int, int]) -> Tensor:
        """(B, N, 3) model-frame points to (B, N, 2) pixel coordinates ``(u, v)``."""
        return ndc_to_pixels(self.project(points), image_size)


@dataclass
class PerspectiveCamera:
    """Pinhole camera with intrinsics in pixels and a world-to-view rigid transform.

    ``verts_view = R @ X + t`` (view frame: x right, y up, looking along -z), ``depth = -z_view``,
    ``u = cx + fx * x_view / depth``, ``v = cy - fy * y_view / depth``; NDC follows from the image size.

    Attributes:
        focal: (B, 2) ``(fx, fy)`` in pixels.
        principal_point: (B, 2) ``(cx, cy)`` in pixels (image centre = ``(W/2, H/2)``).
        image_size: ``(H, W)`` the intrinsics refer to.
        rotation: (B, 3, 3) world-to-view rotation ``R``.
        translation: (B, 3) world-to-view translation ``t``.
    """

    focal: Tensor
    principal_point: Tensor
    image_size: tuple[int, int]
    rotation: Tensor
    translation: Tensor

    is_perspective = True

    def __post_init__(self) -> None:
        self.image_size = _as_size(self.image_size)
        if self.focal.dim() == 1:
            self.focal = self.focal[:, None].expand(-1, 2)

    @classmethod
    def deep3d(cls, batch_size: int, image_size: int = 224, focal: float = 1015.0, distance: float = 10.0,
               device=None, dtype=torch.float32) -> PerspectiveCamera:
        """Deep3DFaceRecon's camera: at ``(0, 0, distance)`` looking at the origin, ``focal`` px at 224².

        The head pose is applied to the vertices (``euler_to_matrix``), so ``R`` is the identity and
        ``t = (0, 0, -distance)``; depth is ``distance - z`` as in Deep3DFaceRecon's ``to_camera``.
        """
        f = focal * image_size / 224.0
        kw = {"device": device, "dtype": dtype}
        return cls(
            focal=torch.full((batch_size, 2), f, **kw),
            principal_point=torch.full((batch_size, 2), image_size / 2.0, **kw),
            image_size=(image_size, image_size),
            rotation=torch.eye(3, **kw).expand(batch_size, 3, 3),
            translation=torch.tensor([0.0, 0.0, -distance], **kw).expand(batch_size, 3),
        )

    @classmethod
    def from_opencv(cls, K: Tensor, R: Tensor, t: Tensor, image_size: int | tuple[int, int]) -> PerspectiveCamera:
        """From OpenCV ``x_pix ~ K (R X + t)`` (camera axes x right, y down, z forward; pixel centres at ``+0.5``
        as here, i.e. ``K``'s principal point measured from the image corner).

        Args:
            K: (B, 3, 3) intrinsics. R: (B, 3, 3). t: (B, 3).
        """
        flip = torch.tensor(_CV_TO_GL, dtype=R.dtype, device=R.device)
        return cls(focal=torch.stack([K[:, 0, 0], K[:, 1, 1]], dim=-1), principal_point=K[:, :2, 2],
                   image_size=_as_size(image_size), rotation=flip[:, None] * R, translation=flip * t)

    def to_view(self, points: Tensor) -> Tensor:
        """(B, N, 3) world points to the view frame."""
        return points @ self.rotation.transpose(1, 2) + self.translation[:, None, :]

    def directions_to_view(self, directions: Tensor) -> Tensor:
        """(B, N, 3) directions (normals) to the view frame (rotation only)."""
        return directions @ self.rotation.transpose(1, 2)

    def view_to_ndc(self, points_view: Tensor) -> Tensor:
        """(B, N, 3) view-frame points to NDC ``(x, y, depth)``.

        Points at or behind the camera (``depth <= 0``) get non-finite or mirrored ``x, y``; the rasterizer
        drops every triangle with a corner there (``z_near``).
        """
        h, w = self.image_size
        depth = -points_view[..., 2]
        u = self.principal_point[:, None, 0] + self.focal[:, None, 0] * points_view[..., 0] / depth
        v = self.principal_point[:, None, 1] - self.focal[:, None, 1] * points_view[..., 1] / depth
        return torch.stack([u * (2.0 / w) - 1.0, 1.0 - v * (2.0 / h), depth], dim=-1)

    def project(self, points: Tensor) -> Tensor:
        """(B, N, 3) world points to (B, N, 3) NDC ``(x, y, depth)``."""
        _check_points(points, self.focal.shape[0])
        return self.view_to_ndc(self.to_view(points))

    def project_pixels(self, points: Tensor, image_size: int | tuple[int, int] | None = None) -> Tensor:
        """(B, N, 3) world points to (B, N, 2) pixel coordinates of ``image_size`` (default: the camera's)."""
        return ndc_to_pixels(self.project(points), image_size or self.image_size)


def _check_points(points: Tensor, batch: int) -> None:
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, N, 3), got {tuple(points.shape)}")
    if points.shape[0] != batch:
        raise ValueError(f"points have batch {points.shape[0]} but the camera has {batch}")
