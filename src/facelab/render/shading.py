"""Normals and Lambertian shading: directional lights (SMIRK/DECA) and 9-band spherical harmonics (Deep3DFaceRecon,
DECA).

Normals and light directions live in the view frame of :mod:`facelab.render.camera` (x right, y up, +z toward
the viewer). The shading functions work on any leading shape: normals ``(..., 3)`` with lighting parameters
that broadcast against them (e.g. per image ``(B, 1, 1, ...)`` for (B, H, W, 3) normals, or gathered per pixel
``(M, ...)`` for the packed pixels of :class:`facelab.render.Fragments`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SHAPE_LIGHT_DIRECTIONS",
    "DirectionalLights",
    "directional_lights",
    "face_normals",
    "lambertian",
    "sh_basis",
    "sh_coeffs_to_bands",
    "sh_shading",
    "shape_lights",
    "vertex_normals",
]


def face_normals(verts: Tensor, faces: Tensor, normalize: bool = True) -> Tensor:
    """Normals of the triangles, right-handed: counter-clockwise corners seen from where the normal points.

    Args:
        verts: (B, V, 3).
        faces: (F, 3) long.
        normalize: unit length (else the length is twice the triangle area).

    Returns:
        (B, F, 3).
    """
    # One gather of all corners (index_select of a flat index is several times faster than three fancy indexes).
    corners = verts.index_select(1, faces.reshape(-1)).view(verts.shape[0], faces.shape[0], 3, 3)
    v0, v1, v2 = corners.unbind(2)
    n = torch.cross(v1 - v0, v2 - v0, dim=-1)
    return F.normalize(n, dim=-1, eps=1e-12) if normalize else n


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted vertex normals (the sum of the incident faces' unnormalised normals, then normalised).

    Args:
        verts: (B, V, 3).
        faces: (F, 3) long.

    Returns:
        (B, V, 3) unit normals (zero for vertices no face uses).
    """
    b, n_verts = verts.shape[:2]
    fn = face_normals(verts, faces, normalize=False)  # (B, F, 3)
    # Accumulate in a vertex-major (V, B*3) layout: index_add along the first axis adds whole contiguous rows,
    # several times faster than along axis 1 of (B, V, 3). Same sums in the same order, so the same values.
    per_face = fn.transpose(0, 1).reshape(faces.shape[0], b * 3)
    normals = verts.new_zeros(n_verts, b * 3)
    for k in range(3):
        normals = normals.index_add(0, faces[:, k], per_face)
    return F.normalize(normals.view(n_verts, b, 3).transpose(0, 1).contiguous(), dim=-1, eps=1e-12)


@dataclass
class DirectionalLights:
    """Directional lights at infinity.

    Attributes:
        directions: (L, 3) or (B, L, 3) directions *toward* the lights in the view frame (normalised on use).
        intensities: (L,), (L, C) or (B, L, C) light colours/intensities.
    """

    directions: Tensor
    intensities: Tensor

    def to(self, *args, **kwargs) -> DirectionalLights:
        return DirectionalLights(self.directions.to(*args, **kwargs), self.intensities.to(*args, **kwargs))


def directional_lights(directions, intensity: float = 1.0, device=None, dtype=torch.float32) -> DirectionalLights:
    """White directional lights of one intensity.

    Args:
        directions: (L, 3) directions *toward* the lights in the view frame (any length; normalised on use), a
            tensor or nested sequence.
        intensity: the intensity of every light (all three colour channels).

    Returns:
        :class:`DirectionalLights` with (L, 3) directions and (L, 3) intensities.
    """
    dirs = torch.as_tensor(directions, device=device, dtype=dtype)
    if dirs.dim() != 2 or dirs.shape[-1] != 3 or dirs.shape[0] == 0:
        raise ValueError(f"directional_lights: directions must be (L, 3) with L >= 1, got {tuple(dirs.shape)}")
    return DirectionalLights(dirs, torch.full((dirs.shape[0], 3), float(intensity), device=device, dtype=dtype))


#: The gray rig of DECA's ``render_shape``, used to show a mesh's shape: four lights at (+-1, +-1, 1) and a frontal
#: one at (0, 0, 1), toward the viewer's side of the view frame.
SHAPE_LIGHT_DIRECTIONS = ((-1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (-1.0, -1.0, 1.0), (1.0, -1.0, 1.0), (0.0, 0.0, 1.0))


def shape_lights(intensity: float = 1.7, device=None, dtype=torch.float32) -> DirectionalLights:
    """The five white lights of :data:`SHAPE_LIGHT_DIRECTIONS` at ``intensity`` (DECA's 1.7): the gray shape render
    of overlays and of methods that render their meshes this way (such as SMIRK's translator input)."""
    return directional_lights(SHAPE_LIGHT_DIRECTIONS, intensity, device=device, dtype=dtype)


def lambertian(normals: Tensor, directions: Tensor, intensities: Tensor) -> Tensor:
    """Lambertian shading averaged over directional lights: ``mean_l clamp(n . l_l, 0, 1) * I_l``.

    The average (not the sum) is SMIRK's/DECA's ``add_directionlight``.

    Args:
        normals: (..., 3) unit normals.
        directions: (..., L, 3) directions toward the lights, broadcastable against ``normals[..., None, :]``.
        intensities: (..., L, C) or (..., L) intensities, broadcastable likewise.

    Returns:
        (..., C) shading (C = 1 for scalar intensities).
    """
    dirs = F.normalize(directions, dim=-1)
    # (..., 1, 3) @ (..., 3, L): a GEMM for shared lights, a batched one for per-pixel lights.
    cos = torch.matmul(normals.unsqueeze(-2), dirs.transpose(-1, -2)).clamp_(0.0, 1.0)  # (..., 1, L)
    if intensities.dim() == directions.dim() - 1:  # scalar intensity per light
        intensities = intensities.unsqueeze(-1)
    return torch.matmul(cos, intensities).squeeze(-2) / directions.shape[-2]


# Deep3DFaceRecon's constants: Lambertian kernel a_l times the SH normalisation c_l.
_A0, _A1, _A2 = math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0)
_C0, _C1, _C2 = 1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi), 3 * math.sqrt(5.0) / math.sqrt(
    12 * math.pi)
