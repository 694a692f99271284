"""Hard z-buffer rasterization of triangle meshes and interpolation of their attributes.

:func:`rasterize` finds, for every pixel centre, the nearest triangle covering it (one face per pixel) and the
barycentric coordinates of the centre in it; :func:`interpolate` blends per-vertex or per-corner attributes with
those coordinates. Screen conventions (NDC range, +y up, pixel centres, winding) are the ones documented in
:mod:`facelab.render.camera`.

Which face wins a pixel is a discrete decision and carries no gradient; the barycentric coordinates (and the
depth) are differentiable functions of the vertex positions, so a loss on interpolated attributes has gradients
with respect to the attributes *and* ``verts_ndc`` (as with pytorch3d at ``blur_radius=0`` or nvdiffrast's
``rasterize`` + ``interpolate`` without antialiasing). Silhouette edges get no gradient.

Backends (one API, :func:`register_backend` to add more):

* ``"torch"`` (default, the reference): pure PyTorch, CPU and CUDA; bounding-box binned, cost proportional to
  the pixels the triangles' boxes cover (:mod:`facelab.render.rasterize_torch`).
* ``"pytorch3d"``: pytorch3d's C++/CUDA rasterizer, looked up on first use.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = [
    "Fragments",
    "MeshRasterizer",
    "available_backends",
    "interpolate",
    "interpolate_packed",
    "rasterize",
    "register_backend",
]

PYTORCH3D_HINT = (
    "the 'pytorch3d' rasterizer backend needs pytorch3d with its compiled extension (pytorch3d._C): "
    "`pip install 'facelab[pytorch3d]'` (easypytorch3d, needs torch 2.12.x) or build pytorch3d from source; "
    "or use backend='torch'"
)


class Fragments:
    """What rasterization returns: per covered pixel (packed), with per-pixel images built on first access.

    Attributes:
        pix_to_face: (B, H, W) long index into ``faces`` of the visible face, -1 on the background.
        bary: (B, H, W, 3) barycentric coordinates of the pixel centre in that face (0 on the background);
            differentiable w.r.t. the vertex positions.
        zbuf: (B, H, W) depth (NDC ``depth``) of the visible surface at the pixel centre, -1 on the background.
        faces: (F, 3) long, the triangles that were rasterized (shared by the batch).
        num_verts: ``V``, the vertex count of the rasterized meshes.
        pix_idx: (M,) long flat index into ``B * H * W`` of each covered pixel (row-major, ascending).
        face_idx: (M,) long visible face of each covered pixel.
        bary_packed: (M, 3) barycentric coordinates of each covered pixel.
        zbuf_packed: (M,) depth of each covered pixel.
    """

    def __init__(self, pix_to_face: Tensor, faces: Tensor, num_verts: int, pix_idx: Tensor, face_idx: Tensor,
                 bary_packed: Tensor, zbuf_packed: Tensor, bary: Tensor | None = None, zbuf: Tensor | None = None):
        self.pix_to_face, self.faces, self.num_verts = pix_to_face, faces, int(num_verts)
        self.pix_idx, self.face_idx = pix_idx, face_idx
        self.bary_packed, self.zbuf_packed = bary_packed, zbuf_packed
        self._bary, self._zbuf = bary, zbuf

    @property
    def bary(self) -> Tensor:
        if self._bary is None:
            self._bary = self.unpack(self.bary_packed)
        return self._bary

    @property
    def zbuf(self) -> Tensor:
        if self._zbuf is None:
            self._zbuf = self.unpack(self.zbuf_packed[:, None], background=-1.0)[..., 0]
        return self._zbuf

    @property
    def mask(self) -> Tensor:
        """(B, H, W) bool coverage."""
        return self.pix_to_face >= 0

    @property
    def batch_idx(self) -> Tensor:
        """(M,) long batch index of each covered pixel."""
        b, h, w = self.pix_to_face.shape
        return torch.div(self.pix_idx, h * w, rounding_mode="floor")

    def unpack(self, values: Tensor, background: float | Tensor = 0.0) -> Tensor:
        """Scatter per-covered-pixel values into an image.

        Args:
            values: (M, C) one row per covered pixel (order of ``pix_idx``).
            background: value of the uncovered pixels (scalar or (C,)).

        Returns:
            (B, H, W, C) image; differentiable w.r.t. ``values``.
        """
        b, h, w = self.pix_to_face.shape
        out = values.new_empty(b * h * w, values.shape[-1])
        out[:] = torch.as_tensor(background, dtype=values.dtype, device=values.device)
        return out.index_copy(0, self.pix_idx, values).view(b, h, w, -1)

    @classmethod
    def from_dense(cls, pix_to_face: Tensor, bary: Tensor, zbuf: Tensor, faces: Tensor,
                   num_verts: int) -> Fragments:
        """Fill in the packed fields from dense per-pixel outputs (used by backends that return images)."""
        pix_idx = torch.nonzero(pix_to_face.reshape(-1) >= 0).squeeze(1)
        return cls(pix_to_face=pix_to_face, faces=faces, num_verts=num_verts, pix_idx=pix_idx,
                   face_idx=pix_to_face.reshape(-1)[pix_idx], bary_packed=bary.reshape(-1, 3)[pix_idx],
                   zbuf_packed=zbuf.reshape(-1)[pix_idx], bary=bary, zbuf=zbuf)

    def __repr__(self) -> str:
        return (f"Fragments(batch={self.pix_to_face.shape[0]}, size={tuple(self.pix_to_face.shape[1:])}, "
                f"covered={self.pix_idx.shape[0]}, faces={self.faces.shape[0]})")


#: Backend signature: (verts_ndc, faces, (H, W), cull_backfaces, perspective_correct, z_near) -> Fragments.
RasterizeFn = Callable[[Tensor, Tensor, tuple[int, int], bool, bool, float], Fragments]
_BACKENDS: dict[str, RasterizeFn | None] = {"torch": None, "pytorch3d": None}


def register_backend(name: str, fn: RasterizeFn) -> None:
    """Make ``fn`` available as ``rasterize(..., backend=name)``."""
    _BACKENDS[name] = fn


def _backend(name: str) -> RasterizeFn:
    if name not in _BACKENDS:
        raise ValueError(f"unknown rasterizer backend '{name}'; known: {sorted(_BACKENDS)}")
    fn = _BACKENDS[name]
    if fn is None:
        if name == "torch":
            from facelab.render.rasterize_torch import rasterize_torch as fn
        elif name == "pytorch3d":
            fn = _rasterize_pytorch3d
        _BACKENDS[name] = fn
    return fn


def available_backends() -> list[str]:
    """Names of the backends that can run here (``pytorch3d`` only when ``pytorch3d._C`` imports)."""
    names = []
    for name in _BACKENDS:
        if name == "pytorch3d":
            try:
                import pytorch3d._C  # noqa: F401
            except ImportError:
                continue
        names.append(name)
    return names


def rasterize(verts_ndc: Tensor, faces: Tensor, image_size: int | tuple[int, int], *, backend: str = "torch",
              cull_backfaces: bool = False, perspective_correct: bool = False, z_near: float = 1e-6) -> Fragments:
    """Rasterize a batch of meshes sharing one topology with a hard z-buffer (one face per pixel).

    A pixel is covered when its centre lies inside a triangle (edges shared by two triangles belong to exactly
    one, by the top-left rule of the torch backend); the smallest depth wins, ties go to the lower face index.
    Triangles that are degenerate (zero area), off-screen, non-finite, back-facing (with ``cull_backfaces``) or
    have a corner at ``depth <= z_near`` (behind or on the camera plane; not clipped, dropped whole) are skipped.

    Args:
        verts_ndc: (B, V, 3) NDC ``(x, y, depth)`` (see :mod:`facelab.render.camera`).
        faces: (F, 3) long triangles, counter-clockwise in NDC when front-facing.
        image_size: ``H`` (square) or ``(H, W)``.
        backend: ``"torch"`` (reference) or ``"pytorch3d"``.
        cull_backfaces: skip triangles whose NDC winding is clockwise.
        perspective_correct: barycentrics corrected for perspective (use with perspective cameras: NDC depth is
            view depth); the z-buffer then holds the true depth.
        z_near: smallest admissible corner depth.

    Returns:
        :class:`Fragments`.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    if verts_ndc.dim() != 3 or verts_ndc.shape[-1] != 3:
        raise ValueError(f"verts_ndc must be (B, V, 3), got {tuple(verts_ndc.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    if min(size) <= 0:
        raise ValueError(f"image_size must be positive, got {size}")
    faces = faces.to(device=verts_ndc.device, dtype=torch.long)
    return _backend(backend)(verts_ndc, faces, size, cull_backfaces, perspective_correct, z_near)


def _corner_values(attrs: Tensor, fragments: Fragments, per_corner: bool | None) -> Tensor:
    """(M, 3, C) attribute values at the three corners of each covered pixel's face."""
    b, h, w = fragments.pix_to_face.shape
    n_faces, n_verts = fragments.faces.shape[0], fragments.num_verts
    if per_corner is None:
        is_corner = attrs.dim() in (3, 4) and tuple(attrs.shape[-3:-1]) == (n_faces, 3)
        is_vertex = attrs.dim() in (2, 3) and attrs.shape[-2] == n_verts and (attrs.dim() == 2 or attrs.shape[0] == b)
        if is_corner and is_vertex:
            raise ValueError(f"attrs {tuple(attrs.shape)} fits both per-vertex and per-corner layouts: "
                             "pass per_corner=True or False")
        per_corner = is_corner
    face_idx = fragments.face_idx
    if per_corner:
        if attrs.dim() == 3 and tuple(attrs.shape[:2]) == (n_faces, 3):
            return attrs.index_select(0, face_idx)
        if attrs.dim() == 4 and tuple(attrs.shape[:3]) == (b, n_faces, 3):
            return attrs.reshape(b * n_faces, 3, -1).index_select(0, fragments.batch_idx * n_faces + face_idx)
        raise ValueError(f"per-corner attrs must be (F, 3, C) or (B, F, 3, C) with F={n_faces}, B={b}; "
                         f"got {tuple(attrs.shape)}")
    corners = fragments.faces.index_select(0, face_idx)  # (M, 3)
    if attrs.dim() == 2 and attrs.shape[0] == n_verts:
        return attrs.index_select(0, corners.reshape(-1)).view(-1, 3, attrs.shape[-1])
    if attrs.dim() == 3 and tuple(attrs.shape[:2]) == (b, n_verts):
        flat_idx = (corners + (fragments.batch_idx * n_verts)[:, None]).reshape(-1)
        return attrs.reshape(b * n_verts, -1).index_select(0, flat_idx).view(-1, 3, attrs.shape[-1])
    raise ValueError(f"per-vertex attrs must be (V, C) or (B, V, C) with V={n_verts}, B={b}; "
                     f"got {tuple(attrs.shape)}")


def interpolate_packed(attrs: Tensor, fragments: Fragments, per_corner: bool | None = None) -> Tensor:
    """Barycentric interpolation of attributes at the covered pixels only (the fast path renderers use).

    Args:
        attrs: per-vertex (B, V, C) or (V, C), or per-corner (F, 3, C) or (B, F, 3, C) (corners in ``faces``
            order; per-corner attributes carry UV seams and flat per-face values).
        fragments: from :func:`rasterize`.
        per_corner: force the layout; inferred from the shapes when None.

    Returns:
        (M, C) one row per covered pixel, in ``fragments.pix_idx`` order; differentiable w.r.t. ``attrs`` and
        (through the barycentric coordinates) the vertex positions.
    """
    values = _corner_values(attrs, fragments, per_corner)
    bary = fragments.bary_packed.to(values.dtype)
    return torch.einsum("mk,mkc->mc", bary, values)


def interpolate(attrs: Tensor, fragments: Fragments, per_corner: bool | None = None,
                background: float = 0.0) -> Tensor:
    """Barycentric interpolation of per-vertex or per-corner attributes into an image.

    Args:
        attrs: per-vertex (B, V, C) or (V, C), or per-corner (F, 3, C) or (B, F, 3, C).
        fragments: from :func:`rasterize`.
        per_corner: force the layout; inferred from the shapes when None.
        background: value of uncovered pixels.

    Returns:
        (B, H, W, C) interpolated attributes; differentiable w.r.t. ``attrs`` and the vertex positions.
    """
    return fragments.unpack(interpolate_packed(attrs, fragments, per_corner), background)


class MeshRasterizer(nn.Module):
    """Module form of :func:`rasterize` that owns its settings.

    Args:
        image_size: ``H`` or ``(H, W)``.
        backend: ``"torch"`` or ``"pytorch3d"``.
        cull_backfaces: skip clockwise (back-facing) triangles.
        perspective_correct: perspective-correct barycentrics (perspective cameras).
        z_near: smallest admissible corner depth.
    """

    def __init__(self, image_size: int | tuple[int, int] = 224, backend: str = "torch", cull_backfaces: bool = False,
                 perspective_correct: bool = False, z_near: float = 1e-6):
        super().__init__()
        self.image_size = image_size
        self.backend = backend
        self.cull_backfaces = cull_backfaces
        self.perspective_correct = perspective_correct
        self.z_near = z_near

    def forward(self, verts_ndc: Tensor, faces: Tensor, perspective_correct: bool | None = None) -> Fragments:
        """Rasterize (B, V, 3) NDC vertices with (F, 3) faces; ``perspective_correct`` overrides the setting."""
        pc = self.perspective_correct if perspective_correct is None else perspective_correct
        return rasterize(verts_ndc, faces, self.image_size, backend=self.backend, cull_backfaces=self.cull_backfaces,
                         perspective_correct=pc, z_near=self.z_near)

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, backend={self.backend!r}, cull_backfaces={self.cull_backfaces}, "
                f"perspective_correct={self.perspective_correct}")


