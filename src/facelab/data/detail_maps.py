"""Displacement maps of the synthetic bilinear face world, generated directly in UV (no rendering).

The embedded stand-in for FaceScape's displacement maps (DNPM's training data): a float map in **millimetres**
(negative = groove) on the synthetic bilinear model's UV layout (:func:`facelab.morphable.load_model`
``("bilinear", "synthetic")``), a deterministic function of FaceScape-style coefficients:

    ``identity``   (50,) the bilinear identity coefficients (``BilinearParams.identity``, ``~N(0, I)``);
    ``expression`` (52,) FaceScape's full expression vector ``w_exp = [1, b_1, ..., b_51]`` (the neutral weight 1,
                   then the 51 blendshape weights ``BilinearParams.expression``).

A map is three terms (all on the texels of the layout, zero far outside the face)::

    d(id, exp) = sum_p [ a_p(exp) g_p(id) + s_p(id) ] P_p  +  n(id)

* ``P_p``: the expression-wrinkle patterns of the synthetic world (:data:`facelab.data.wrinkles.WRINKLE_PATTERNS`,
  evaluated by :class:`facelab.data.wrinkles.WrinkleModel` at a resolution that resolves the grooves and
  area-averaged to the requested one, so a 32^2 map is the box filter of the 512^2 one, never an aliased sample);
* ``a_p(exp)``: the pattern activations of the expression (the synthetic world's
  :class:`~facelab.data.wrinkles.ActionUnitMap` -> action channels -> :meth:`WrinkleModel.activations`): the same
  wrinkles the rendered synthetic faces carry;
* ``g_p(id)``: a per-identity **wrinkle depth** factor: ``depth_range`` interpolated by the identity's *age*
  ``age(id) = sigmoid(age_slope * u_age . id + age_offset)`` in (0, 1), times a per-pattern log-normal jitter
  ``exp(depth_jitter * G_p . id)`` (left and right patterns share it);
* ``s_p(id) = static_depth * age^2 * r_p``: **static age lines**, expression-independent (the neutral face of an old
  identity already has forehead lines, nasolabial folds and crow's feet; :data:`STATIC_LINES` gives ``r_p``);
* ``n(id)``: **skin grain and pores**, band-limited noise of :data:`GRAIN_WAVELENGTHS_MM`; its amplitude
  ``grain_mm * (1 + grain_age_gain * age) * exp(grain_jitter * u_amp . id)`` and its dominant wavelength
  ``grain_wavelength_mm * exp(wavelength_jitter * u_freq . id)`` depend on the identity; the layout of the noise is
  a per-identity circular shift of fixed periodic noise textures, seeded by a hash of the identity vector
  (rounded to 1e-4).
  Bands finer than the texels are attenuated as an area average would (std ``x 2 sqrt(pi) sigma / texel``).

The directions ``u_age``, ``u_amp``, ``u_freq`` and ``G`` are fixed random unit vectors of the world seed
(:class:`DetailWorld`), so identity -> detail is a smooth (learnable) function plus the per-identity noise layout.
Every map is exactly reproducible from ``(identity, expression)``.

:class:`DisplacementMapModel` is the op as a module (buffers precomputed per resolution; a batch is one small matrix
product plus the grain); :class:`SyntheticDisplacementDataset` draws identities and expressions with seeds and
splits (FaceScape-like: ``expressions_per_identity`` maps per subject, the first one neutral) and a sweep mode
(smooth expression trajectories, ``sequence_length``). Samples are :class:`DisplacementSample`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.data.albedo import UNITS_TO_METRES, TemplateSurface
from facelab.data.synthetic import SPLIT_OFFSETS, SceneConfig
from facelab.data.wrinkles import ActionUnitMap, WrinkleModel, head_expression_offset, wrinkle_map_size
from facelab.morphable import load_model
from facelab.morphable.base import MorphableModel

__all__ = [
    "GRAIN_WAVELENGTHS_MM",
    "MAX_RESOLUTION",
    "MIN_RESOLUTION",
    "STATIC_LINES",
    "DetailWorld",
    "DisplacementBatch",
    "DisplacementMapModel",
    "DisplacementSample",
    "IdentityDetail",
    "SyntheticDisplacementDataset",
    "displacement_std_mm",
    "full_expression",
    "identity_seed",
]

MIN_RESOLUTION, MAX_RESOLUTION = 32, 1024
#: Wavelengths (mm on the face) of the skin-grain noise bands: pores (0.5-1 mm) to coarse skin texture (8 mm).
GRAIN_WAVELENGTHS_MM = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Relative strength of each wrinkle group as a static (rest) age line; unlisted patterns have none.
STATIC_LINES = {"forehead": 0.7, "glabella": 0.5, "crows_feet": 0.6, "lower_lid": 0.4, "nasolabial": 0.9,
                "marionette": 0.5, "lip_lines": 0.3}


def _group(name: str) -> str:
    """Pattern name without its side (``crows_feet_left`` -> ``crows_feet``; ``forehead_center`` -> ``forehead``)."""
    for suffix in ("_left", "_right", "_center"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class DetailWorld:
    """How identity shapes the detail (see the module docstring; all maps are deterministic in these settings).

    Attributes:
        seed: seed of the fixed identity directions and noise textures (the identity -> detail function).
        age_slope, age_offset: ``age = sigmoid(age_slope * u_age . id + age_offset)``.
        depth_range: expression-wrinkle depth factor at age 0 and at age 1.
        depth_jitter: log-std of the per-pattern depth factor across identities (``id ~ N(0, I)``).
        static_depth: activation of the static age lines at age 1 (times :data:`STATIC_LINES`).
        grain_mm: skin-grain std (mm, at full resolution) of an identity of age 0 and zero jitter.
        grain_age_gain: relative grain increase at age 1.
        grain_jitter: log-std of the grain amplitude across identities.
        grain_wavelength_mm: median dominant wavelength of the grain.
        wavelength_jitter: log-std of the dominant wavelength across identities.
        band_width: width (octaves, Gaussian std) of the grain spectrum around its dominant wavelength.
    """

    seed: int = 0
    age_slope: float = 1.5
    age_offset: float = 0.0
    depth_range: tuple[float, float] = (0.6, 1.5)
    depth_jitter: float = 0.25
    static_depth: float = 0.45
    grain_mm: float = 0.05
    grain_age_gain: float = 1.0
    grain_jitter: float = 0.3
    grain_wavelength_mm: float = 2.0
    wavelength_jitter: float = 0.4
    band_width: float = 1.0


@dataclass
class IdentityDetail:
    """What an identity contributes to its maps (B identities).

    Attributes:
        age: (B,) in (0, 1).
        gain: (B, P) expression-wrinkle depth factor per pattern.
        static: (B, P) static activation per pattern.
        grain: (B, 1, R, R) skin grain and pores in millimetres.
    """

    age: Tensor
    gain: Tensor
    static: Tensor
    grain: Tensor


@dataclass
class DisplacementSample:
    """One displacement map with its coefficients (``R`` the map side; sweeps add a leading ``T``).

    Attributes:
        map: (1, R, R) float32 displacement in millimetres (or in training units after normalisation).
        identity: (50,) bilinear identity coefficients.
        expression: (52,) FaceScape expression vector (``[0] = 1``).
        mask: (1, R, R) float32 UV validity (1 on texels of the face's UV charts).
        key: a stable name of the sample (e.g. ``train/id12/exp3`` or a FaceScape file stem).
        subject: the identity's index within its split (synthetic) or the FaceScape subject id.
    """

    map: Tensor
    identity: Tensor
    expression: Tensor
    mask: Tensor
    key: str = ""
    subject: int = -1

    @classmethod
    def collate(cls, samples: list[DisplacementSample]) -> DisplacementBatch:
        """Stack samples into a :class:`DisplacementBatch`."""
        stack = {f: torch.stack([getattr(s, f) for s in samples]) for f in ("map", "identity", "expression")}
        first = samples[0].mask
        same = all(s.mask is first for s in samples)  # one UV layout (the synthetic world): a view, not B copies
        stack["mask"] = first.expand(len(samples), *first.shape) if same else torch.stack([s.mask for s in samples])
        return DisplacementBatch(**stack, key=[s.key for s in samples],
                                 subject=torch.tensor([s.subject for s in samples]))


@dataclass
class DisplacementBatch:
    """A batch of :class:`DisplacementSample` (``B`` maps; sweeps: (B, T, ...)).

    Attributes:
        map: (B, 1, R, R) float32 displacement (mm, or training units: ``map * scale_mm`` is mm).
        identity: (B, 50). expression: (B, 52). mask: (B, 1, R, R).
        key: B sample names. subject: (B,) long.
        scale_mm: millimetres per unit of ``map`` (1 for maps in mm).
    """

    map: Tensor
    identity: Tensor
    expression: Tensor
    mask: Tensor
    key: list[str]
    subject: Tensor
    scale_mm: float = 1.0

    def __len__(self) -> int:
        return self.map.shape[0]

    def to(self, *args, **kwargs) -> DisplacementBatch:
        moved = {f.name: getattr(self, f.name).to(*args, **kwargs) for f in fields(self)
                 if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **moved)

    def pin_memory(self) -> DisplacementBatch:
        # an expanded (stride-0) mask cannot be pinned in place: pin a dense copy
        return replace(self, **{f.name: getattr(self, f.name).contiguous().pin_memory() for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})

    def normalized(self, scale_mm: float) -> DisplacementBatch:
        """The batch with ``map`` in units of ``scale_mm`` millimetres (e.g. the dataset's std: unit variance)."""
        return replace(self, map=self.map * (self.scale_mm / scale_mm), scale_mm=float(scale_mm))

    def map_mm(self) -> Tensor:
        """(B, 1, R, R) the maps in millimetres."""
        return self.map * self.scale_mm


def full_expression(blendshapes: Tensor) -> Tensor:
    """(..., 51) blendshape weights -> (..., 52) FaceScape expression vector ``[1, b]``."""
    return torch.cat([blendshapes.new_ones(*blendshapes.shape[:-1], 1), blendshapes], dim=-1)


def _area_resize(x: Tensor, size: int) -> Tensor:
    """(N, C, S, S) -> (N, C, size, size) by area averaging (exact box filter for integer factors)."""
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Circular Gaussian blur of (N, 1, S, S) by FFT (the noise textures tile, so shifts have no seams)."""
    s = x.shape[-1]
    f = torch.fft.fftfreq(s, dtype=torch.float64)
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    h = torch.exp(-2.0 * math.pi**2 * sigma**2 * k2)
    return torch.fft.ifft2(torch.fft.fft2(x.double()) * h).real.to(x.dtype)


def identity_seed(identity: Tensor) -> int:
    """A 63-bit seed from an identity vector rounded to 1e-4 (the same vector always gives the same seed)."""
    q = np.round(identity.detach().cpu().double().numpy() * 1e4).astype(np.int64)
    return int.from_bytes(hashlib.sha1(q.tobytes()).digest()[:8], "little") >> 1


class DisplacementMapModel(nn.Module):
    """(identity, expression) -> displacement map in mm on the synthetic bilinear UV layout (module docstring).

    Buffers: ``patterns`` (P, R*R) the wrinkle patterns at activation 1 (mm), ``mask`` (1, 1, R, R) UV validity,
    ``support`` (1, 1, R, R) the mask grown by two texels (the maps are defined there), ``noise`` (N_b, 2R, 2R) unit
    grain bands (periodic, tiled twice), ``directions`` (3 + P_g, K) the identity directions, ``static_lines`` (P,).

    Args:
        model: the synthetic bilinear model (``load_model("bilinear", "synthetic")``).
        resolution: map side R in [32, 1024].
        world: the identity -> detail settings (:class:`DetailWorld` defaults when None).
        wrinkle_depth, wrinkle_width: factors on the wrinkle patterns' depths and widths (as
            ``SceneConfig.wrinkle_depth`` / ``wrinkle_width`` of the rendered world).
    """

    patterns: Tensor
    mask: Tensor
    support: Tensor
    noise: Tensor
    directions: Tensor
    static_lines: Tensor
    group_index: Tensor
    drive: Tensor
    band_gain: Tensor

    def __init__(self, model: MorphableModel, resolution: int = 256, world: DetailWorld | None = None,
                 wrinkle_depth: float = 1.0, wrinkle_width: float = 1.0):
        super().__init__()
        if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
            raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution}")
        offset = head_expression_offset(model)
        if offset is None or not model.has_uv or model.num_expression != 51:
            raise ValueError("DisplacementMapModel needs the synthetic bilinear model (labelled expressions, a UV "
                             f"layout, 51 blendshapes); got {type(model).__name__} (synthetic={model.is_synthetic})")
        self.world = world or DetailWorld()
        self.resolution = int(resolution)
        self.num_identity = int(model.num_identity)
        self.au_map = ActionUnitMap.for_model(model)
        fine = _fine_wrinkles(model, self.resolution, wrinkle_depth, wrinkle_width)
        self.names = fine.names
        self.texel_mm = fine.metres_per_uv / self.resolution * 1e3
        cover = _area_resize(fine.valid[None, None], self.resolution)
        self.register_buffer("mask", (cover >= 0.5).float(), persistent=False)
        self.register_buffer("support", (F.max_pool2d(cover, 5, 1, 2) > 0).float(), persistent=False)
        maps = _area_resize(fine.patterns[None], self.resolution)[0] * self.support[0]
        self.register_buffer("patterns", maps.reshape(len(self.names), -1).contiguous(), persistent=False)
        self.register_buffer("drive", fine.drive.clone(), persistent=False)  # (C, P) WrinkleModel.activations
        groups = sorted({_group(n) for n in self.names})
        self.register_buffer("group_index", torch.tensor([groups.index(_group(n)) for n in self.names]),
                             persistent=False)
        self.register_buffer("static_lines", torch.tensor([STATIC_LINES.get(_group(n), 0.0) for n in self.names]),
                             persistent=False)
        self._build_world(len(groups))

    def _build_world(self, num_groups: int) -> None:
        w, r, k = self.world, self.resolution, self.num_identity
        g = torch.Generator().manual_seed(int(w.seed) * 7919 + 17)
        directions = F.normalize(torch.randn(3 + num_groups, k, generator=g, dtype=torch.float64), dim=1)
        self.register_buffer("directions", directions.float(), persistent=False)
        bands, gains = [], []
        for wavelength in GRAIN_WAVELENGTHS_MM:
            sigma_texels = wavelength / 4.0 / self.texel_mm  # Gaussian std of the band's features, in texels
            white = torch.randn(1, 1, r, r, generator=g, dtype=torch.float64)
            band = _gaussian_blur(white, max(sigma_texels, 0.3))
            bands.append((band / band.std()).float()[0, 0])
            gains.append(min(1.0, 2.0 * math.sqrt(math.pi) * sigma_texels))  # area-average attenuation
        # tiled 2 x 2 (the textures are periodic): a shifted copy is a slice, not a roll
        self.register_buffer("noise", torch.stack(bands).repeat(1, 2, 2).contiguous(), persistent=False)
        self.register_buffer("band_gain", torch.tensor(gains), persistent=False)

    # ------------------------------------------------------------------------------------------- identity
    def age(self, identity: Tensor) -> Tensor:
        """(B, K) identity -> (B,) age in (0, 1)."""
        w = self.world
        return torch.sigmoid(w.age_slope * (identity @ self.directions[0]) + w.age_offset)

    def identity_detail(self, identity: Tensor, seeds: list[int] | None = None) -> IdentityDetail:
        """What identities contribute (see the module docstring).

        Args:
            identity: (B, K) identity coefficients.
            seeds: per-identity noise-layout seeds (default: :func:`identity_seed` of each row).
        """
        self._check(identity, self.num_identity, "identity")
        w, identity = self.world, identity.to(self.patterns)
        age = self.age(identity)
        proj = identity @ self.directions.T  # (B, 3 + G)
        lo, hi = w.depth_range
        jitter = torch.exp(w.depth_jitter * proj[:, 3:])  # unit directions: proj ~ N(0, 1) for id ~ N(0, I)
        gain = (lo + (hi - lo) * age)[:, None] * jitter[:, self.group_index]
        static = w.static_depth * age[:, None] ** 2 * self.static_lines
        amplitude = w.grain_mm * (1.0 + w.grain_age_gain * age) * torch.exp(w.grain_jitter * proj[:, 1])
        peak = math.log2(w.grain_wavelength_mm) + w.wavelength_jitter * proj[:, 2] / math.log(2.0)
        octave = torch.log2(torch.tensor(GRAIN_WAVELENGTHS_MM, dtype=identity.dtype, device=identity.device))
        weights = torch.exp(-0.5 * ((octave[None] - peak[:, None]) / w.band_width) ** 2)
        weights = weights / weights.norm(dim=1, keepdim=True) * amplitude[:, None] * self.band_gain
        seeds = [identity_seed(z) for z in identity] if seeds is None else seeds
        r = self.resolution
        grain = identity.new_empty(len(seeds), 1, r, r)
        for b, (wk, seed) in enumerate(zip(weights, seeds)):
            dy, dx = seed % r, (seed // r) % r  # this identity's pore layout: a circular shift of the textures
            torch.tensordot(wk, self.noise[:, dy:dy + r, dx:dx + r], dims=1, out=grain[b, 0])
        return IdentityDetail(age=age, gain=gain, static=static, grain=grain.mul_(self.support[0]))

    # ------------------------------------------------------------------------------------------- maps
    def activations(self, expression: Tensor) -> Tensor:
        """(B, 52) FaceScape expression vectors -> (B, P) wrinkle-pattern activations in [0, 1]."""
        self._check(expression, 52, "expression")
        channels = self.au_map.channels(expression[:, 1:].to(self.patterns))
        return (channels @ self.drive).clamp(0.0, 1.0)  # = WrinkleModel.activations

    def compose(self, detail: IdentityDetail, expression: Tensor) -> Tensor:
        """Maps of B (identity, expression) pairs from precomputed identity terms (one row of ``detail`` per map).

        Returns:
            (B, 1, R, R) displacement in millimetres.
        """
        weights = self.activations(expression) * detail.gain + detail.static  # (B, P)
        r = self.resolution
        return torch.addmm(detail.grain.reshape(-1, r * r), weights, self.patterns).view(-1, 1, r, r)

    def forward(self, identity: Tensor, expression: Tensor) -> Tensor:
        """(B, 50) identity, (B, 52) expression -> (B, 1, R, R) displacement map in millimetres."""
        if identity.shape[0] != expression.shape[0]:
            raise ValueError(f"identity and expression batches differ: {identity.shape[0]} vs {expression.shape[0]}")
        return self.compose(self.identity_detail(identity), expression)

    @staticmethod
    def _check(x: Tensor, k: int, name: str) -> None:
        if x.dim() != 2 or x.shape[1] != k:
            raise ValueError(f"{name} must be (B, {k}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} has non-finite values")
        if name == "expression" and not torch.allclose(x[:, 0], torch.ones_like(x[:, 0])):
            raise ValueError("expression must be FaceScape's 52-vector whose entry 0 (the neutral weight) is 1")

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, patterns={len(self.names)}, texel={self.texel_mm:.2f} mm"


@dataclass
class _FineWrinkles:
    """The wrinkle patterns evaluated on a UV layout fine enough for the grooves (``S`` >= 2 texels across each)."""

    names: tuple[str, ...]
    patterns: Tensor  # (P, S, S) mm at activation 1
    valid: Tensor  # (S, S) texels covered by the layout
    drive: Tensor  # (C, P) action channel -> pattern weights
    metres_per_uv: float


#: Fine wrinkle patterns per bilinear model (shared by every resolution that divides the fine layout).
_FINE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fine_wrinkles(model: MorphableModel, resolution: int, depth: float, width: float) -> _FineWrinkles:
    """:class:`WrinkleModel` patterns at ``resolution * 2^k``, the smallest multiple that resolves the grooves
    (:func:`facelab.data.wrinkles.wrinkle_map_size`; 512 for the synthetic bilinear layout up to 512^2 maps)."""
    per_model = _FINE.setdefault(model, {})
    zeros = torch.zeros(1, model.num_identity), torch.zeros(1, model.num_expression)
    with torch.no_grad():
        template = model(model.make_params(*zeros))
    verts, lmk, mpu = template.verts[0], template.landmarks68[0], UNITS_TO_METRES[model.units]

    def surface_at(size: int) -> TemplateSurface:
        return TemplateSurface.from_mesh(verts, model.faces, model.uv, model.faces_uv, model.regions, lmk, mpu, size)

    if "metres_per_uv" not in per_model:
        per_model["metres_per_uv"] = surface_at(64).metres_per_uv
    need = wrinkle_map_size(per_model["metres_per_uv"], width)
    fine = resolution * 2 ** math.ceil(math.log2(max(need / resolution, 1.0)))
    key = (fine, float(depth), float(width))
    if key not in per_model:
        surface = surface_at(fine)
        wrinkles = WrinkleModel(surface, depth_scale=depth, width_scale=width).float()
        valid = torch.zeros(fine * fine)
        valid[torch.from_numpy(surface.index)] = 1.0
        per_model[key] = _FineWrinkles(wrinkles.names, wrinkles.pattern_maps(), valid.view(fine, fine),
                                       wrinkles.drive.float(), float(surface.metres_per_uv))
    return per_model[key]


@functools.lru_cache(maxsize=4)
def _bilinear_model(model_path: str) -> MorphableModel:
    """The bilinear model of ``model_path``, loaded once per process (read-only: shared by every dataset)."""
    return load_model("bilinear", model_path).eval()


#: Map models shared by the datasets of one bilinear model (a DataModule's splits): model -> {settings: module}.
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _shared_map_model(model: MorphableModel, resolution: int, world: DetailWorld, depth: float,
                      width: float) -> DisplacementMapModel:
    per_model = _SHARED.setdefault(model, {})
    settings = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(vars(world).items()))
    key = (resolution, settings, depth, width)
    if key not in per_model:
        per_model[key] = DisplacementMapModel(model, resolution, world, depth, width)
    return per_model[key]


def _smoothstep(t: Tensor) -> Tensor:
    return t * t * (3.0 - 2.0 * t)


class SyntheticDisplacementDataset(torch.utils.data.Dataset):
    """FaceScape-like displacement maps of the synthetic bilinear world (module docstring), with known coefficients.

    Sample ``i`` is expression ``i % E`` of identity ``i // E`` (``E = expressions_per_identity``); expression 0 of
    every identity is the neutral face (``include_neutral``). Identities are drawn from ``(seed, split, identity)``
    and expressions from ``(seed, split, identity, expression)``, so splits hold disjoint identities and every worker
    and DDP rank produces the same sample for the same index. Expressions follow the synthetic world's prior for the
    stand-in (:class:`facelab.data.synthetic.SceneConfig`: ``expression_active_prob`` of the named components active,
    ``jaw_open_prob`` / ``jaw_open_max`` for the jaw-opening blendshape).

    Args:
        num_identities: identities in the split.
        expressions_per_identity: maps per identity (FaceScape: 20).
        split: ``train`` | ``val`` | ``test``.
        seed: sampling seed (identities and expressions); the identity -> detail function is ``world.seed``.
        resolution: map side in [32, 1024].
        model_path: the bilinear stand-in (``"synthetic"``).
        world: identity -> detail settings (:class:`DetailWorld`).
        scene: the expression / identity prior (:class:`SceneConfig`; ``identity_scale``, ``expression_*``,
            ``jaw_open_*``, ``wrinkle_depth``, ``wrinkle_width``, ``keyframe_interval`` are used).
        include_neutral: expression 0 of each identity is the neutral face.
        sequence_length: 0: single maps; ``T``: sweeps of T frames per item (smoothstep-interpolated expression
            keyframes every ``scene.keyframe_interval`` frames, from the neutral face), maps (T, 1, R, R).
        cache_mb: memory (MiB, per process) for the per-identity terms of recently seen identities (LRU; 256 MiB
            keeps 1024 identities at 256^2, all of a FaceScape-sized split at 128^2).
        model: an already built bilinear model (overrides ``model_path``).
    """

    def __init__(
        self,
        num_identities: int = 1000,
        expressions_per_identity: int = 20,
        split: Literal["train", "val", "test"] = "train",
        seed: int = 0,
        resolution: int = 64,
        model_path: str = "synthetic",
        world: DetailWorld | None = None,
        scene: SceneConfig | None = None,
        include_neutral: bool = True,
        sequence_length: int = 0,
        cache_mb: float = 256.0,
        model: MorphableModel | None = None,
    ) -> None:
        super().__init__()
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got '{split}'")
        if num_identities < 0 or expressions_per_identity < 1 or sequence_length < 0:
            raise ValueError("need num_identities >= 0, expressions_per_identity >= 1 and sequence_length >= 0")
        self.num_identities, self.expressions_per_identity = int(num_identities), int(expressions_per_identity)
        self.split, self.seed, self.resolution = split, int(seed), int(resolution)
        self.world, self.scene = world or DetailWorld(), scene or SceneConfig()
        self.include_neutral, self.sequence_length = include_neutral, int(sequence_length)
        self.model = model.eval() if model is not None else _bilinear_model(str(model_path))
        self.maps = _shared_map_model(self.model, self.resolution, self.world, self.scene.wrinkle_depth,
                                      self.scene.wrinkle_width)
        self._jaw = self.model.jaw_open_component  # (component, radians per unit)
        self._offset = head_expression_offset(self.model)
        self.num_identity, self.num_expression = int(self.model.num_identity), int(self.model.num_expression)
        self._cache: OrderedDict[int, tuple[Tensor, IdentityDetail]] = OrderedDict()
        self._cache_size = max(1, int(cache_mb * 2**20 / (4 * self.resolution**2 + 1024)))

    def __len__(self) -> int:
        return self.num_identities * self.expressions_per_identity

    def __getstate__(self) -> dict:
        """Pickled for spawned workers without the bilinear model (its ~150 MB core; the maps need only
        :attr:`maps`); ``model`` is None there."""
        state = self.__dict__.copy()
        state["model"], state["_cache"] = None, OrderedDict()
        return state

    def _generator(self, *key: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, SPLIT_OFFSETS[self.split], *key]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def identity(self, subject: int) -> Tensor:
        """(50,) identity coefficients of identity ``subject`` of this split."""
        g = self._generator(int(subject), 0)
        return torch.randn(self.num_identity, generator=g) * self.scene.identity_scale

    def _blendshapes(self, g: torch.Generator) -> Tensor:
        """(51,) one expression of the stand-in's prior (as the rendered synthetic world draws them)."""
        s, k, off, n = self.scene, self.num_expression, self._offset, 28
        std = torch.full((k,), 0.25)
        std[off:off + n] = 1.0
        active = torch.ones(k, dtype=torch.bool)
        active[off:off + n] = torch.rand(n, generator=g) < s.expression_active_prob
        exp = torch.randn(k, generator=g) * std * active * s.expression_scale
        opening = torch.rand((), generator=g) * s.jaw_open_max * (torch.rand((), generator=g) < s.jaw_open_prob)
        exp[self._jaw[0]] = opening / self._jaw[1]
        return exp

    def expression(self, subject: int, index: int) -> Tensor:
        """(52,) FaceScape expression vector of expression ``index`` of identity ``subject`` (single-map mode)."""
        if self.include_neutral and index == 0:
            return full_expression(torch.zeros(self.num_expression))
        return full_expression(self._blendshapes(self._generator(int(subject), 1 + int(index))))

    def sweep(self, subject: int, index: int = 0, length: int | None = None) -> Tensor:
        """(T, 52) a smooth expression trajectory of identity ``subject``: neutral, then keyframes every
        ``scene.keyframe_interval`` frames, smoothstep-interpolated."""
        t_len = int(length or self.sequence_length or 1)
        step = max(1, self.scene.keyframe_interval)
        g = self._generator(int(subject), 10**6 + int(index))
        n_keys = (t_len - 1) // step + 2
        keys = torch.stack([torch.zeros(self.num_expression)] +
                           [self._blendshapes(g) for _ in range(n_keys - 1)])
        t = torch.arange(t_len, dtype=torch.float32) / step
        lo = t.floor().long()
        w = _smoothstep(t - lo)[:, None]
        return full_expression(torch.lerp(keys[lo], keys[lo + 1], w))

    def _identity_detail(self, subjects: list[int]) -> tuple[Tensor, IdentityDetail]:
        """Identity vectors and detail terms of several identities (LRU-cached per process)."""
        missing = sorted({s for s in subjects if s not in self._cache})
        if missing:
            ids = torch.stack([self.identity(s) for s in missing])
            detail = self.maps.identity_detail(ids)
            for j, s in enumerate(missing):
                self._cache[s] = (ids[j], IdentityDetail(*(getattr(detail, f.name)[j:j + 1]
                                                           for f in fields(IdentityDetail))))
        for s in subjects:
            self._cache.move_to_end(s)
        rows = [self._cache[s] for s in subjects]
        while len(self._cache) > max(self._cache_size, len(set(subjects))):
            self._cache.popitem(last=False)
        ids = torch.stack([r[0] for r in rows])
        detail = IdentityDetail(*(torch.cat([getattr(r[1], f.name) for r in rows]) for f in fields(IdentityDetail)))
        return ids, detail

    def __getitem__(self, index: int) -> DisplacementSample:
        return self.__getitems__([index])[0]

    @torch.no_grad()
    def __getitems__(self, indices: list[int]) -> list[DisplacementSample]:
        """Several samples at once: identity terms once per identity, one matrix product for all expressions."""
        for i in indices:
            if not 0 <= int(i) < len(self):
                raise IndexError(f"index {i} out of range for a split of {len(self)}")
        subjects = [int(i) // self.expressions_per_identity for i in indices]
        slots = [int(i) % self.expressions_per_identity for i in indices]
        t = self.sequence_length
        if t:
            exps = torch.cat([self.sweep(s, j) for s, j in zip(subjects, slots)])  # (B T, 52)
        else:
            exps = torch.stack([self.expression(s, j) for s, j in zip(subjects, slots)])
        ids, detail = self._identity_detail(subjects)
        if t:
            detail = IdentityDetail(*(getattr(detail, f.name).repeat_interleave(t, 0) for f in fields(IdentityDetail)))
        maps = self.maps.compose(detail, exps)
        mask = self.maps.mask[0]
        out = []
        for b, (s, j) in enumerate(zip(subjects, slots)):
            sl = slice(b * t, (b + 1) * t) if t else b
            m = maps[sl]
            out.append(DisplacementSample(map=m, identity=ids[b], expression=exps[sl],
                                          mask=mask.expand(t, *mask.shape) if t else mask,
                                          key=f"{self.split}/id{s}/{'seq' if t else 'exp'}{j}", subject=s))
        return out


def displacement_std_mm(dataset: torch.utils.data.Dataset, num_samples: int = 256, batch: int = 32) -> float:
    """The std (mm) of a dataset's maps inside their masks over its first ``num_samples`` items (deterministic).

    Args:
        dataset: yields :class:`DisplacementSample` (maps in mm).
        num_samples: how many items to read (all when the dataset is shorter).
        batch: items per ``__getitems__`` call.
    """
    n = min(len(dataset), int(num_samples))
    if n == 0:
        raise ValueError("cannot estimate the displacement std of an empty dataset")
    total, sq, count = 0.0, 0.0, 0.0
    get = getattr(dataset, "__getitems__", None)
    for start in range(0, n, batch):
        idx = list(range(start, min(n, start + batch)))
        samples = get(idx) if get is not None else [dataset[i] for i in idx]
        for s in samples:
            m, w = s.map.double(), s.mask.double().expand_as(s.map)
            total += float((m * w).sum())
            sq += float((m * m * w).sum())
            count += float(w.sum())
    if count == 0:
        raise ValueError("every mask is empty: cannot estimate the displacement std")
    mean = total / count
    return math.sqrt(max(sq / count - mean * mean, 0.0))