# DECA's constant factors of its (1, x, y, z, xy, xz, yz, x^2 - y^2, 3 z^2 - 1) basis.
_DECA = (
    1 / math.sqrt(4 * math.pi),
    *(2 * math.pi / 3 * math.sqrt(3 / (4 * math.pi)),) * 3,
    *(math.pi / 4 * 3 * math.sqrt(5 / (12 * math.pi)),) * 3,
    math.pi / 4 * 1.5 * math.sqrt(5 / (12 * math.pi)),
    math.pi / 4 * 0.5 * math.sqrt(5 / (4 * math.pi)),
)


def sh_basis(normals: Tensor, convention: str = "deep3d") -> Tensor:
    """The 9 second-order spherical-harmonics basis values (Lambertian kernel folded in) at unit normals.

    Conventions:
        ``"deep3d"``: Deep3DFaceRecon's ``Y = [a0 c0, -a1 c1 ny, a1 c1 nz, -a1 c1 nx, a2 c2 nx ny, -a2 c2 ny nz,
        a2 c2 / (2 sqrt 3) (3 nz^2 - 1), -a2 c2 nx nz, a2 c2 / 2 (nx^2 - ny^2)]``.
        ``"deca"``: DECA's ``[1, nx, ny, nz, nx ny, nx nz, ny nz, nx^2 - ny^2, 3 nz^2 - 1]`` times its
        constant factors.

    Args:
        normals: (..., 3) unit normals in the view frame.
        convention: ``"deep3d"`` or ``"deca"``.

    Returns:
        (..., 9).
    """
    nx, ny, nz = normals.unbind(-1)
    if convention == "deep3d":
        basis = [torch.full_like(nx, _A0 * _C0), -_A1 * _C1 * ny, _A1 * _C1 * nz, -_A1 * _C1 * nx,
                 _A2 * _C2 * nx * ny, -_A2 * _C2 * ny * nz, _A2 * _C2 * 0.5 / math.sqrt(3.0) * (3 * nz * nz - 1),
                 -_A2 * _C2 * nx * nz, _A2 * _C2 * 0.5 * (nx * nx - ny * ny)]
        return torch.stack(basis, dim=-1)
    if convention == "deca":
        basis = [torch.ones_like(nx), nx, ny, nz, nx * ny, nx * nz, ny * nz, nx * nx - ny * ny, 3 * nz * nz - 1]
        return torch.stack(basis, dim=-1) * normals.new_tensor(_DECA)
    raise ValueError(f"unknown SH convention '{convention}' (deep3d | deca)")


def sh_coeffs_to_bands(coeffs: Tensor, convention: str = "deep3d") -> Tensor:
    """Bring SH coefficients into the (..., 9, C) band-major layout :func:`sh_shading` uses.

    Args:
        coeffs: (..., 27) flat coefficients, or already (..., 9, C). Flat Deep3DFaceRecon ``gamma`` is
            channel-major ((..., 3, 9): 9 red, then 9 green, then 9 blue); flat DECA ``lightcode`` is band-major
            ((..., 9, 3)).
        convention: ``"deep3d"`` or ``"deca"`` (only matters for flat input).

    Returns:
        (..., 9, C).
    """
    if coeffs.shape[-1] != 27:
        if coeffs.dim() < 2 or coeffs.shape[-2] != 9:
            raise ValueError(f"SH coefficients must be (..., 27) or (..., 9, C); got {tuple(coeffs.shape)}")
        return coeffs
    lead = coeffs.shape[:-1]
    if convention == "deep3d":
        return coeffs.reshape(*lead, 3, 9).transpose(-1, -2)
    return coeffs.reshape(*lead, 9, 3)


def sh_shading(normals: Tensor, coeffs: Tensor, convention: str = "deep3d") -> Tensor:
    """Spherical-harmonics irradiance ``sum_k Y_k(n) L_kc`` (Deep3DFaceRecon Eq. of the SH illumination).

    Deep3DFaceRecon adds an ambient ``0.27`` to its band-0 coefficients before shading (``init_lit``); that
    offset belongs to the network's parameterisation and is left to the caller.

    Args:
        normals: (..., 3) unit normals in the view frame.
        coeffs: (..., 27) or (..., 9, C) coefficients broadcastable against ``normals`` (see
            :func:`sh_coeffs_to_bands`).
        convention: ``"deep3d"`` or ``"deca"``.

    Returns:
        (..., C) shading (C = 3 for 27 coefficients).
    """
    bands = sh_coeffs_to_bands(coeffs, convention)  # (..., 9, C)
    basis = sh_basis(normals, convention)  # (..., 9)
    return (basis.unsqueeze(-1) * bands).sum(dim=-2)
