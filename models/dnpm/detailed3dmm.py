"""Detailed3DMM (DNPM paper §III-A, Eq. 2-7): (identity, expression) -> bilinear proxy mesh + DNPM detail.

    V_h = V_p + V_r                                                    (Eq. 2)
    V_p = C_r x w_id x w_exp                  (the bilinear model)     (Eq. 3)
    V_r = T'(s * G(E(w_id, w_exp) + w_mean))  (detail along normals)   (Eq. 4)

``E`` maps the FaceScape identity (50) and expression (52, leading neutral weight 1) vectors to an offset in the
w+ space of the pre-trained, frozen DNPM generator ``G``; ``w_mean`` is the generator's average w. ``T'`` samples
the generated displacement map at each vertex's UV on a midpoint-subdivided proxy (so the detail has vertices to
live on) and moves the vertex along its normal by ``s`` times the sampled value.

Units: the generator works in the FaceScape *encoding* of a displacement map, ``(v - 32768) / 32768`` of the
uint16 PNG, i.e. values in [-1, 1]; ``s = 0.914`` mm per unit (FaceScape's scale) turns them into millimetres,
the bilinear model's units.

Encoders (Table I):

* :class:`StyleMLPEncoder` with ``encoder_input="params"`` is ``E_id,exp``: a ReLU MLP on ``[w_id, w_exp]`` whose
  second layer also sees ``w_exp`` (the NeRF-style skip: ``w_exp`` concatenated to the first layer's activation);
  styles come from the 3rd, 4th and 5th layers' activations, 9 / 5 / 4 of the 18 (pSp-style: coarse, middle, fine),
  scaled to ``n_latent`` at other resolutions (:func:`style_split`).
* ``encoder_input="mesh1700" | "mesh5000"``: ``E_1700`` / ``E_5000``, the same MLP on the proxy mesh downsampled to
  1700 / 5000 points (:class:`ProxyPointSampler`: fixed points on the surface, barycentric, so the count does not
  depend on the model's vertex count), centred on the mean face; no skip.

Shapes: ``B`` batch, ``V`` vertices, ``K`` identity components (50), ``E`` expression entries (52),
``N`` latents (``n_latent``), ``D`` w size, ``S`` map side.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.morphable import BilinearModel, BilinearParams
from facelab.morphable.base import barycentric_points
from facelab.render import MeshRenderer, WeakPerspectiveCamera, shape_lights
from facelab.uv import DisplacementMapper

__all__ = [
    "FACESCAPE_MM_PER_UNIT",
    "NUM_EXPRESSION_VECTOR",
    "DetailedMesh",
    "Detailed3DMM",
    "EncoderInput",
    "ProxyPointSampler",
    "StyleMLPEncoder",
    "SynthesisNetwork",
    "bilinear_model",
    "build_encoder",
    "check_latents",
    "colorize_displacement",
    "map_lpips",
    "expression_vector",
    "render_meshes",
    "style_split",
    "synthesize",
]

#: Millimetres per unit of the FaceScape displacement encoding ``(v - 32768) / 32768`` (the ``s`` of Eq. 4).
FACESCAPE_MM_PER_UNIT = 0.914
#: FaceScape's expression vector: the neutral weight 1 followed by 51 blendshape weights.
NUM_EXPRESSION_VECTOR = 52
#: The paper's split of 18 styles over the 3rd / 4th / 5th layer (coarse, middle, fine).
PAPER_SPLIT = (9, 5, 4)

EncoderInput = Literal["params", "mesh1700", "mesh5000"]
_MESH_POINTS = {"mesh1700": 1700, "mesh5000": 5000}


class SynthesisNetwork(Protocol):
    """What Detailed3DMM needs of a DNPM generator (:class:`facelab.nn.stylegan2.Generator`)."""

    n_latent: int
    w_dim: int
    w_avg: Tensor

    def synthesis(self, ws: Tensor, **kwargs) -> Tensor: ...


def style_split(n_latent: int, paper: Sequence[int] = PAPER_SPLIT) -> tuple[int, int, int]:
    """How many of ``n_latent`` styles each of the three style layers gives: the paper's 9 / 5 / 4 of 18, scaled
    (rounded, the last takes the rest, each >= 1).

    >>> style_split(18), style_split(14), style_split(10)
    ((9, 5, 4), (7, 4, 3), (5, 3, 2))
    """
    if n_latent < 3:
        raise ValueError(f"n_latent must be >= 3 (three style layers), got {n_latent}")
    total = sum(paper)
    first = max(1, round(n_latent * paper[0] / total))
    second = max(1, min(n_latent - first - 1, round(n_latent * paper[1] / total)))
    return first, second, n_latent - first - second


def check_latents(ws: Tensor, n_latent: int, w_dim: int, what: str = "latents") -> Tensor:
    """``ws`` must be finite (B, N, D) w+ codes (or (N, D), batched here)."""
    if ws.dim() == 2:
        ws = ws[None]
    if ws.dim() != 3 or ws.shape[1:] != (n_latent, w_dim):
        raise ValueError(f"{what}: expected w+ codes of shape (B, {n_latent}, {w_dim}), got {tuple(ws.shape)}")
    if not torch.isfinite(ws).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    return ws


def expression_vector(expression: Tensor) -> Tensor:
    """(B, 52) FaceScape expression vectors (leading neutral weight 1) from (B, 52) or (B, 51) blendshape weights."""
    if expression.dim() != 2 or expression.shape[1] not in (NUM_EXPRESSION_VECTOR, NUM_EXPRESSION_VECTOR - 1):
        raise ValueError(f"expression must be (B, 52) FaceScape vectors or (B, 51) blendshape weights, got "
                         f"{tuple(expression.shape)}")
    if expression.shape[1] == NUM_EXPRESSION_VECTOR - 1:
        expression = torch.cat([expression.new_ones(expression.shape[0], 1), expression], dim=1)
    return expression


class StyleMLPEncoder(nn.Module):
    """The Detailed3DMM encoder: a ReLU MLP whose 3rd, 4th and 5th layers each emit a group of w+ styles.

    ``h1 = relu(L1(x))``, ``h2 = relu(L2([h1, skip]))`` (the NeRF-style skip; no skip when ``skip_features=0``),
    ``h3..h5 = relu(L_k(h_{k-1}))``; styles ``[A3(h3) (n3, D), A4(h4) (n4, D), A5(h5) (n5, D)]`` concatenated to
    (B, N, D). The style heads start near zero (gain ``head_init``), so ``E + w_mean`` starts at the generator's
    average face.

    Args:
        in_features: size of the input vector ``x``.
        skip_features: size of the vector concatenated to the first layer's activation (0: none).
        hidden: widths of the five layers.
        n_latent: ``N`` styles in total.
        w_dim: ``D``.
        head_init: std multiplier of the style heads' initial weights.

    Shapes:
        ``forward(x (B, in), skip (B, skip) | None) -> (B, N, D)``.
    """

    def __init__(self, in_features: int, skip_features: int = 0, hidden: Sequence[int] = (512, 512, 512, 512, 512),
                 n_latent: int = 18, w_dim: int = 512, head_init: float = 0.1) -> None:
        super().__init__()
        if len(hidden) != 5:
            raise ValueError(f"the encoder has 5 layers (styles from layers 3, 4, 5), got hidden={list(hidden)}")
        self.in_features, self.skip_features = int(in_features), int(skip_features)
        self.n_latent, self.w_dim = int(n_latent), int(w_dim)
        self.split = style_split(self.n_latent)
        widths = [int(h) for h in hidden]
        ins = [self.in_features, widths[0] + self.skip_features, widths[1], widths[2], widths[3]]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(ins, widths))
        self.heads = nn.ModuleList(nn.Linear(widths[k], n * self.w_dim) for k, n in zip((2, 3, 4), self.split))
        for head in self.heads:
            nn.init.normal_(head.weight, std=head_init / math.sqrt(head.in_features))
            nn.init.zeros_(head.bias)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"encoder input must be (B, {self.in_features}), got {tuple(x.shape)}")
        if (skip is None) != (self.skip_features == 0):
            raise ValueError(f"this encoder takes a skip input of {self.skip_features} features")
        h = F.relu(self.layers[0](x))
        h = F.relu(self.layers[1](h if skip is None else torch.cat([h, skip], dim=1)))  # NeRF-style skip
        styles = []
        for layer_idx, head, n in zip((2, 3, 4), self.heads, self.split):
            h = F.relu(self.layers[layer_idx](h))
            styles.append(head(h).view(-1, n, self.w_dim))  # pSp-style: styles from layers 3, 4, 5
        return torch.cat(styles, dim=1)


class ProxyPointSampler(nn.Module):
    """``N`` fixed points on a mesh topology (seeded: random faces by area of the mean face, random barycentric
    coordinates): the "proxy mesh downsampled to 1.7K / 5K vertices" of Table I's ``E_1700`` / ``E_5000``.

    Shapes:
        ``forward(verts (B, V, 3)) -> (B, N, 3)``.
    """

    face_idx: Tensor
    bary: Tensor

    def __init__(self, faces: Tensor, mean_verts: Tensor, num_points: int, seed: int = 0) -> None:
        super().__init__()
        faces = torch.as_tensor(faces).long()
        tri = mean_verts[faces]  # (F, 3, 3)
        area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)
        gen = torch.Generator().manual_seed(seed)
        face_idx = torch.multinomial(area.double() + 1e-12, num_points, replacement=True, generator=gen)
        r = torch.rand(num_points, 2, generator=gen, dtype=torch.float64)
        s = r[:, 0].sqrt()
        bary = torch.stack([1 - s, s * (1 - r[:, 1]), s * r[:, 1]], dim=1)
        self.register_buffer("faces", faces, persistent=False)
        self.register_buffer("face_idx", face_idx, persistent=False)
        self.register_buffer("bary", bary.float(), persistent=False)
        self.num_points = int(num_points)

    def forward(self, verts: Tensor) -> Tensor:
        return barycentric_points(verts, self.faces, self.face_idx, self.bary)


def build_encoder(encoder_input: EncoderInput, num_identity: int, n_latent: int, w_dim: int,
                  hidden: Sequence[int]) -> StyleMLPEncoder:
    """The encoder of one Table I row: ``params`` (E_id,exp, skip on w_exp) or ``mesh1700`` / ``mesh5000``."""
    if encoder_input == "params":
        return StyleMLPEncoder(num_identity + NUM_EXPRESSION_VECTOR, NUM_EXPRESSION_VECTOR, hidden, n_latent, w_dim)
    if encoder_input in _MESH_POINTS:
        return StyleMLPEncoder(3 * _MESH_POINTS[encoder_input], 0, hidden, n_latent, w_dim)
    raise ValueError(f"encoder_input must be 'params', 'mesh1700' or 'mesh5000', got {encoder_input!r}")


@dataclass
class DetailedMesh:
    """What :class:`Detailed3DMM` produces.

    Attributes:
        ws: (B, N, D) the w+ codes ``E(w_id, w_exp) + w_mean``.
        displacement: (B, 1, S, S) the generated map in the FaceScape encoding ([-1, 1]).
        displacement_mm: (B, 1, S, S) the same in millimetres (``s`` times).
        proxy_verts: (B, V, 3) ``V_p`` (Eq. 3), millimetres.
        dense_proxy_verts: (B, V', 3) ``V_p`` on the subdivided topology.
        verts: (B, V', 3) ``V_h = V_p + V_r`` (Eq. 2).
    """

    ws: Tensor
    displacement: Tensor
    displacement_mm: Tensor
    proxy_verts: Tensor
    dense_proxy_verts: Tensor
    verts: Tensor


class Detailed3DMM(nn.Module):
    """Detailed3DMM: the bilinear proxy (Eq. 3) plus the frozen DNPM generator driven by an encoder (Eq. 4).

    Args:
        generator: the pre-trained DNPM generator (kept frozen here: ``requires_grad=False``, eval mode).
        bilinear: the FaceScape bilinear model (the synthetic stand-in by default in the configs).
        encoder_input: ``"params"`` (E_id,exp), ``"mesh1700"`` or ``"mesh5000"`` (Table I baselines).
        hidden: the encoder's five layer widths (the paper's Fig. 2(b) widths are not in its text).
        scale: ``s`` of Eq. 4, millimetres per generator unit (FaceScape's 0.914).
        subdivisions: midpoint subdivision levels of the proxy before displacing (Eq. 4's detail vertices).

    Shapes:
        ``forward(identity (B, K), expression (B, 52 | 51)) -> DetailedMesh``; ``latents`` / ``generate`` give the
        intermediate steps.
    """

    def __init__(self, generator: nn.Module, bilinear: BilinearModel, encoder_input: EncoderInput = "params",
                 hidden: Sequence[int] = (512, 512, 512, 512, 512), scale: float = FACESCAPE_MM_PER_UNIT,
                 subdivisions: int = 1) -> None:
        super().__init__()
        self.generator = generator.requires_grad_(False).eval()
        self.bilinear = bilinear
        self.encoder_input = encoder_input
        self.scale = float(scale)
        self.num_identity = int(bilinear.num_identity)
        self.encoder = build_encoder(encoder_input, self.num_identity, int(generator.n_latent),
                                     int(generator.w_dim), hidden)
        self.points = None
        with torch.no_grad():
            mean = bilinear(bilinear.neutral_params(1)).verts[0]
        self.register_buffer("mean_verts", mean, persistent=False)
        self.mesh_scale = float((mean - mean.mean(0)).norm(dim=1).max())
        if encoder_input in _MESH_POINTS:
            self.points = ProxyPointSampler(bilinear.faces, mean, _MESH_POINTS[encoder_input])
        self.mapper = DisplacementMapper(bilinear.faces, bilinear.uv, bilinear.faces_uv, bilinear.num_verts,
                                         subdivisions=subdivisions)

    def train(self, mode: bool = True) -> Detailed3DMM:
        super().train(mode)
        self.generator.eval()  # frozen: no training-mode behaviour
        return self

    def _check_inputs(self, identity: Tensor, expression: Tensor) -> tuple[Tensor, Tensor]:
        if identity.dim() != 2 or identity.shape[1] != self.num_identity:
            raise ValueError(f"identity must be (B, {self.num_identity}), got {tuple(identity.shape)}")
        expression = expression_vector(expression)
        if expression.shape[0] != identity.shape[0]:
            raise ValueError(f"identity and expression batches differ: {identity.shape[0]} vs {expression.shape[0]}")
        if not (torch.isfinite(identity).all() and torch.isfinite(expression).all()):
            raise ValueError("identity / expression vectors contain NaN or infinite values")
        return identity, expression

    def proxy(self, identity: Tensor, expression: Tensor) -> Tensor:
        """(B, V, 3) ``V_p = C_r x w_id x w_exp`` (Eq. 3) of (B, K) identity and (B, 52) expression vectors."""
        identity, expression = self._check_inputs(identity, expression)
        return self.bilinear(BilinearParams(identity=identity, expression=expression[:, 1:])).verts

    def latents(self, identity: Tensor, expression: Tensor, proxy_verts: Tensor | None = None) -> Tensor:
        """(B, N, D) ``E(w_id, w_exp) + w_mean`` (the argument of G in Eq. 4-6)."""
        identity, expression = self._check_inputs(identity, expression)
        if self.points is None:
            offset = self.encoder(torch.cat([identity, expression], dim=1), expression)
        else:
            verts = self.proxy(identity, expression) if proxy_verts is None else proxy_verts
            pts = self.points(verts - self.mean_verts) / self.mesh_scale  # offsets from the mean face, ~unit
            offset = self.encoder(pts.flatten(1))
        return offset + self.generator.w_avg.to(offset)

    def generate(self, ws: Tensor) -> Tensor:
        """(B, 1, S, S) displacement maps (FaceScape encoding) of w+ codes (deterministic noise)."""
        return synthesize(self.generator, ws)

    def forward(self, identity: Tensor, expression: Tensor) -> DetailedMesh:
        identity, expression = self._check_inputs(identity, expression)
        proxy = self.proxy(identity, expression)  # Eq. 3
        ws = self.latents(identity, expression, proxy)
        disp = self.generate(ws)
        disp_mm = self.scale * disp
        dense = self.mapper.subdivider(proxy)
        verts = self.mapper(proxy, disp_mm)  # Eq. 2 + 4: V_p + T'(s G(...)) on the subdivided mesh
        return DetailedMesh(ws=ws, displacement=disp, displacement_mm=disp_mm, proxy_verts=proxy,
                            dense_proxy_verts=dense, verts=verts)


@functools.lru_cache(maxsize=2)
def _read_bilinear(model_path: str) -> BilinearModel:
    return BilinearModel(model_path)


def bilinear_model(model_path: str) -> BilinearModel:
    """A fresh copy of the bilinear model at ``model_path`` (the file is read once per process: the FaceScape core
    is ~150 MB)."""
    return copy.deepcopy(_read_bilinear(str(model_path)))


def synthesize(generator: nn.Module, ws: Tensor) -> Tensor:
    """``G(ws)`` with the generator's constant noise buffers where it has them (a deterministic map per code)."""
    try:
        return generator.synthesis(ws, noise_mode="const")
    except TypeError:  # a synthesis network without noise modes
        return generator.synthesis(ws)


def _framing(verts: Tensor) -> WeakPerspectiveCamera:
    """A frontal weak-perspective camera that fits the mean of the meshes' bounding boxes into NDC (margin 10%)."""
    lo, hi = verts.amin(dim=(0, 1)), verts.amax(dim=(0, 1))
    centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo)[:2].max()
    b = verts.shape[0]
    params = torch.cat([verts.new_full((b, 1), 0.9 / float(half)), (-centre[:2]).expand(b, 2)], dim=1)
    return WeakPerspectiveCamera.from_params(params, depth_offset=10.0 + float(hi[2] - lo[2]) * float(params[0, 0]))


def render_meshes(renderer: MeshRenderer, verts: Tensor, displacement_mm: Tensor | None = None) -> Tensor:
    """(B, 3, H, W) gray shape renders (DECA's five lights) of (B, V, 3) meshes in millimetres; with a (B, 1, S, S)
    ``displacement_mm`` map the shading is bump-mapped by it (:class:`facelab.render.MeshRenderer`)."""
    cam = _framing(verts.detach())
    lights = shape_lights(device=verts.device, dtype=verts.dtype)
    out = renderer(verts, cam, albedo=0.75, lights=lights, displacement_map=displacement_mm)
    return out.image.clamp(0, 1)


def colorize_displacement(maps: Tensor, value_range: float | None = None) -> Tensor:
    """(B, 3, S, S) diverging colour map of (B, 1, S, S) signed maps: blue (negative, grooves) - white (0) - red
    (positive), saturating at ``value_range`` (None: each map's 99th percentile of ``|value|``)."""
    if maps.dim() != 4 or maps.shape[1] != 1:
        raise ValueError(f"expected (B, 1, S, S) maps, got {tuple(maps.shape)}")
    x = maps.detach().float()
    if value_range is None:
        span = x.abs().flatten(1).quantile(0.99, dim=1).clamp_min(1e-6)[:, None, None, None]
    else:
        span = torch.as_tensor(float(value_range), device=x.device)
    t = (x / span).clamp(-1, 1)
    pos, neg = t.clamp(min=0), (-t).clamp(min=0)
    red = 1 - neg
    green = 1 - pos - neg
    blue = 1 - pos
    return torch.cat([red, green, blue], dim=1).clamp(0, 1)


#: LPIPS' AlexNet needs inputs of at least this side (its pooling stack); smaller maps are upsampled bilinearly.
LPIPS_MIN_SIDE = 64


def map_lpips(lpips: nn.Module, pred: Tensor, target: Tensor) -> Tensor:
    """LPIPS (Eq. 6) between (B, 1, S, S) signed maps: both scaled by the target's largest ``|value|`` per sample
    into [-1, 1] (LPIPS' input range) and, below ``LPIPS_MIN_SIDE``, upsampled bilinearly."""
    span = target.detach().abs().flatten(1).amax(1).clamp_min(1e-6)[:, None, None, None]
    pred, target = pred / span, target / span
    if pred.shape[-1] < LPIPS_MIN_SIDE:
        size = (LPIPS_MIN_SIDE, LPIPS_MIN_SIDE)
        pred = F.interpolate(pred, size=size, mode="bilinear", align_corners=False)
        target = F.interpolate(target, size=size, mode="bilinear", align_corners=False)
    return lpips(pred, target)
