"""Procedural face albedo for the synthetic face world: skin tone, mottling, brows, lips, hair, eyes.

The albedo is built from fixed per-texel (or per-vertex, for models without UVs) **layers** evaluated once on the
model's template surface: smooth noise fields, soft masks of the brows, lips, lid margins, cheeks, under-eye
area and scalp, and the iris/pupil/sclera of the eyeballs. A sample only draws a few colours and weights
(:class:`AlbedoParams`) and mixes the layers, so a batch of 256² textures costs a few element-wise operations.

Features are placed from the model's 68 template landmarks and named regions (``scalp``, ``left_eyeball``, ...),
in metres (:class:`TemplateSurface`), so the same code serves FLAME, BFM, FaceScape and ICT layouts; a feature
whose region the model lacks (BFM has no scalp or eyeballs) is simply absent. Noise fields are functions of the
3D template position, so they are seamless across UV charts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from facelab.uv.maps import UVMapper

__all__ = ["AlbedoParams", "ProceduralAlbedo", "TemplateSurface", "UNITS_TO_METRES"]

#: Length unit of a morphable model (``model.units``) -> metres.
UNITS_TO_METRES = {"m": 1.0, "dm": 0.1, "cm": 0.01, "mm": 0.001}


@dataclass
class TemplateSurface:
    """A model's template (zero-parameter) surface sampled at its UV texels or at its vertices, in metres.

    Attributes:
        points: (N, 3) float64 positions in metres (model frame: +y up, face along +z).
        regions: name -> (N,) soft membership in [0, 1] of the model's named vertex regions.
        landmarks68: (68, 3) template iBUG landmarks in metres.
        index: (N,) long flat index of each sample in an ``S_h x S_w`` UV map, or ``arange(V)`` for vertices.
        size: ``(S_h, S_w)`` of the UV layout, or None when the samples are the vertices.
        metres_per_uv: the layout's scale on the face, ``sqrt(surface area / UV area)`` over the triangles of the
            ``face`` region (all triangles without one); None without UVs.
    """

    points: np.ndarray
    regions: dict[str, np.ndarray]
    landmarks68: np.ndarray
    index: np.ndarray
    size: tuple[int, int] | None
    metres_per_uv: float | None = None

    @property
    def num_samples(self) -> int:
        return int(self.points.shape[0])

    def texel_size(self) -> float:
        """Side of one texel on the face in metres (the mean over both map axes); 0 without UVs."""
        if self.size is None or self.metres_per_uv is None:
            return 0.0
        return self.metres_per_uv * (1.0 / self.size[0] + 1.0 / self.size[1]) / 2.0

    def region_weight(self, names: Sequence[str]) -> np.ndarray:
        """(N,) the largest membership over the listed regions (0 where the model has none of them)."""
        out = np.zeros(self.num_samples)
        for name in names:
            if name in self.regions:
                out = np.maximum(out, self.regions[name])
        return out

    @classmethod
    def from_mesh(cls, verts: Tensor, faces: Tensor, uv: Tensor, faces_uv: Tensor, regions: dict[str, Tensor],
                  landmarks68: Tensor, metres_per_unit: float, uv_size: int | tuple[int, int] = 256,
                  smoothing_steps: int = 3) -> TemplateSurface:
        """Sample a template mesh at its UV texels (when it has UVs) or at its vertices.

        Args:
            verts: (V, 3) template vertices in model units.
            faces: (F, 3) long. uv: (T, 2), possibly empty. faces_uv: (F, 3) long.
            regions: name -> (N_r,) long vertex ids.
            landmarks68: (68, 3) template landmarks in model units.
            metres_per_unit: scale to metres (:data:`UNITS_TO_METRES`).
            uv_size: UV map size ``S`` or ``(S_h, S_w)``.
            smoothing_steps: neighbour-averaging steps applied to the region indicators on the mesh, so that
                region borders (a hairline) become smooth ramps instead of triangle staircases.
        """
        n = verts.shape[0]
        indicators = torch.zeros(n, len(regions))
        for j, ids in enumerate(regions.values()):
            indicators[ids.cpu(), j] = 1.0
        indicators = _smooth_on_mesh(indicators, faces.cpu(), smoothing_steps)
        attrs = torch.cat([verts.detach().cpu().float() * metres_per_unit, indicators], dim=1)
        lmk = landmarks68.detach().cpu().double().numpy() * metres_per_unit
        scale = None
        if uv.numel() == 0:
            index, size, samples = np.arange(n), None, attrs.double().numpy()
        else:
            mapper = UVMapper(faces.cpu(), uv.cpu(), faces_uv.cpu(), uv_size, num_verts=n)
            flat = mapper.attribute_map(attrs).flatten(2)[0].T  # (S_h * S_w, C)
            index, size = mapper.texel_idx.numpy(), mapper.size
            samples = flat[mapper.texel_idx].double().numpy()
            scale = _layout_scale(attrs[:, :3].double(), faces.cpu(), uv.cpu().double(), faces_uv.cpu(),
                                  regions.get("face"))
        weights = {name: samples[:, 3 + j] for j, name in enumerate(regions)}
        return cls(points=samples[:, :3], regions=weights, landmarks68=lmk, index=index, size=size,
                   metres_per_uv=scale)


def _layout_scale(points: Tensor, faces: Tensor, uv: Tensor, faces_uv: Tensor, region: Tensor | None) -> float:
    """``sqrt(surface area / UV area)`` over the triangles inside ``region`` (vertex ids; all when None)."""
    if region is not None:
        inside = torch.zeros(points.shape[0], dtype=torch.bool)
        inside[region.cpu()] = True
        keep = inside[faces].all(dim=1)
        if keep.any():
            faces, faces_uv = faces[keep], faces_uv[keep]
    tri, tuv = points[faces], uv[faces_uv]
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1).sum()
    e1, e2 = tuv[:, 1] - tuv[:, 0], tuv[:, 2] - tuv[:, 0]
    uv_area = (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).abs().sum()
    return float((area / uv_area.clamp(min=1e-30)).sqrt())


@dataclass
class AlbedoParams:
    """Per-face colours and weights of the procedural albedo (B faces).

    Attributes:
        skin: (B, 3) base skin colour (linear RGB in [0, 1]).
        lips: (B, 3) lip colour.
        hair: (B, 3) scalp hair colour (brows use it, darkened).
        iris: (B, 3) iris colour.
        noise: (B, N_noise) weights of the skin noise fields.
        hair_amount: (B,) 0 bald .. 1 full hair.
        brow_strength: (B,) opacity of the brows.
        blush: (B,) redness of the cheeks.
    """

    skin: Tensor
    lips: Tensor
    hair: Tensor
    iris: Tensor
    noise: Tensor
    hair_amount: Tensor
    brow_strength: Tensor
    blush: Tensor

    def as_vector(self) -> Tensor:
        """(B, 16 + N_noise) all parameters concatenated (a compact ground-truth record)."""
        return torch.cat([self.skin, self.lips, self.hair, self.iris, self.noise, self.hair_amount[:, None],
                          self.brow_strength[:, None], self.blush[:, None]], dim=1)


# Skin tones from light to dark (linear RGB), interpolated piecewise by a uniform draw.
_SKIN_TONES = torch.tensor([[0.95, 0.76, 0.66], [0.85, 0.62, 0.50], [0.70, 0.48, 0.35], [0.50, 0.32, 0.22],
                            [0.32, 0.20, 0.14]])
_HAIR_COLOURS = torch.tensor([[0.04, 0.035, 0.03], [0.14, 0.09, 0.06], [0.30, 0.19, 0.11], [0.72, 0.58, 0.36],
                              [0.50, 0.20, 0.09], [0.62, 0.62, 0.62]])
_HAIR_PROBS = torch.tensor([0.3, 0.25, 0.2, 0.1, 0.05, 0.1])
_IRIS_COLOURS = torch.tensor([[0.30, 0.17, 0.08], [0.16, 0.09, 0.05], [0.28, 0.42, 0.62], [0.30, 0.45, 0.28],
                              [0.45, 0.35, 0.18], [0.45, 0.50, 0.55]])
_SCLERA = (0.86, 0.83, 0.80)
# Wavelengths (m) of the skin noise fields and their default amplitudes (relative colour change per unit weight).
_NOISE_WAVELENGTHS = (0.05, 0.02, 0.008, 0.004)
_NOISE_AMPLITUDES = (0.06, 0.04, 0.02, 0.012)


def _smooth_on_mesh(values: Tensor, faces: Tensor, steps: int) -> Tensor:
    """(V, C) per-vertex values averaged with their mesh neighbours ``steps`` times (uniform Laplacian)."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = torch.cat([edges, edges.flip(1)])  # both directions (shared edges counted twice: harmless weights)
    degree = torch.zeros(values.shape[0]).index_add_(0, edges[:, 0], torch.ones(edges.shape[0]))
    for _ in range(steps):
        total = values.index_add(0, edges[:, 0], values[edges[:, 1]])
        values = total / (1.0 + degree)[:, None]
    return values


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _fourier_noise(p: np.ndarray, rng: np.random.Generator, wavelength: float, n_waves: int = 12,
                   anisotropy: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """(N,) a smooth zero-mean, unit-variance random field: plane waves of one wavelength, random directions."""
    k = rng.standard_normal((n_waves, 3)) * np.asarray(anisotropy)
    k *= (2 * np.pi / wavelength) / np.linalg.norm(k, axis=1, keepdims=True)
    field = np.sin(p @ k.T + rng.uniform(0, 2 * np.pi, n_waves)).sum(axis=1)
    return field / np.sqrt(n_waves / 2)


def polyline_distance(p: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """(N,) distance of points (N, D) to a polyline (M, D)."""
    best = np.full(len(p), np.inf)
    for a, b in zip(polyline[:-1], polyline[1:]):
        ab = b - a
        t = np.clip(((p - a) @ ab) / max(ab @ ab, 1e-12), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(p - (a + t[:, None] * ab), axis=1))
    return best


def _inside_polygon_xy(p: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: points' (x, y) inside a closed polygon (M, 2+) (even-odd rule)."""
    x, y = p[:, 0], p[:, 1]
    inside = np.zeros(len(p), dtype=bool)
    for a, b in zip(polygon, np.roll(polygon, -1, axis=0)):
        crosses = (a[1] > y) != (b[1] > y)
        x_cross = a[0] + (y - a[1]) * (b[0] - a[0]) / np.where(b[1] == a[1], 1e-12, b[1] - a[1])
        inside ^= crosses & (x < x_cross)
    return inside


def _front_of(p: np.ndarray, z_ref: float, depth: float) -> np.ndarray:
    return _smoothstep(z_ref - depth - 0.01, z_ref - depth, p[:, 2])


def _eye_layers(s: TemplateSurface, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Eyeball, iris, pupil, limbus and iris-fibre layers from the eyeball regions (zeros without them)."""
    out = {k: np.zeros(s.num_samples) for k in ("eyeball", "iris", "pupil", "limbus", "fibres")}
    for name in ("left_eyeball", "right_eyeball"):
        w = s.regions.get(name)
        if w is None or not (w > 0.5).any():
            continue
        pts = s.points[w > 0.5]
        centre = 0.5 * (pts.min(axis=0) + pts.max(axis=0))
        rel = s.points - centre
        r = np.linalg.norm(rel, axis=1) + 1e-12
        angle = np.degrees(np.arccos(np.clip(rel[:, 2] / r, -1, 1)))  # from the gaze axis (+z)
        azimuth = np.arctan2(rel[:, 1], rel[:, 0])
        near = w * (r < 2.0 * (pts.max(axis=0) - pts.min(axis=0)).max())
        out["eyeball"] = np.maximum(out["eyeball"], w)
        out["iris"] = np.maximum(out["iris"], near * (1 - _smoothstep(29.0, 32.0, angle)))
        out["pupil"] = np.maximum(out["pupil"], near * (1 - _smoothstep(10.0, 12.0, angle)))
        out["limbus"] = np.maximum(out["limbus"], near * np.exp(-0.5 * ((angle - 30.0) / 2.0) ** 2))
        fibres = sum(np.sin(n * azimuth + rng.uniform(0, 2 * np.pi)) for n in (17, 23, 31, 41)) / 2.0
        out["fibres"] += near * fibres
    return out


def _face_layers(s: TemplateSurface, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Masks of the brows, lips, lid margins, cheeks, under-eye area and hair, and the noise fields."""
    p, lmk = s.points, s.landmarks68
    skin = 1.0 - s.region_weight(("left_eyeball", "right_eyeball"))
    front = _front_of(p, lmk[17:27, 2].min(), 0.03)
    brows = 0.0
    for ids in (range(17, 22), range(22, 27)):
        line = lmk[list(ids), :2] - np.array([0.0, 0.002])
        d = polyline_distance(p[:, :2], line)  # in the image plane: a 3D tube would cut the skin in two lines
        medial = np.exp(-0.5 * (np.abs(p[:, 0]) - 0.012) ** 2 / 0.02**2)  # thicker towards the nose
        brows = np.maximum(brows, np.exp(-((d / (0.0025 + 0.0015 * medial)) ** 4)))  # flat-topped band
    lip_front = _front_of(p, lmk[48:60, 2].min(), 0.012)
    inside = _inside_polygon_xy(p, lmk[48:60]).astype(np.float64)
    lip_edge = np.exp(-0.5 * (polyline_distance(p[:, :2], np.vstack([lmk[48:60], lmk[48:49]])[:, :2]) / 0.0012)
                      ** 2)
    lips = np.maximum(inside, 0.5 * lip_edge) * lip_front
    lids = 0.0
    for ids in ([36, 37, 38, 39], [42, 43, 44, 45]):
        lids = np.maximum(lids, np.exp(-0.5 * (polyline_distance(p[:, :2], lmk[ids, :2]) / 0.0009) ** 2))
    cheek_y = lmk[33, 1] + 0.012
    cheeks = sum(np.exp(-0.5 * (((p[:, 0] - sx * 0.042) / 0.015) ** 2 + ((p[:, 1] - cheek_y) / 0.013) ** 2))
                 for sx in (-1.0, 1.0))
    under_eyes = sum(np.exp(-0.5 * (((p[:, 0] - lmk[c, 0]) / 0.012) ** 2 + ((p[:, 1] - lmk[c, 1] + 0.009)
                                                                             / 0.005) ** 2))
                     for c in (40, 47))
    hair = s.region_weight(("scalp",))
    hair = _smoothstep(0.3, 0.7, hair)  # a soft hairline from the smoothed region border
    layers = {
        "skin": skin,
        "brows": brows * front * skin,
        "lips": lips * skin,
        "lids": lids * front * skin,
        "cheeks": cheeks * front * skin,
        "under_eyes": under_eyes * front * skin,
        "hair": hair * skin,
        "hair_strands": _fourier_noise(p, rng, 0.006, anisotropy=(1.0, 0.1, 1.0)),
        "brow_hairs": _fourier_noise(p, rng, 0.0025, anisotropy=(0.3, 1.0, 0.3)),
    }
    for j, wavelength in enumerate(_NOISE_WAVELENGTHS):
        layers[f"noise{j}"] = _fourier_noise(p, rng, wavelength)
    return layers


class ProceduralAlbedo(nn.Module):
    """Random face albedo textures (or per-vertex colours) from fixed layers and per-face parameters.

    Args:
        surface: the model's :class:`TemplateSurface` (UV texels or vertices).
        seed: seed of the fixed layers (noise fields, iris fibres); the same for every sample of a dataset.
    """

    layers: Tensor
    index: Tensor

    def __init__(self, surface: TemplateSurface, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng([seed, 7])
        named = {**_face_layers(surface, rng), **_eye_layers(surface, rng)}
        self.layer_names = tuple(named)
        stack = np.stack([named[k] * np.ones(surface.num_samples) for k in self.layer_names]).astype(np.float32)
        self.register_buffer("layers", torch.from_numpy(stack), persistent=False)  # (L, N)
        self.register_buffer("index", torch.as_tensor(surface.index, dtype=torch.long), persistent=False)
        self.size = surface.size
        self.num_noise = len(_NOISE_WAVELENGTHS)

    @property
    def is_texture(self) -> bool:
        """True when the albedo is a UV texture, False for per-vertex colours."""
        return self.size is not None

    def _layer(self, name: str) -> Tensor:
        return self.layers[self.layer_names.index(name)]

    def sample_params(self, generator: torch.Generator, batch_size: int = 1) -> AlbedoParams:
        """Draw ``batch_size`` faces' parameters from ``generator`` (CPU)."""
        g = generator

        def u(*shape):
            return torch.rand(*shape, generator=g)

        tone = u(batch_size) * (len(_SKIN_TONES) - 1)
        lo = tone.floor().long().clamp(max=len(_SKIN_TONES) - 2)
        frac = (tone - lo)[:, None]
        skin = (_SKIN_TONES[lo] * (1 - frac) + _SKIN_TONES[lo + 1] * frac) * (1 + 0.05 * torch.randn(
            batch_size, 3, generator=g))
        lips = skin * torch.tensor([0.88, 0.52, 0.55]) * (0.75 + 0.3 * u(batch_size, 1))
        hair_id = torch.multinomial(_HAIR_PROBS, batch_size, replacement=True, generator=g)
        hair = _HAIR_COLOURS[hair_id] * (0.8 + 0.4 * u(batch_size, 1))
        iris = _IRIS_COLOURS[torch.randint(len(_IRIS_COLOURS), (batch_size,), generator=g)] * (0.8 + 0.4 * u(
            batch_size, 1))
        noise = torch.randn(batch_size, self.num_noise, generator=g) * torch.tensor(_NOISE_AMPLITUDES)
        hair_amount = (u(batch_size) > 0.12).float()
        return AlbedoParams(skin=skin.clamp(0, 1), lips=lips.clamp(0, 1), hair=hair.clamp(0, 1),
                            iris=iris.clamp(0, 1), noise=noise, hair_amount=hair_amount,
                            brow_strength=0.55 + 0.4 * u(batch_size), blush=0.15 * u(batch_size))

    def colours(self, params: AlbedoParams) -> Tensor:
        """(B, 3, N) albedo at the surface samples."""
        L = self._layer
        noise = torch.stack([L(f"noise{j}") for j in range(self.num_noise)])  # (N_noise, N)
        mottle = 1.0 + params.noise.to(noise) @ noise  # (B, N)
        c = params.skin[:, :, None] * mottle[:, None]
        redness = torch.tensor([0.0, 0.3, 0.25]).to(c)[None, :, None]
        c = c * (1 - params.blush[:, None, None] * L("cheeks") * redness)
        c = c * (1 - 0.12 * L("under_eyes") * torch.tensor([0.8, 1.0, 0.7]).to(c)[None, :, None])
        c = torch.lerp(c, params.lips[:, :, None] * mottle[:, None], L("lips").expand_as(c))
        brow_colour = params.hair[:, :, None] * 0.7
        brow_alpha = params.brow_strength[:, None, None] * L("brows") * (0.75 + 0.25 * L("brow_hairs"))
        c = torch.lerp(c, brow_colour, brow_alpha.clamp(0, 1).expand_as(c))
        strands = 1.0 + 0.18 * L("hair_strands")
        hair_alpha = (params.hair_amount[:, None, None] * L("hair")).expand_as(c)
        c = torch.lerp(c, params.hair[:, :, None] * strands, hair_alpha)
        c = c * (1 - 0.6 * L("lids"))
        c = self._eyes(c, params)
        return c.clamp(0.0, 1.0)

    def _eyes(self, c: Tensor, params: AlbedoParams) -> Tensor:
        L = self._layer
        sclera = torch.tensor(_SCLERA).to(c)[None, :, None].expand_as(c)
        iris = params.iris[:, :, None] * (1 + 0.25 * L("fibres")) * (1 - 0.6 * L("limbus"))
        eye = torch.lerp(sclera, iris, L("iris").expand_as(c))
        eye = eye * (1 - 0.97 * L("pupil"))
        return torch.lerp(c, eye, L("eyeball").expand_as(c))

    def forward(self, params: AlbedoParams) -> Tensor:
        """The albedo of ``B`` faces.

        Returns:
            (B, 3, S_h, S_w) UV texture (texels off every chart take the skin colour, so bilinear lookups at
            chart borders do not bleed black) or, for a per-vertex surface, (B, V, 3) vertex colours.
        """
        c = self.colours(params)
        if not self.is_texture:
            return c.transpose(1, 2)
        b = c.shape[0]
        tex = params.skin.to(c)[:, :, None].expand(b, 3, self.size[0] * self.size[1]).clone()
        tex[:, :, self.index] = c
        return tex.view(b, 3, *self.size)

    def extra_repr(self) -> str:
        return f"layers={len(self.layer_names)}, size={self.size}, samples={self.layers.shape[1]}"