def _rasterize_pytorch3d(verts_ndc: Tensor, faces: Tensor, size: tuple[int, int], cull_backfaces: bool,
                         perspective_correct: bool, z_near: float) -> Fragments:
    """pytorch3d backend: converts facelab NDC to pytorch3d's (+x left; the shorter side spans [-1, 1])."""
    try:
        import pytorch3d._C  # noqa: F401
        from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
        from pytorch3d.structures import Meshes
    except ImportError as err:
        raise ImportError(PYTORCH3D_HINT) from err
    h, w = size
    n_verts = verts_ndc.shape[1]
    # pytorch3d keeps square pixels: the longer image side spans [-L/S, L/S] of its NDC.
    sx, sy = max(w / h, 1.0), max(h / w, 1.0)
    scale = verts_ndc.new_tensor([-sx, sy, 1.0])
    # Dropping triangles (corner at depth <= z_near; back faces in facelab's winding, which pytorch3d's mirrored
    # x axis would invert) is done here so both backends skip exactly the same set.
    tri = verts_ndc.detach()[:, faces]  # (B, F, 3 corners, 3)
    keep = (tri[..., 2] > z_near).all(dim=-1)
    if cull_backfaces:
        e1, e2 = tri[:, :, 1, :2] - tri[:, :, 0, :2], tri[:, :, 2, :2] - tri[:, :, 0, :2]
        keep &= e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0] > 0
    kept_ids = [torch.nonzero(k).squeeze(1) for k in keep]
    meshes = Meshes(verts=list(verts_ndc * scale), faces=[faces[ids] for ids in kept_ids])
    pix_to_face, zbuf, bary, _ = rasterize_meshes(meshes, image_size=(h, w), blur_radius=0.0, faces_per_pixel=1,
                                                  perspective_correct=perspective_correct,
                                                  cull_backfaces=False)
    pix_to_face, zbuf, bary = pix_to_face[..., 0], zbuf[..., 0], bary[..., 0, :]
    covered = pix_to_face >= 0
    local = pix_to_face - meshes.mesh_to_faces_packed_first_idx()[:, None, None]
    local = torch.stack([ids[lp.clamp(min=0)] if ids.numel() else lp for ids, lp in zip(kept_ids, local)])
    pix_to_face = torch.where(covered, local, torch.full_like(local, -1))
    bary = torch.where(covered[..., None], bary, torch.zeros_like(bary))
    return Fragments.from_dense(pix_to_face, bary, zbuf, faces, n_verts)
