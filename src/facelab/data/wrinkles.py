"""Action units and expression wrinkles of the synthetic face world.

Two deterministic functions of a face's expression parameters:

1. **Action units** (FACS). The expression coefficients (plus jaw pose and eyelids where the model has them) are
   mapped to *action channels*, per-side intensities in [0, 1] (``AU12_L`` is the left lip-corner puller), and
   the channels to the public **AU vector**: GANimation's / OpenFace's 17 intensities (FaceDet3D's convention,
   :data:`AU_NAMES`), each in [0, 1] (OpenFace's 0..5 scale divided by 5). A lateral AU is the mean of its two
   sides (OpenFace does not tell sides apart).
2. **Wrinkles**. A UV displacement map in **millimetres** (negative = groove) that is a weighted sum of fixed
   wrinkle patterns, each activated by action channels: forehead lines when the brows rise, glabellar lines when
   they lower, crow's feet and nasolabial folds when smiling, ... (:data:`WRINKLE_PATTERNS`). No expression, no
   action, no wrinkle: the neutral face's map is exactly zero.

Expression -> channels
----------------------
``raw_c = sum_k relu(e_k) W+[k, c] + relu(-e_k) W-[k, c]`` (+ jaw and eyelid terms), ``channel_c =
tanh(raw_c)``: zero at rest, strictly increasing in each driving coefficient, saturating below 1. Coefficients
of the procedural head (:func:`facelab.morphable.synthetic.head.build_head`) are one "full" action at 1; the
synthetic FLAME uses them at indices 0..27, the synthetic BFM and bilinear models at 1..28 (their component 0 is
the jaw opening). The table (head component: channel weights for a positive / negative coefficient; "L"/"R" is the
subject's side):

====  ===================  ============================================  ==========================
idx   head component       positive coefficient                          negative coefficient
====  ===================  ============================================  ==========================
0     brows up             AU01 .8, AU02 L/R 1                           AU04 .8
1     frown                AU04 1                                        AU01 .4, AU02 L/R .4
2     inner brows up       AU01 1                                        AU04 .5
3/4   left/right brow up   AU02 L/R 1, AU01 .3                           AU04 .4
5/6   left/right squint    AU06 L/R .8, AU07 L/R .8                      AU05 .4
7     eyes wide            AU05 1                                        AU07 L+R .5
8/9   smile left/right     AU12 L/R 1, AU06 L/R .4                       AU15 L/R .5
10/11 lip corner down L/R  AU15 L/R 1                                    AU12 L/R .4
12    pucker               AU18 1 (internal, not in the 17)              -
13    funnel               AU22 1 (internal), AU25 .4                    -
14    lip press            AU23 .8 (stands in for AU24)                  AU25 .4
15    stretch              AU20 1                                        AU18 .3
16    upper lip up         AU10 1, AU25 .4                               -
17    lower lip down       AU25 .8 (stands in for AU16)                  -
19    nose wrinkle         AU09 1, AU10 .3                               -
22    lips roll in         AU23 .5                                       -
23    chin raise           AU17 1                                        -
24/25 dimple left/right    AU14 L/R 1                                    -
====  ===================  ============================================  ==========================

Components 18 (cheek puff, AU34), 20/21 (mouth left/right), 26/27 (lip pouts) and the random bumps (28+) drive
no channel. Jaw: the opening angle ``a`` (``jaw_pose[0]`` in radians for a model with a jaw joint, FLAME; for a
stand-in without one, its jaw-opening component times ``model.jaw_open_component`` radians: 0.12 rad for the
synthetic BFM, 0.3 rad for the synthetic bilinear model) gives ``AU26 += a / 0.25`` and ``AU25 += a / 0.1`` for
``a > 0``. Eyelids (FLAME, 0 open .. 1 closed) give ``AU45 L/R = eyelid`` (linear, already in [0, 1]).

A model with named blendshapes (``model.expression_names``, ICT-FaceKit's ARKit names) is mapped by name
(:data:`ARKIT_TO_CHANNELS`; weights in [0, 1] are used directly, no tanh). A model whose expression basis is an
unlabelled PCA (real FLAME, BFM, FaceScape) has no expression table: only the jaw and eyelid AUs are derived (a
warning says so).

Wrinkle patterns
----------------
Each pattern is a fixed UV field evaluated once on the model's template surface in metres (texel positions of
:class:`facelab.data.albedo.TemplateSurface`), anchored on its 68 landmarks so it works for any UV layout. Every
groove has a Gaussian cross-section of standard deviation ``width`` (full width at half depth 2.35 ``width``) and
the listed ``depth`` at activation 1, both in millimetres (real expression wrinkles: 0.5-2 mm deep, 1-5 mm wide;
:class:`WrinkleModel` scales both, ``SceneConfig.wrinkle_depth`` / ``wrinkle_width`` in the synthetic world). The
activation is the clamped sum of the listed channels:

===================  ==================================================  ===========================  =====  =====
pattern              geometry                                            activation                   depth  width
===================  ==================================================  ===========================  =====  =====
forehead_center      horizontal lines (9 mm apart), central forehead     AU01                         1.8    0.9
forehead_left/right  the same lines on the lateral forehead              AU02_L / AU02_R              1.8    0.9
glabella             two vertical grooves between the brows + nasion     AU04                         1.8    1.0
crows_feet_l/r       3 radial lines fanning from the outer eye corner    AU06_L/R + .5 AU12_L/R       1.2    0.7
lower_lid_l/r        two arcs under the lower lid                        AU07_L/R + .5 AU06_L/R       1.0    0.8
nasolabial_l/r       fold from the nose wing past the mouth corner       AU12_L/R + .5 AU10 +         2.0    2.0
                                                                         .3 AU06_L/R + .3 AU26
nose                 horizontal lines over the nasal bridge (5 mm)       AU09                         1.2    0.7
lip_lines            vertical lines above and below the lips (4.5 mm)    AU18 + .5 AU22 + .5 AU23     0.8    0.7
chin                 dimpled "orange peel" bumps, mentolabial sulcus     AU17                         0.8    1.2
dimple_l/r           a pit beside the mouth corner                       AU14_L/R                     1.5    2.2
marionette_l/r       a line running down from the mouth corner           AU15_L/R                     1.5    1.2
===================  ==================================================  ===========================  =====  =====

Rendering these needs texels finer than the grooves: :class:`WrinkleModel` warns when the narrowest groove's full
width at half depth spans fewer than two texels of its UV layout (:attr:`WrinkleModel.texel_mm`), and the synthetic
world picks its displacement-map size from that rule by default.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from facelab.data.albedo import TemplateSurface, polyline_distance
from facelab.log import get_logger
from facelab.uv.maps import dilate_uv_map

_log = get_logger(__name__)

__all__ = [
    "ACTION_CHANNELS",
    "FWHM_PER_WIDTH",
    "ARKIT_TO_CHANNELS",
    "AU_NAMES",
    "HEAD_EXPRESSION_NAMES",
    "HEAD_EXPRESSION_TABLE",
    "WRINKLE_PATTERNS",
    "ActionUnitMap",
    "WrinkleModel",
    "head_expression_offset",
    "wrinkle_map_size",
]

#: The 17 OpenFace / GANimation action units of the public AU vector, in order.
AU_NAMES = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17",
            "AU20", "AU23", "AU25", "AU26", "AU45")
_LATERAL = ("AU02", "AU06", "AU07", "AU12", "AU14", "AU15", "AU45")
#: Internal per-side action channels: lateral AUs split into _L/_R, plus AU18 (pucker) and AU22 (funnel).
ACTION_CHANNELS = tuple(
    name for au in AU_NAMES for name in ((f"{au}_L", f"{au}_R") if au in _LATERAL else (au,))
) + ("AU18", "AU22")
_CH = {name: i for i, name in enumerate(ACTION_CHANNELS)}

_Weights = dict[str, float]


def _both(au: str, w: float) -> _Weights:
    return {f"{au}_L": w, f"{au}_R": w}


#: head expression component -> (channels of a positive coefficient, channels of a negative one).
HEAD_EXPRESSION_TABLE: dict[int, tuple[_Weights, _Weights]] = {
    0: ({"AU01": 0.8, **_both("AU02", 1.0)}, {"AU04": 0.8}),
    1: ({"AU04": 1.0}, {"AU01": 0.4, **_both("AU02", 0.4)}),
    2: ({"AU01": 1.0}, {"AU04": 0.5}),
    3: ({"AU02_L": 1.0, "AU01": 0.3}, {"AU04": 0.4}),
    4: ({"AU02_R": 1.0, "AU01": 0.3}, {"AU04": 0.4}),
    5: ({"AU06_L": 0.8, "AU07_L": 0.8}, {"AU05": 0.4}),
    6: ({"AU06_R": 0.8, "AU07_R": 0.8}, {"AU05": 0.4}),
    7: ({"AU05": 1.0}, _both("AU07", 0.5)),
    8: ({"AU12_L": 1.0, "AU06_L": 0.4}, {"AU15_L": 0.5}),
    9: ({"AU12_R": 1.0, "AU06_R": 0.4}, {"AU15_R": 0.5}),
    10: ({"AU15_L": 1.0}, {"AU12_L": 0.4}),
    11: ({"AU15_R": 1.0}, {"AU12_R": 0.4}),
    12: ({"AU18": 1.0}, {}),
    13: ({"AU22": 1.0, "AU25": 0.4}, {}),
    14: ({"AU23": 0.8}, {"AU25": 0.4}),
    15: ({"AU20": 1.0}, {"AU18": 0.3}),
    16: ({"AU10": 1.0, "AU25": 0.4}, {}),
    17: ({"AU25": 0.8}, {}),
    19: ({"AU09": 1.0, "AU10": 0.3}, {}),
    22: ({"AU23": 0.5}, {}),
    23: ({"AU17": 1.0}, {}),
    24: ({"AU14_L": 1.0}, {}),
    25: ({"AU14_R": 1.0}, {}),
}

#: Names of the procedural head's 28 semantic expression components, in basis order (the table of the module
#: docstring; ``left`` / ``right`` are the subject's sides). The synthetic FLAME holds them at indices 0..27.
HEAD_EXPRESSION_NAMES = (
    "brows_up", "frown", "inner_brows_up", "left_brow_up", "right_brow_up", "left_squint", "right_squint",
    "eyes_wide", "smile_left", "smile_right", "lip_corner_down_left", "lip_corner_down_right", "pucker", "funnel",
    "lip_press", "stretch", "upper_lip_up", "lower_lip_down", "cheek_puff", "nose_wrinkle", "mouth_left",
    "mouth_right", "lips_roll_in", "chin_raise", "dimple_left", "dimple_right", "lower_lip_pout", "upper_lip_pout",
)

#: ARKit blendshape name -> channels (ICT-FaceKit; ``_L`` is the subject's left). Unlisted names drive nothing.
ARKIT_TO_CHANNELS: dict[str, _Weights] = {
    "browInnerUp": {"AU01": 1.0}, "browInnerUp_L": {"AU01": 0.5}, "browInnerUp_R": {"AU01": 0.5},
    "browOuterUp_L": {"AU02_L": 1.0}, "browOuterUp_R": {"AU02_R": 1.0},
    "browDown_L": {"AU04": 0.5}, "browDown_R": {"AU04": 0.5},
    "eyeWide_L": {"AU05": 0.5}, "eyeWide_R": {"AU05": 0.5},
    "cheekSquint_L": {"AU06_L": 1.0}, "cheekSquint_R": {"AU06_R": 1.0},
    "eyeSquint_L": {"AU07_L": 1.0}, "eyeSquint_R": {"AU07_R": 1.0},
    "noseSneer_L": {"AU09": 0.5}, "noseSneer_R": {"AU09": 0.5},
    "mouthUpperUp_L": {"AU10": 0.5}, "mouthUpperUp_R": {"AU10": 0.5},
    "mouthSmile_L": {"AU12_L": 1.0}, "mouthSmile_R": {"AU12_R": 1.0},
    "mouthDimple_L": {"AU14_L": 1.0}, "mouthDimple_R": {"AU14_R": 1.0},
    "mouthFrown_L": {"AU15_L": 1.0}, "mouthFrown_R": {"AU15_R": 1.0},
    "mouthShrugLower": {"AU17": 1.0}, "mouthStretch_L": {"AU20": 0.5}, "mouthStretch_R": {"AU20": 0.5},
    "mouthPucker": {"AU18": 1.0}, "mouthFunnel": {"AU22": 1.0, "AU25": 0.4},
    "mouthPress_L": {"AU23": 0.5}, "mouthPress_R": {"AU23": 0.5},
    "mouthLowerDown_L": {"AU25": 0.4}, "mouthLowerDown_R": {"AU25": 0.4},
    "jawOpen": {"AU26": 1.0, "AU25": 1.0}, "eyeBlink_L": {"AU45_L": 1.0}, "eyeBlink_R": {"AU45_R": 1.0},
}

_JAW_AU26_RAD = 0.25  # jaw opening (radians) of one unit of raw AU26
_JAW_AU25_RAD = 0.1  # lips part early in the opening


def _matrix(rows: dict[int, _Weights], n: int, offset: int = 0) -> Tensor:
    w = torch.zeros(n, len(ACTION_CHANNELS))
    for k, weights in rows.items():
        if k + offset < n:
            for name, value in weights.items():
                w[k + offset, _CH[name]] = value
    return w


def head_expression_offset(model: nn.Module, synthetic: bool | None = None) -> int | None:
    """Index of the procedural head's first expression component in a generated stand-in's expression vector
    (:data:`HEAD_EXPRESSION_TABLE`), or None for a model from real assets.

    Args:
        model: a :class:`facelab.morphable.base.MorphableModel`.
        synthetic: override ``model.is_synthetic`` (e.g. a stand-in built from its arrays).
    """
    synthetic = bool(getattr(model, "is_synthetic", False)) if synthetic is None else synthetic
    if not synthetic:
        return None
    offset = model.synthetic_expression_offset
    return type(model)._synthetic_expression_start if offset is None else offset


class ActionUnitMap(nn.Module):
    """Expression (+ jaw pose, eyelids) -> per-side action channels -> the 17-AU vector (see the module doc).

    Args:
        positive: (K, C) channel weights of positive coefficients (C = ``len(ACTION_CHANNELS)``).
        negative: (K, C) channel weights of negative coefficients.
        jaw_component: ``(k, radians)``: expression component ``k`` opens the jaw by ``radians`` per unit
            (models without a jaw joint), or None.
        saturate: apply ``tanh`` to the raw channels (coefficients unbounded); False clamps to [0, 1] (ARKit
            weights, already intensities).
    """

    positive: Tensor
    negative: Tensor
    lateral_pairs: Tensor

    def __init__(self, positive: Tensor, negative: Tensor, jaw_component: tuple[int, float] | None = None,
                 saturate: bool = True):
        super().__init__()
        if positive.shape != negative.shape or positive.shape[1] != len(ACTION_CHANNELS):
            raise ValueError(f"weights must both be (K, {len(ACTION_CHANNELS)}), got {tuple(positive.shape)} "
                             f"and {tuple(negative.shape)}")
        self.register_buffer("positive", positive.float(), persistent=False)
        self.register_buffer("negative", negative.float(), persistent=False)
        # (17, 2) channel ids averaged into each public AU (the same id twice for bilateral AUs)
        pairs = [(_CH.get(f"{au}_L", _CH.get(au)), _CH.get(f"{au}_R", _CH.get(au))) for au in AU_NAMES]
        self.register_buffer("lateral_pairs", torch.tensor(pairs), persistent=False)
        self.jaw_component = jaw_component
        self.saturate = saturate

    @classmethod
    def for_model(cls, model: nn.Module, synthetic: bool | None = None) -> ActionUnitMap:
        """The map for a morphable model, from what the model says about its expression basis.

        - named blendshapes (``model.expression_names``, e.g. ICT-FaceKit's ARKit names): mapped by name;
        - a generated stand-in (``synthetic``): the procedural head's components from
          ``model.synthetic_expression_offset`` on (:data:`HEAD_EXPRESSION_TABLE`), and its jaw-opening component
          (``model.jaw_open_component``) where it has no jaw joint;
        - otherwise an unlabelled PCA: only the jaw and eyelid AUs (a warning says so).

        Args:
            model: a :class:`facelab.morphable.base.MorphableModel`.
            synthetic: whether the model is a generated stand-in; None: ``model.is_synthetic``.
        """
        names = getattr(model, "expression_names", None)
        n = int(model.num_expression)
        zeros = torch.zeros(n, len(ACTION_CHANNELS))
        if names is not None:
            rows = {k: ARKIT_TO_CHANNELS[str(name)] for k, name in enumerate(names) if str(name) in ARKIT_TO_CHANNELS}
            return cls(_matrix(rows, n), zeros, saturate=False)
        offset = head_expression_offset(model, synthetic)
        if offset is None:
            warnings.warn(f"the {type(model).__name__} expression basis is an unlabelled PCA: only the jaw and eyelid "
                          f"action units are derived, the others are 0", stacklevel=2)
            return cls(zeros, zeros.clone())
        pos = {k: w[0] for k, w in HEAD_EXPRESSION_TABLE.items()}
        neg = {k: w[1] for k, w in HEAD_EXPRESSION_TABLE.items()}
        return cls(_matrix(pos, n, offset), _matrix(neg, n, offset), jaw_component=model.jaw_open_component)

    def channels(self, expression: Tensor, jaw_pose: Tensor | None = None, eyelids: Tensor | None = None) -> Tensor:
        """Per-side action channel intensities.

        Args:
            expression: (B, K) expression coefficients.
            jaw_pose: (B, 3) FLAME jaw axis-angle (``[0]`` opens the mouth), or None.
            eyelids: (B, 2) left, right eyelid closure in [0, 1], or None.

        Returns:
            (B, C) intensities in [0, 1], ordered as :data:`ACTION_CHANNELS`.
        """
        if expression.dim() != 2 or expression.shape[1] != self.positive.shape[0]:
            raise ValueError(f"expression must be (B, {self.positive.shape[0]}), got {tuple(expression.shape)}")
        e = expression.to(self.positive.dtype)
        raw = e.clamp(min=0) @ self.positive + (-e).clamp(min=0) @ self.negative
        jaw = None
        if jaw_pose is not None:
            jaw = jaw_pose[:, 0]
        elif self.jaw_component is not None:
            k, rad = self.jaw_component
            jaw = expression[:, k] * rad
        if jaw is not None:
            opening = jaw.to(raw.dtype).clamp(min=0)
            raw = raw.index_add(1, torch.tensor([_CH["AU26"], _CH["AU25"]], device=raw.device),
                                torch.stack([opening / _JAW_AU26_RAD, opening / _JAW_AU25_RAD], dim=1))
        out = torch.tanh(raw) if self.saturate else raw.clamp(0.0, 1.0)
        if eyelids is not None:
            lids = eyelids.to(out.dtype).clamp(0.0, 1.0)
            out = out.clone()
            out[:, _CH["AU45_L"]] = torch.maximum(out[:, _CH["AU45_L"]], lids[:, 0])
            out[:, _CH["AU45_R"]] = torch.maximum(out[:, _CH["AU45_R"]], lids[:, 1])
        return out

    def action_units(self, channels: Tensor) -> Tensor:
        """(B, C) channels -> (B, 17) AU vector (:data:`AU_NAMES`), lateral AUs averaged over both sides."""
        return channels[:, self.lateral_pairs].mean(dim=-1)

    def forward(self, expression: Tensor, jaw_pose: Tensor | None = None, eyelids: Tensor | None = None) -> Tensor:
        """(B, K) expression (+ (B, 3) jaw pose, (B, 2) eyelids) -> (B, 17) AU intensities in [0, 1]."""
        return self.action_units(self.channels(expression, jaw_pose, eyelids))


# ---------------------------------------------------------------------------------------------- wrinkle geometry
# Every pattern is ``fn(p, anchors, w) -> (N,)`` in [-1, 0] on template points ``p`` (N, 3) in metres, with ``w`` the
# Gaussian groove width (standard deviation) in metres; the depth is applied by WrinkleModel.
def _groove(d: np.ndarray, w: float) -> np.ndarray:
    """Gaussian groove profile in [0, 1] at distance ``d`` from its centre line."""
    return np.exp(-0.5 * (d / w) ** 2)


def _grooves(t: np.ndarray, spacing: float, w: float) -> np.ndarray:
    """Parallel grooves: a Gaussian profile around every multiple of ``spacing`` of the coordinate ``t``."""
    return _groove(t - spacing * np.round(t / spacing), w)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _window(x: np.ndarray, lo: float, hi: float, soft: float) -> np.ndarray:
    """1 inside [lo, hi], fading to 0 over ``soft`` outside."""
    return _smoothstep(lo - soft, lo, x) * (1.0 - _smoothstep(hi, hi + soft, x))


def _front(p: np.ndarray, anchor: np.ndarray, depth: float = 0.025) -> np.ndarray:
    """Keep points within ``depth`` metres behind ``anchor`` (no pattern leaks to the back of the head)."""
    return _smoothstep(anchor[2] - depth - 0.01, anchor[2] - depth, p[:, 2])


class _Anchors:
    """Template landmarks (68, 3) in metres, with the named points the patterns use (iBUG numbering; landmark 36
    is the outer corner of the subject's right eye, 45 of the left)."""

    def __init__(self, lmk: np.ndarray):
        self.l = lmk
        self.brow_y = lmk[17:27, 1].mean()
        self.eye_width = np.linalg.norm(lmk[45] - lmk[36])

    def side(self, s: int) -> dict[str, np.ndarray]:
        """Points of the subject's left (s = +1) or right (s = -1) side."""
        left = s > 0
        ids = dict(canthus=45 if left else 36, alar=35 if left else 31, corner=54 if left else 48,
                   lid=[42, 47, 46, 45] if left else [39, 40, 41, 36])
        return {k: self.l[v] for k, v in ids.items()}


def _forehead(p: np.ndarray, a: _Anchors, w: float, centre_x: float | None, side: int = 0) -> np.ndarray:
    y0 = a.brow_y + 0.011
    t = p[:, 1] - y0 - 4.0 * p[:, 0] ** 2  # lines curve down towards the temples
    vertical = _window(p[:, 1] - y0, 0.0, 0.035, 0.008)
    if centre_x is None:
        across = np.exp(-0.5 * (p[:, 0] / 0.018) ** 2)
    else:
        across = np.exp(-0.5 * ((p[:, 0] - side * centre_x) / 0.014) ** 2)
    return -_grooves(t, 0.009, w) * vertical * across * _front(p, a.l[27], 0.04)


def _glabella(p: np.ndarray, a: _Anchors, w: float) -> np.ndarray:
    inner_y = 0.5 * (a.l[21, 1] + a.l[22, 1])
    vertical = _window(p[:, 1] - inner_y, -0.012, 0.012, 0.006)
    grooves = sum(_groove(p[:, 0] - s * 0.006, w) for s in (-1, 1))
    nasion = _groove(p[:, 1] - a.l[27, 1] + 0.002, 1.25 * w) * _window(p[:, 0], -0.008, 0.008, 0.004)
    return -np.minimum(grooves * vertical + 0.6 * nasion, 1.0) * _front(p, a.l[27])


def _crows_feet(p: np.ndarray, a: _Anchors, w: float, s: int) -> np.ndarray:
    c = a.side(s)["canthus"]
    dx = s * (p[:, 0] - c[0]) + 0.002
    dy = p[:, 1] - c[1]
    r = np.hypot(dx, dy)
    theta = np.arctan2(dy, np.maximum(dx, 1e-6))
    step = math.radians(22.0)
    ray = r * np.sin(theta - step * np.round(theta / step))  # distance to the nearest ray of the fan
    fan = _groove(ray, w) * _window(theta, -0.8, 0.6, 0.25)
    radial = _window(r, 0.007, 0.022, 0.005) * (dx > 0)
    return -fan * radial * _front(p, c, 0.035)


def _lower_lid(p: np.ndarray, a: _Anchors, w: float, s: int) -> np.ndarray:
    side = a.side(s)
    lid = side["lid"]
    out = 0.0
    for drop, weight in ((0.004, 1.0), (0.008, 0.6)):
        out = out + weight * _groove(polyline_distance(p, lid - np.array([0.0, drop, 0.0])), w)
    return -np.minimum(out, 1.0) * _front(p, side["canthus"])


def _nasolabial(p: np.ndarray, a: _Anchors, w: float, s: int) -> np.ndarray:
    side = a.side(s)
    alar, corner = side["alar"], side["corner"]
    out = np.array([s * 0.005, 0.003, -0.004])
    curve = np.stack([alar + out, 0.5 * (alar + corner) + np.array([s * 0.009, 0.0, -0.006]),
                      corner + np.array([s * 0.008, -0.010, -0.006])])
    lateral = _smoothstep(0.0, 0.004, s * (p[:, 0] - alar[0]))
    return -_groove(polyline_distance(p, curve), w) * lateral * _front(p, corner, 0.03)


def _nose(p: np.ndarray, a: _Anchors, w: float) -> np.ndarray:
    top, bottom = a.l[27, 1], a.l[29, 1]
    vertical = _window(p[:, 1], bottom, top - 0.002, 0.003)
    across = np.exp(-0.5 * (p[:, 0] / 0.008) ** 2)
    return -_grooves(p[:, 1] - top, 0.005, w) * vertical * across * _front(p, a.l[30], 0.03)


def _lip_lines(p: np.ndarray, a: _Anchors, w: float) -> np.ndarray:
    upper = _window(p[:, 1], a.l[51, 1] + 0.001, a.l[33, 1] - 0.003, 0.002)
    lower = _window(p[:, 1], a.l[57, 1] - 0.009, a.l[57, 1] - 0.001, 0.002)
    across = _window(p[:, 0], a.l[48, 0] + 0.004, a.l[54, 0] - 0.004, 0.004)
    return -_grooves(p[:, 0], 0.0045, w) * (upper + lower) * across * _front(p, a.l[51], 0.025)


def _chin(p: np.ndarray, a: _Anchors, w: float) -> np.ndarray:
    centre = 0.5 * (a.l[8] + a.l[57]) + np.array([0.0, -0.004, 0.0])
    env = np.exp(-0.5 * (((p[:, 0] - centre[0]) / 0.012) ** 2 + ((p[:, 1] - centre[1]) / 0.009) ** 2))
    rng = np.random.default_rng(1234)  # a fixed dimple layout: the same wrinkles for every dataset
    pits = rng.uniform(-1, 1, (40, 2)) * np.array([0.016, 0.011]) + centre[:2]
    near = env > 1e-6  # the bumps only matter under the envelope
    bumps = np.zeros(len(p))
    bumps[near] = sum(_groove(np.linalg.norm(p[near, :2] - q, axis=1), 1.3 * w) for q in pits)
    sulcus_y = 0.5 * (a.l[57, 1] + a.l[8, 1]) + 0.004
    sulcus = _groove(p[:, 1] - sulcus_y, 1.5 * w) * _window(p[:, 0], -0.014, 0.014, 0.006)
    return -np.minimum(0.6 * np.clip(bumps, 0, 1) * env + sulcus, 1.0) * _front(p, a.l[8], 0.03)


def _dimple(p: np.ndarray, a: _Anchors, w: float, s: int) -> np.ndarray:
    c = a.side(s)["corner"] + np.array([s * 0.007, 0.0, -0.004])
    return -_groove(np.linalg.norm(p - c, axis=1), w)


def _marionette(p: np.ndarray, a: _Anchors, w: float, s: int) -> np.ndarray:
    c = a.side(s)["corner"]
    line = np.stack([c + np.array([s * 0.002, -0.003, -0.002]), c + np.array([s * 0.006, -0.018, -0.006])])
    return -_groove(polyline_distance(p, line), w) * _front(p, c, 0.03)


_Pattern = Callable[[np.ndarray, _Anchors, float], np.ndarray]


def _sided(fn, s: int) -> _Pattern:
    return lambda p, a, w: fn(p, a, w, s)


#: name -> (field, depth in mm at activation 1, groove width (Gaussian std) in mm, {channel: weight}); see the
#: module docstring.
WRINKLE_PATTERNS: dict[str, tuple[_Pattern, float, float, _Weights]] = {
    "forehead_center": (lambda p, a, w: _forehead(p, a, w, None), 1.8, 0.9, {"AU01": 1.0}),
    "forehead_left": (lambda p, a, w: _forehead(p, a, w, 0.034, 1), 1.8, 0.9, {"AU02_L": 1.0}),
    "forehead_right": (lambda p, a, w: _forehead(p, a, w, 0.034, -1), 1.8, 0.9, {"AU02_R": 1.0}),
    "glabella": (_glabella, 1.8, 1.0, {"AU04": 1.0}),
    "crows_feet_left": (_sided(_crows_feet, 1), 1.2, 0.7, {"AU06_L": 1.0, "AU12_L": 0.5}),
    "crows_feet_right": (_sided(_crows_feet, -1), 1.2, 0.7, {"AU06_R": 1.0, "AU12_R": 0.5}),
    "lower_lid_left": (_sided(_lower_lid, 1), 1.0, 0.8, {"AU07_L": 1.0, "AU06_L": 0.5}),
    "lower_lid_right": (_sided(_lower_lid, -1), 1.0, 0.8, {"AU07_R": 1.0, "AU06_R": 0.5}),
    "nasolabial_left": (_sided(_nasolabial, 1), 2.0, 2.0,
                        {"AU12_L": 1.0, "AU10": 0.5, "AU06_L": 0.3, "AU26": 0.3}),
    "nasolabial_right": (_sided(_nasolabial, -1), 2.0, 2.0,
                         {"AU12_R": 1.0, "AU10": 0.5, "AU06_R": 0.3, "AU26": 0.3}),
    "nose": (_nose, 1.2, 0.7, {"AU09": 1.0}),
    "lip_lines": (_lip_lines, 0.8, 0.7, {"AU18": 1.0, "AU22": 0.5, "AU23": 0.5}),
    "chin": (_chin, 0.8, 1.2, {"AU17": 1.0}),
    "dimple_left": (_sided(_dimple, 1), 1.5, 2.2, {"AU14_L": 1.0}),
    "dimple_right": (_sided(_dimple, -1), 1.5, 2.2, {"AU14_R": 1.0}),
    "marionette_left": (_sided(_marionette, 1), 1.5, 1.2, {"AU15_L": 1.0}),
    "marionette_right": (_sided(_marionette, -1), 1.5, 1.2, {"AU15_R": 1.0}),
}
#: Full width at half depth of a Gaussian groove of unit standard deviation.
FWHM_PER_WIDTH = 2.0 * math.sqrt(2.0 * math.log(2.0))


def wrinkle_map_size(metres_per_uv: float, width_scale: float = 1.0, texels_per_groove: float = 2.0,
                     patterns: Sequence[str] | None = None) -> int:
    """The smallest power-of-two UV map side that puts ``texels_per_groove`` texels across the narrowest groove's
    full width at half depth, on a layout of ``metres_per_uv`` (:attr:`TemplateSurface.metres_per_uv`).

    Example: FLAME's layout, 0.35 m per UV unit on the face, narrowest groove 1.65 mm wide -> 512.
    """
    names = tuple(WRINKLE_PATTERNS) if patterns is None else tuple(patterns)
    fwhm = min(WRINKLE_PATTERNS[n][2] for n in names) * width_scale * FWHM_PER_WIDTH * 1e-3
    return 1 << max(2, math.ceil(math.log2(metres_per_uv * texels_per_groove / fwhm)))


class WrinkleModel(nn.Module):
    """Action channels -> UV displacement map (millimetres), a fixed linear combination of wrinkle patterns.

    The patterns are evaluated once on the template surface (``surface.points``, texels of the UV layout) inside the
    UV box of the face (every pattern is anchored on the face and zero behind it), grown a few texels into the
    layout's gutter (so that bilinear lookups and finite differences at chart borders read no false step) and stored
    as a (P, box_h * box_w) buffer, so a batch of maps is one small matrix product.

    Args:
        surface: the model's :class:`~facelab.data.albedo.TemplateSurface` in its UV layout.
        patterns: names from :data:`WRINKLE_PATTERNS` (default: all).
        depth_scale: factor on every pattern's depth (the table's 0.5-2 mm at activation 1).
        width_scale: factor on every groove's width.
    """

    patterns: Tensor
    drive: Tensor

    #: Margin (metres) around the landmarks' box, and depth behind the frontmost landmark, that bounds the patterns.
    _FACE_MARGIN, _FACE_DEPTH = 0.03, 0.08

    def __init__(self, surface: TemplateSurface, patterns: Sequence[str] | None = None, depth_scale: float = 1.0,
                 width_scale: float = 1.0):
        super().__init__()
        if surface.size is None:
            raise ValueError("wrinkle maps need a model with a UV layout")
        if depth_scale < 0 or width_scale <= 0:
            raise ValueError(f"depth_scale must be >= 0 and width_scale > 0, got {depth_scale}, {width_scale}")
        self.names = tuple(WRINKLE_PATTERNS) if patterns is None else tuple(patterns)
        unknown = sorted(set(self.names) - set(WRINKLE_PATTERNS))
        if unknown:
            raise ValueError(f"unknown wrinkle patterns {unknown}; known: {sorted(WRINKLE_PATTERNS)}")
        self.size = surface.size
        self.depth_scale, self.width_scale = float(depth_scale), float(width_scale)
        self.box = self._face_box(surface)  # (r0, r1, c0, c1) texel rows / columns holding every pattern
        r0, r1, c0, c1 = self.box
        rows, cols = surface.index // self.size[1], surface.index % self.size[1]
        inside = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
        local = (rows[inside] - r0) * (c1 - c0) + (cols[inside] - c0)  # texel index inside the box
        points = surface.points[inside]
        anchors = _Anchors(surface.landmarks68)
        skin = np.clip(1.0 - surface.region_weight(("left_eyeball", "right_eyeball"))[inside], 0.0, 1.0)
        fields = np.zeros((len(self.names), (r1 - r0) * (c1 - c0)), dtype=np.float32)
        drive = torch.zeros(len(ACTION_CHANNELS), len(self.names))
        for i, name in enumerate(self.names):
            fn, depth, width, weights = WRINKLE_PATTERNS[name]
            field = fn(points, anchors, width * width_scale * 1e-3)
            fields[i, local] = np.minimum(depth * depth_scale * field * skin, 0.0)  # grooves
            for channel, w in weights.items():
                drive[_CH[channel], i] = w
        valid = np.zeros((r1 - r0) * (c1 - c0), dtype=np.float32)
        valid[local] = 1.0
        grown = dilate_uv_map(torch.from_numpy(fields).view(1, -1, r1 - r0, c1 - c0),
                              torch.from_numpy(valid).view(1, 1, r1 - r0, c1 - c0), iterations=2)
        self.register_buffer("patterns", grown.reshape(len(self.names), -1).contiguous(), persistent=False)
        self.register_buffer("drive", drive, persistent=False)
        self.texel_mm = surface.texel_size() * 1e3
        self.min_groove_fwhm_mm = min(WRINKLE_PATTERNS[n][2] for n in self.names) * width_scale * FWHM_PER_WIDTH
        if self.min_groove_fwhm_mm < 2.0 * self.texel_mm:
            _log.warning("wrinkle UV maps of %sx%s texels (%.2f mm each on the face) under-resolve the narrowest "
                         "groove (%.2f mm wide at half depth): use a larger displacement map size",
                         *self.size, self.texel_mm, self.min_groove_fwhm_mm)

    def _face_box(self, surface: TemplateSurface) -> tuple[int, int, int, int]:
        """The texel box (rows r0:r1, columns c0:c1) of the texels near the face's front, grown by 3 texels."""
        p, lmk, m = surface.points, surface.landmarks68, self._FACE_MARGIN
        near = ((p[:, 0] > lmk[:, 0].min() - m) & (p[:, 0] < lmk[:, 0].max() + m)
                & (p[:, 1] > lmk[:, 1].min() - m) & (p[:, 1] < lmk[:, 1].max() + 2 * m)
                & (p[:, 2] > lmk[:, 2].max() - self._FACE_DEPTH))
        s_h, s_w = self.size
        if not near.any():
            return 0, s_h, 0, s_w
        rows, cols = surface.index[near] // s_w, surface.index[near] % s_w
        return (max(int(rows.min()) - 3, 0), min(int(rows.max()) + 4, s_h),
                max(int(cols.min()) - 3, 0), min(int(cols.max()) + 4, s_w))

    def activations(self, channels: Tensor) -> Tensor:
        """(B, C) action channels -> (B, P) pattern activations in [0, 1]."""
        return (channels.to(self.drive.dtype) @ self.drive).clamp(0.0, 1.0)

    def forward(self, channels: Tensor) -> Tensor:
        """(B, C) action channels -> (B, 1, S_h, S_w) displacement in millimetres (<= 0; 0 at rest)."""
        r0, r1, c0, c1 = self.box
        maps = channels.new_zeros(channels.shape[0], 1, *self.size, dtype=self.patterns.dtype)
        maps[:, 0, r0:r1, c0:c1] = (self.activations(channels) @ self.patterns).view(-1, r1 - r0, c1 - c0)
        return maps

    def pattern_maps(self) -> Tensor:
        """(P, S_h, S_w) every pattern at activation 1, in millimetres (:attr:`names` order)."""
        r0, r1, c0, c1 = self.box
        out = self.patterns.new_zeros(len(self.names), *self.size)
        out[:, r0:r1, c0:c1] = self.patterns.view(-1, r1 - r0, c1 - c0)
        return out

    def extra_repr(self) -> str:
        return f"patterns={len(self.names)}, size={self.size}, box={self.box}, texel={self.texel_mm:.2f} mm"
