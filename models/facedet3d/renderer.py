"""FaceDet3D's rendering network R (paper §3.3, Eq. 10-13): NTex_phi, the two UV rasterizations and Tex2Im.

R renders a face from its texture map ``T(I_x)`` and a detailed geometry:

* Eq. 10: ``NTM = NTex_phi(T(I_x))``, a UNet from the RGB texture map to an ``F``-channel neural texture (F = 16,
  deferred neural rendering's width).
* Eq. 11-12: the NTM is sampled through the UV rasterization of the proxy geometry ``G_P`` (details zeroed) and of
  the detailed geometry ``G_D``; beside each sample the *shaded albedo* rasterized by the same geometry (BFM albedo
  gamma under the SH light l, first 9 bands) enters the branch, and the target AU y conditions every decoder level
  (FiLM). ``g_theta`` (low-res, detail-invariant) sees G_P only, ``g_omega`` (details) G_D only.
* Eq. 13: ``I = I_LR + I_D``.

**How G_D is rendered (a choice the paper leaves open).** G_D is the proxy mesh shaded with *displacement-derived
normals*: the detail map bends the interpolated normal per pixel (bump mapping, :class:`facelab.render.MeshRenderer`
``displacement_map``: the map's UV slopes carried onto the surface by the layout's tangent frame), rather than
vertices displaced along normals on a subdivided mesh. Why: the FDS maps are 4096^2 (texels ~0.05 mm on the face),
so a mesh that carries them needs ~16M vertices; BFM's ~35k vertices (2-3 mm apart) displaced along normals
low-pass the wrinkles to the vertex spacing, i.e. they remove exactly what R must render. Millimetre-deep
wrinkles move the silhouette and the UV lookups by far less than a pixel at 256^2, so what G_D changes in the
image is its *shading*, which bump mapping resolves at the render resolution from any map size (the synthetic
world renders its ground-truth images the same way). Consequently ``Sample(NTM, UV-Raster(G_D))`` equals the G_P
sample up to the (identical) silhouette; the detail reaches g_omega through the G_D-shaded albedo, and through
nothing else, which is what the Augmented Wrinkle and Detailed Shading losses rely on. Both rasterizations are
still computed (the G_D one is its own raster + bump-shading pass), so ``facelab bench facedet3d`` times them.

Ablations (paper Table 2) are the ``branches`` switch: ``"double"`` (the paper's), ``"single"`` (one Tex2Im network
on the G_D inputs) and ``"ordinary"`` (no network: the BFM albedo shaded by SH, the G_D shaded albedo itself).

Shapes: ``B`` batch, ``V`` vertices, ``S`` texture side, ``S_d`` detail-map side, ``H = W`` image side, ``F`` neural
texture channels, ``A`` action units (17).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.nn import FiLM, UNet
from facelab.render import MeshRenderer, interpolate_packed
from facelab.render.renderer import Camera
from facelab.uv.texture import grid_sample_packed

__all__ = [
    "Branches",
    "DetailRasterizer",
    "NeuralRender",
    "NeuralTexture",
    "RenderInputs",
    "RenderingNetwork",
    "Tex2Im",
    "UVRaster",
    "neural_render",
    "sample_uv_raster",
]

Branches = Literal["double", "single", "ordinary"]


@dataclass
class RenderInputs:
    """What R needs of one face (paper Eq. 3), the detail map apart.

    Attributes:
        texture: (B, 3, S, S) texture map T(I_x) in the model's UV layout (0 where unseen).
        verts: (B, V, 3) proxy geometry G_P (posed, model frame: shape alpha_s and target expression alpha_e).
        camera: the camera c (batch B) of :mod:`facelab.render.camera`.
        sh_coeffs: (B, 27) SH lighting l (Deep3DFaceRecon layout, 9 per colour channel).
        albedo: BFM albedo from gamma: per-vertex (B, V, 3) colours or a (B, 3, S_a, S_a) UV albedo map.
        action_units: (B, A) the target AU y in [0, 1].
    """

    texture: Tensor
    verts: Tensor
    camera: Camera
    sh_coeffs: Tensor
    albedo: Tensor
    action_units: Tensor


@dataclass
class UVRaster:
    """One UV rasterization of a geometry (paper "UV-Raster(G, c)") and what is shaded through it.

    Attributes:
        grid: (M, 2) ``grid_sample`` lookup point in the UV layout of every covered pixel (packed).
        counts: covered pixels per image (``M = sum(counts)``).
        fragments: the rasterizer output (``pix_to_face``, ``unpack`` to images).
        shaded_albedo: (B, 3, H, W) albedo x SH shading of this geometry (0 off the face).
        shading: (B, 3, H, W) the SH shading alone, ``L_Sph(G, l)`` of Eq. 14.
        mask: (B, 1, H, W) coverage.
    """

    grid: Tensor
    counts: list[int]
    fragments: object
    shaded_albedo: Tensor
    shading: Tensor
    mask: Tensor


def sample_uv_raster(uv_map: Tensor, raster: UVRaster) -> Tensor:
    """``Sample(map, UV-Raster(G, c))`` (paper Eq. 11-12): a (B, C, S, S) UV map at every covered pixel.

    Returns:
        (B, C, H, W), 0 off the face.
    """
    values = grid_sample_packed(uv_map, raster.grid.to(uv_map.dtype), raster.counts)  # (M, C)
    return raster.fragments.unpack(values).permute(0, 3, 1, 2)


class DetailRasterizer(nn.Module):
    """The UV rasterizations of G_P and G_D (paper Eq. 11-12) and the SH shading of Eq. 14, for one mesh topology.

    G_D is G_P shaded with displacement-derived normals (module docstring says why). ``detail_pool`` box-filters the
    detail map before shading when its texels are much finer than the pixels (a global mip level against aliasing;
    e.g. a 4096^2 map rendered at 256^2).

    Args:
        faces: (F, 3) long triangles. uv: (T, 2) UVs. faces_uv: (F, 3) per-corner UV indices.
        image_size: render side ``H = W``.
        displacement_scale: mesh length units per unit of the detail map (1e-3 / metres-per-unit for maps in mm).
        skin_faces: (F_k,) long faces of the skin region (the DSL region, Eq. 16); all faces when None.
        detail_pool: box filter of the detail map before bump shading (1 = none).
        backend: rasterizer backend.
    """

    skin_face_mask: Tensor

    def __init__(self, faces: Tensor, uv: Tensor, faces_uv: Tensor, image_size: int = 256,
                 displacement_scale: float = 1.0, skin_faces: Tensor | None = None, detail_pool: int = 1,
                 backend: str = "torch") -> None:
        super().__init__()
        if detail_pool < 1:
            raise ValueError(f"detail_pool must be >= 1, got {detail_pool}")
        self.renderer = MeshRenderer(faces, image_size=image_size, uv=uv, faces_uv=faces_uv, backend=backend,
                                     sh_convention="deep3d")
        skin = torch.ones(faces.shape[0], dtype=torch.bool)
        if skin_faces is not None:
            skin = torch.zeros_like(skin)
            skin[torch.as_tensor(skin_faces).long()] = True
        self.register_buffer("skin_face_mask", skin, persistent=False)
        self.image_size, self.displacement_scale, self.detail_pool = int(image_size), float(displacement_scale), \
            int(detail_pool)

    @classmethod
    def from_model(cls, model, **kwargs) -> DetailRasterizer:
        """For a morphable model with UVs; its ``skin`` region (BFM) is the DSL region when present."""
        if not getattr(model, "has_uv", False):
            raise ValueError(f"FaceDet3D renders through the UV layout: {type(model).__name__} has no UVs")
        skin = model.region_faces("skin") if "skin" in model.regions else None
        return cls(model.faces.cpu(), model.uv.cpu(), model.faces_uv.cpu(), skin_faces=None if skin is None
                   else skin.cpu(), **kwargs)

    def forward(self, inputs: RenderInputs, detail: Tensor | None = None) -> UVRaster:
        """Rasterize one geometry: G_P for ``detail=None``, else G_D with the (B or 1, 1, S_d, S_d) detail map."""
        if detail is not None and self.detail_pool > 1:
            detail = F.avg_pool2d(detail, self.detail_pool)
        texture = inputs.albedo if inputs.albedo.dim() == 4 else None
        out = self.renderer(inputs.verts, inputs.camera, albedo=None if texture is not None else inputs.albedo,
                            texture=texture, sh_coeffs=inputs.sh_coeffs, displacement_map=detail,
                            displacement_scale=self.displacement_scale)
        frags = out.fragments
        grid = interpolate_packed(self.renderer.corner_grid.to(inputs.verts.dtype), frags, per_corner=True)
        counts = torch.bincount(frags.batch_idx, minlength=inputs.verts.shape[0]).tolist()
        return UVRaster(grid=grid, counts=counts, fragments=frags, shaded_albedo=out.image, shading=out.shading,
                        mask=out.mask)

    def skin_mask(self, raster: UVRaster) -> Tensor:
        """(B, 1, H, W) pixels of the skin region (the DSL region of Eq. 16)."""
        p2f = raster.fragments.pix_to_face
        return (self.skin_face_mask[p2f.clamp(min=0)] & (p2f >= 0)).unsqueeze(1).to(raster.mask.dtype)


class NeuralTexture(nn.Module):
    """NTex_phi (paper Eq. 10): a UNet from the RGB texture map to an F-channel neural texture map.

    Args:
        features: F, the neural texture channels (16).
        channels: UNet level widths.
        n_res_blocks: residual blocks at the UNet bottleneck.

    Shapes:
        (B, 3, S, S) -> (B, F, S, S); S divisible by ``2 ** len(channels)``.
    """

    def __init__(self, features: int = 16, channels: Sequence[int] = (64, 128, 256, 512), n_res_blocks: int = 2
                 ) -> None:
        super().__init__()
        self.features = int(features)
        # the texture's visibility rides along as a 4th channel (unseen texels are 0 in T, not black skin)
        self.unet = UNet(4, self.features, channels, n_res_blocks=n_res_blocks, norm="instance",
                         activation="leaky_relu", upsample="bilinear")

    def forward(self, texture: Tensor) -> Tensor:
        seen = (texture.abs().sum(1, keepdim=True) > 0).to(texture.dtype)
        return self.unet(torch.cat([texture, seen], dim=1))


class Tex2Im(nn.Module):
    """One Tex2Im branch (g_theta or g_omega, paper Eq. 11-12): a UNet from the sampled neural texture and the
    shaded albedo of one geometry to RGB, every decoder level FiLM-modulated by the target AU y.

    Args:
        features: F of the neural texture.
        channels: UNet level widths.
        num_action_units: A (17).
        downsample: run at ``H / downsample`` (inputs area-averaged, output bilinearly upsampled): g_theta's
            "low-res" image (2); 1 for full resolution (g_omega, the single branch).

    Shapes:
        ``forward(ntm_sample (B, F, H, W), shaded_albedo (B, 3, H, W), au (B, A)) -> (B, 3, H, W)``.
    """

    def __init__(self, features: int = 16, channels: Sequence[int] = (64, 128, 256, 256), num_action_units: int = 17,
                 downsample: int = 1) -> None:
        super().__init__()
        if downsample < 1:
            raise ValueError(f"downsample must be >= 1, got {downsample}")
        self.downsample = int(downsample)
        self.unet = UNet(features + 3, 3, channels, norm="instance", activation="leaky_relu", upsample="bilinear",
                         condition_dim=num_action_units, conditioning=FiLM)

    def forward(self, ntm_sample: Tensor, shaded_albedo: Tensor, au: Tensor) -> Tensor:
        x = torch.cat([ntm_sample, shaded_albedo], dim=1)
        size = x.shape[-2:]
        if self.downsample > 1:
            x = F.avg_pool2d(x, self.downsample)
        y = self.unet(x, au)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False) if self.downsample > 1 else y


@dataclass
class NeuralRender:
    """What :func:`neural_render` returns.

    Attributes:
        image: (B, 3, H, W) the render I (Eq. 13), 0 off the face.
        low_res: (B, 3, H, W) I_LR of g_theta (None unless ``branches="double"``).
        detail: (B, 3, H, W) I_D of g_omega (the single branch's whole image; None for ordinary rendering).
        mask: (B, 1, H, W) coverage.
        proxy: the G_P raster (None unless double). detailed: the G_D raster.
    """

    image: Tensor
    low_res: Tensor | None
    detail: Tensor | None
    mask: Tensor
    proxy: UVRaster | None
    detailed: UVRaster
    extras: dict = field(default_factory=dict)


class RenderingNetwork(nn.Module):
    """R's trainable part: NTex_phi and Tex2Im (g_theta + g_omega), or an ablation (``branches``).

    Args:
        features: F, the neural texture channels.
        ntex_channels: NTex_phi UNet widths.
        tex2im_channels: widths of each Tex2Im branch.
        branches: ``double`` (g_theta + g_omega, Eq. 11-13), ``single`` (one Tex2Im on the G_D inputs: Table 2's
            "NR Single Branch") or ``ordinary`` (no network: the BFM albedo x SH of G_D, "Ordinary Rendering").
        low_res_factor: g_theta runs at ``H / low_res_factor``.
        num_action_units: A.
    """

    def __init__(self, features: int = 16, ntex_channels: Sequence[int] = (64, 128, 256, 512),
                 tex2im_channels: Sequence[int] = (64, 128, 256, 256), branches: Branches = "double",
                 low_res_factor: int = 2, num_action_units: int = 17) -> None:
        super().__init__()
        if branches not in ("double", "single", "ordinary"):
            raise ValueError(f"branches must be 'double', 'single' or 'ordinary', got {branches!r}")
        self.branches = branches
        #: the constructor arguments (checkpoints keep them to rebuild the network, :func:`load_render`)
        self.config = dict(features=int(features), ntex_channels=[int(c) for c in ntex_channels],
                           tex2im_channels=[int(c) for c in tex2im_channels], branches=branches,
                           low_res_factor=int(low_res_factor), num_action_units=int(num_action_units))
        self.ntex = self.g_theta = self.g_omega = None
        if branches != "ordinary":
            self.ntex = NeuralTexture(features, ntex_channels)
            self.g_omega = Tex2Im(features, tex2im_channels, num_action_units)
        if branches == "double":
            self.g_theta = Tex2Im(features, tex2im_channels, num_action_units, downsample=low_res_factor)

    def neural_texture(self, texture: Tensor) -> Tensor | None:
        """Eq. 10 (None for ordinary rendering)."""
        return None if self.ntex is None else self.ntex(texture)

    def compose(self, ntm: Tensor | None, proxy: UVRaster | None, detailed: UVRaster, au: Tensor) -> NeuralRender:
        """Eq. 11-13 from the rasters (``proxy`` only for ``double``)."""
        if self.branches == "ordinary":
            return NeuralRender(detailed.shaded_albedo, None, None, detailed.mask, None, detailed)
        detail = self.g_omega(sample_uv_raster(ntm, detailed), detailed.shaded_albedo, au)  # Eq. 12
        low_res = None
        image = detail
        if self.branches == "double":
            low_res = self.g_theta(sample_uv_raster(ntm, proxy), proxy.shaded_albedo, au)  # Eq. 11
            image = low_res + detail  # Eq. 13
        m = detailed.mask
        return NeuralRender(image * m, None if low_res is None else low_res * m, detail * m, m, proxy, detailed)


def neural_render(network: RenderingNetwork, rasterizer: DetailRasterizer, inputs: RenderInputs, detail: Tensor,
                  ntm: Tensor | None = None, proxy: UVRaster | None = None) -> NeuralRender:
    """R(T(I_x), D, alpha_s, alpha_e, y, c, l, gamma) (paper Eq. 3, 10-13).

    Args:
        network: NTex_phi + Tex2Im.
        rasterizer: the UV rasterizations of the topology.
        inputs: texture, proxy geometry, camera, light, albedo, target AU.
        detail: (B, 1, S_d, S_d) the detail map of G_D (mm).
        ntm: the neural texture of ``inputs.texture`` when already computed (several renders of one texture).
        proxy: the G_P raster when already computed (it does not depend on ``detail``).
    """
    if ntm is None:
        ntm = network.neural_texture(inputs.texture)
    if proxy is None and network.branches == "double":
        proxy = rasterizer(inputs)
    detailed = rasterizer(inputs, detail)
    return network.compose(ntm, proxy, detailed, inputs.action_units)
