"""``MeshRenderer``: camera -> rasterizer -> albedo x shading, for a fixed mesh topology.

The renderer shades only the covered pixels (packed, see :class:`facelab.render.Fragments`) and scatters them
into the image once, so its cost follows the face's screen area. It is the one renderer of facelab: methods, the
fitting and the synthetic face world (:mod:`facelab.data.synthetic`, which bump-maps its wrinkle displacement
maps through it) all render with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.render.rasterize import Fragments, interpolate_packed, rasterize
from facelab.render.shading import DirectionalLights, lambertian, sh_basis, sh_coeffs_to_bands, vertex_normals
from facelab.uv.maps import uv_to_grid

__all__ = ["Camera", "MeshRenderer", "RenderOutput"]


class Camera(Protocol):
    """What the renderer needs from a camera (:mod:`facelab.render.camera`)."""

    is_perspective: bool

    def to_view(self, points: Tensor) -> Tensor: ...

    def directions_to_view(self, directions: Tensor) -> Tensor: ...

    def view_to_ndc(self, points_view: Tensor) -> Tensor: ...


@dataclass
class RenderOutput:
    """What :class:`MeshRenderer` returns.

    Attributes:
        image: (B, C, H, W) albedo x shading on covered pixels, ``background`` elsewhere.
        mask: (B, 1, H, W) float coverage (1 where a face is visible).
        shading: (B, C_s, H, W) the shading factor alone (None when unlit); 0 on the background.
        fragments: the rasterizer output (``pix_to_face`` indexes the renderer's ``faces``, i.e. the subset).
        verts_ndc: (B, V, 3) projected vertices.
    """

    image: Tensor
    mask: Tensor
    shading: Tensor | None
    fragments: Fragments
    verts_ndc: Tensor


class MeshRenderer(nn.Module):
    """Renders meshes of one topology: projection, hard rasterization, albedo (colour or UV texture), shading.

    Lighting is chosen per call: ``sh_coeffs`` -> spherical harmonics, ``lights`` -> Lambertian directional
    lights, neither -> unlit albedo. Normals are area-weighted vertex normals of the *full* mesh (so a rendered
    subset has no seam at its border), interpolated per pixel and renormalised; a UV normal map replaces them, or a
    UV displacement map bends them per pixel (bump mapping, :func:`facelab.uv.bump_normals`: the displacement's UV
    derivatives carried onto the surface by the layout's tangent frame, so detail finer than the mesh shades at
    the render resolution).

    Args:
        faces: (F, 3) long triangles of the model.
        image_size: ``H`` or ``(H, W)``.
        uv: (T, 2) UV coordinates (needed for ``texture`` / ``normal_map``).
        faces_uv: (F, 3) long per-corner indices into ``uv``.
        face_subset: (F_s,) long indices of the faces to render (e.g. FLAME's face region); all when None.
        backend: rasterizer backend (``"torch"`` or ``"pytorch3d"``).
        cull_backfaces: skip back-facing triangles.
        sh_convention: ``"deep3d"`` or ``"deca"`` (see :func:`facelab.render.shading.sh_basis`).
        background: value of uncovered pixels.
        backface_factor: factor on the colour of back-facing fragments (clockwise in NDC), e.g. 0.25 to show the
            inside of a mouth or an eye socket seen through an opening as a dark cavity; 1 leaves them as lit.
    """

    faces: Tensor
    faces_all: Tensor
    face_ids: Tensor
    normal_faces: Tensor

    def __init__(self, faces: Tensor, image_size: int | tuple[int, int] = 224, uv: Tensor | None = None,
                 faces_uv: Tensor | None = None, face_subset: Tensor | None = None, backend: str = "torch",
                 cull_backfaces: bool = False, sh_convention: str = "deep3d", background: float = 0.0,
                 backface_factor: float = 1.0):
        super().__init__()
        faces = torch.as_tensor(faces, dtype=torch.long)
        face_ids = torch.arange(faces.shape[0]) if face_subset is None else torch.as_tensor(face_subset).long()
        self.register_buffer("faces_all", faces, persistent=False)
        self.register_buffer("face_ids", face_ids, persistent=False)
        self.register_buffer("faces", faces[face_ids], persistent=False)
        # The faces whose normals reach a rendered vertex: every face touching a corner of the subset. Vertex normals
        # summed over them equal the full mesh's at those corners (same terms, same order), at a fraction of the cost.
        used = torch.zeros(int(faces.max()) + 1 if faces.numel() else 0, dtype=torch.bool)
        used[self.faces.reshape(-1)] = True
        self.register_buffer("normal_faces", faces[used[faces].any(dim=1)], persistent=False)
        if uv is not None and faces_uv is not None:
            corner_uv = torch.as_tensor(uv, dtype=torch.float32)[torch.as_tensor(faces_uv).long()[face_ids]]
            self.register_buffer("corner_uv", corner_uv, persistent=False)  # (F_s, 3, 2)
            # The same in grid_sample coordinates: interpolating these gives each pixel's lookup point directly.
            self.register_buffer("corner_grid", uv_to_grid(corner_uv), persistent=False)
        else:
            self.register_buffer("corner_uv", None, persistent=False)
            self.register_buffer("corner_grid", None, persistent=False)
        self.image_size = image_size
        self.backend = backend
        self.cull_backfaces = cull_backfaces
        self.sh_convention = sh_convention
        self.background = background
        self.backface_factor = float(backface_factor)

    @classmethod
    def from_model(cls, model, region: str | None = None, **kwargs) -> MeshRenderer:
        """A renderer for a morphable model's topology (``faces``, ``uv``, ``faces_uv`` buffers), optionally
        restricted to the faces of one of its named vertex regions (e.g. ``region="face"`` for SMIRK).

        Args:
            model: a :class:`facelab.morphable.base.MorphableModel` (or anything with those buffers and
                ``region_faces(name)``).
            region: a name in ``model.regions``; all faces when None (or ``face_subset`` in ``kwargs``).
            **kwargs: the other constructor arguments (``image_size``, ``backend``, ``face_subset``, ...).
        """
        uv = getattr(model, "uv", None)
        has_uv = uv is not None and uv.numel() > 0
        subset = kwargs.pop("face_subset", None)
        if region is not None:
            if subset is not None:
                raise ValueError("give region or face_subset, not both")
            subset = model.region_faces(region)
        return cls(model.faces.cpu(), uv=uv.cpu() if has_uv else None,
                   faces_uv=model.faces_uv.cpu() if has_uv else None,
                   face_subset=None if subset is None else subset.cpu(), **kwargs)

    def forward(self, verts: Tensor, camera: Camera, albedo: Tensor | float | None = None,
                texture: Tensor | None = None, lights: DirectionalLights | None = None,
                sh_coeffs: Tensor | None = None, normal_map: Tensor | None = None,
                displacement_map: Tensor | None = None, displacement_scale: float = 1.0) -> RenderOutput:
        """Render.

        Args:
            verts: (B, V, 3) vertices in the camera's world/model frame.
            camera: a camera of :mod:`facelab.render.camera` with batch ``B``.
            albedo: per-vertex (B, V, C) or (V, C), constant (C,) or a float; 1 when None and no texture.
            texture: (B or 1, C, Ht, Wt) UV albedo texture (needs ``uv``/``faces_uv``); overrides ``albedo``.
            lights: directional lights, directions in the view frame.
            sh_coeffs: (B, 27) or (B, 9, C) spherical-harmonics coefficients (takes precedence over lights).
            normal_map: (B or 1, 3, Ht, Wt) UV map of unit normals in the model frame (detail normals).
            displacement_map: (B or 1, 1, Hd, Wd) UV map of offsets along the normal (bump-mapped shading; the
                geometry and silhouette stay those of ``verts``). Not together with ``normal_map``.
            displacement_scale: length units of ``verts`` per unit of ``displacement_map`` (e.g. 1e-3 for a map
                in millimetres on a mesh in metres).

        Returns:
            :class:`RenderOutput`.
        """
        if normal_map is not None and displacement_map is not None:
            raise ValueError("give normal_map or displacement_map, not both")
        verts_view = camera.to_view(verts)
        verts_ndc = camera.view_to_ndc(verts_view)
        frags = rasterize(verts_ndc, self.faces, self.image_size, backend=self.backend,
                          cull_backfaces=self.cull_backfaces, perspective_correct=camera.is_perspective)
        px = _Pixels(frags, verts.shape[0])
        lit = sh_coeffs is not None or lights is not None
        if texture is not None or (lit and (normal_map is not None or displacement_map is not None)):
            if self.corner_grid is None:
                raise ValueError("texture / normal_map / displacement_map rendering needs the renderer built with uv "
                                 "and faces_uv")
            px.grid = interpolate_packed(self.corner_grid.to(verts.dtype), frags, per_corner=True)  # (M, 2)
        color = self._albedo(albedo, texture, px, verts)
        shading = None
        if lit:
            normals = self._normals(verts, verts_view, camera, px, normal_map, displacement_map, displacement_scale)
            shading = self._shade(normals, px, lights, sh_coeffs)
        if self.backface_factor != 1.0:
            factor = torch.where(self._front_facing(verts_ndc, px), 1.0, self.backface_factor)[:, None]
            shading = factor.to(color.dtype) if shading is None else shading * factor
        if shading is not None:
            color = color * shading
        image = frags.unpack(color, self.background).permute(0, 3, 1, 2)
        mask = frags.mask.unsqueeze(1).to(image.dtype)
        shading_img = None if shading is None or not lit else frags.unpack(shading).permute(0, 3, 1, 2)
        return RenderOutput(image=image, mask=mask, shading=shading_img, fragments=frags, verts_ndc=verts_ndc)

    @staticmethod
    def _sample(uv_map: Tensor, px: _Pixels, grid: Tensor | None = None) -> Tensor:
        """(M, C) values of a (B or 1, C, Ht, Wt) UV map at the covered pixels (or (M, K, C) at (M, K, 2) points)."""
        from facelab.uv.texture import grid_sample_packed

        grid = px.grid if grid is None else grid
        return grid_sample_packed(uv_map, grid.to(uv_map.dtype), px.counts)

    def _albedo(self, albedo, texture: Tensor | None, px: _Pixels, verts: Tensor) -> Tensor:
        """(M, C) albedo of the covered pixels."""
        if texture is not None:
            return self._sample(texture, px)
        if albedo is None:
            albedo = 1.0
        albedo = torch.as_tensor(albedo, dtype=verts.dtype, device=verts.device)
        if albedo.dim() <= 1:
            return albedo.reshape(1, -1).expand(px.frags.pix_idx.shape[0], -1)
        return interpolate_packed(albedo, px.frags, per_corner=False)

    def _normals(self, verts: Tensor, verts_view: Tensor, camera: Camera, px: _Pixels, normal_map: Tensor | None,
                 displacement_map: Tensor | None, displacement_scale: float) -> Tensor:
        """(M, 3) unit shading normals of the covered pixels, view frame."""
        frags = px.frags
        if normal_map is not None:
            sampled = frags.unpack(self._sample(normal_map, px)).flatten(1, 2)  # (B, H*W, 3) model frame
            normals = camera.directions_to_view(sampled).reshape(-1, 3).index_select(0, frags.pix_idx)
            return F.normalize(normals, dim=-1, eps=1e-12)
        normals = interpolate_packed(vertex_normals(verts_view, self.normal_faces), frags, per_corner=False)
        if displacement_map is None:
            return F.normalize(normals, dim=-1, eps=1e-12)
        from facelab.uv.displacement import bump_normals
        from facelab.uv.maps import uv_surface_gradients

        d_uv = self._displacement_slopes(displacement_map, px)  # (M, 2)
        # The tangent frame in the world frame (where the displacement's units are), then turned into the view.
        grad_u, grad_v = uv_surface_gradients(verts, self.faces, self.corner_uv)  # (B, F_s, 3) each
        grads = camera.directions_to_view(torch.cat([grad_u, grad_v], dim=1))
        flat = px.batch_idx * self.faces.shape[0] + frags.face_idx
        grad_u, grad_v = (g.reshape(-1, 3).index_select(0, flat) for g in grads.chunk(2, dim=1))
        return bump_normals(F.normalize(normals, dim=-1, eps=1e-12), d_uv.to(normals.dtype), grad_u, grad_v,
                            displacement_scale)

    @classmethod
    def _displacement_slopes(cls, displacement_map: Tensor, px: _Pixels) -> Tensor:
        """(M, 2) ``(dD/du, dD/dv)`` of a (B or 1, 1, Hd, Wd) UV map at the covered pixels.

        Central differences one texel apart of the bilinear lookup: exactly the bilinear lookup of the map's
        central-difference map (:func:`facelab.uv.displacement_gradient`, up to the map's border), without building
        that map (four lookups per pixel instead of passes over every texel).
        """
        s_h, s_w = displacement_map.shape[-2:]
        # one texel along +u, -u, +v, -v in grid_sample coordinates (x = 2u - 1, y = 1 - 2v)
        step = px.grid.new_tensor([[2.0 / s_w, 0.0], [-2.0 / s_w, 0.0], [0.0, -2.0 / s_h], [0.0, 2.0 / s_h]])
        values = cls._sample(displacement_map, px, px.grid[:, None, :] + step)[..., 0]  # (M, 4)
        return torch.stack([(values[:, 0] - values[:, 1]) * (s_w / 2.0), (values[:, 2] - values[:, 3]) * (s_h / 2.0)],
                           dim=-1)

    def _shade(self, normals: Tensor, px: _Pixels, lights: DirectionalLights | None,
               sh_coeffs: Tensor | None) -> Tensor:
        """(M, C) shading of the covered pixels (SH: one (M_n, 9) x (9, C) product per image)."""
        if sh_coeffs is not None:
            bands = sh_coeffs_to_bands(sh_coeffs, self.sh_convention).to(normals.dtype)  # (B, 9, C)
            basis = sh_basis(normals, self.sh_convention)  # (M, 9)
            parts = [chunk @ bands[n] for n, chunk in enumerate(basis.split(px.counts))]
            return torch.cat(parts) if parts else basis.new_zeros(0, bands.shape[-1])
        dirs, ints = lights.directions.to(normals), lights.intensities.to(normals)
        if dirs.dim() == 3:
            dirs = dirs[px.batch_idx]
        if ints.dim() == 3:
            ints = ints[px.batch_idx]
        return lambertian(normals, dirs, ints)

    def _front_facing(self, verts_ndc: Tensor, px: _Pixels) -> Tensor:
        """(M,) bool: the covered pixel's face is counter-clockwise in NDC."""
        tri = verts_ndc.detach().index_select(1, self.faces.reshape(-1))[..., :2]
        tri = tri.view(verts_ndc.shape[0], self.faces.shape[0], 3, 2)
        e1, e2 = tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]
        front = (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]) > 0  # (B, F_s)
        return front.reshape(-1).index_select(0, px.batch_idx * self.faces.shape[0] + px.frags.face_idx)

    def extra_repr(self) -> str:
        return (f"faces={self.faces.shape[0]}/{self.faces_all.shape[0]}, image_size={self.image_size}, "
                f"backend={self.backend!r}, cull_backfaces={self.cull_backfaces}, "
                f"backface_factor={self.backface_factor}")


class _Pixels:
    """The covered pixels of one render: fragments, image of each pixel and pixels per image (computed once), and
    their ``grid_sample`` lookup points in the UV layout (when a UV map is used)."""

    def __init__(self, frags: Fragments, batch_size: int):
        self.frags = frags
        self.batch_idx = frags.batch_idx
        self.counts: list[int] = torch.bincount(self.batch_idx, minlength=batch_size).tolist()
        self.grid: Tensor | None = None  # (M, 2)
