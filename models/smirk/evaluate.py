"""Evaluation of SMIRK encoders on held-out synthetic faces whose FLAME parameters are known.

What is measured (``facelab evaluate --method smirk``; :func:`evaluate_checkpoint`); the metric functions live in
:mod:`facelab.metrics` (generic) and :mod:`smirk.metrics` (SMIRK's), shared with :class:`smirk.module.SmirkModule`'s
validation:

* **Landmark NME** (``landmark_nme``): mean Euclidean distance between the projected model landmarks and the
  image's landmarks, in NDC units of the crop (half the crop side = 1), for SMIRK's 105 mediapipe points and the
  68 iBUG points. The same numbers as ``val/nme_mp`` and ``val/nme_fan`` of :class:`smirk.module.SmirkModule`.
* **Expression error**: the MSE of the expression coefficients, and the per-vertex error of the *expression*
  (``ExpressionVertexError``): FLAME meshes of mean identity and zero head pose carrying the predicted vs the
  true expression, jaw and eyelids, compared vertex by vertex on FLAME's face region, in mm. Summarized like the
  supplementary's Table 2 (``vertex_error_stats``): the mean, median and max per-vertex error of each image,
  averaged over the images. Table 2 measures scan-to-mesh distances on MultiFace; on synthetic faces the topology
  is shared and the correspondence known, so the distance is vertex to vertex.
* **Small-variation probe** (supplementary §3.2, Table 4; :func:`expression_probe`): each probed test face is
  re-rendered ``N`` times by the synthetic world with small random tweaks of its expression, jaw and eyelids
  (:class:`ExpressionTweak`), the encoder re-estimates each copy, and two statistics compare the vertices of the
  tweaked parameters with those of the estimates (``probe_statistics``): *vert L1*, the mean absolute
  coordinate difference, and *vert abs std*, the absolute difference of the per-vertex standard deviations across
  the ``N`` copies (how well the encoder follows small expression changes). The paper renders the copies with the
  trained translator from the encoder's own estimate of an AffectNet image; here the synthetic renderer stands in
  for the translator and the ground truth for the estimate, so the probe measures the encoder alone.

**Trivial baselines** (:class:`SmirkBaselines`, printed beside every metric): *zero expression* (the neutral
face: expression, jaw and eyelids 0), *train-set mean* (the mean expression, jaw and eyelids of the ``train``
split's ground truth, one constant for every image) and, for the landmark NME, *mean landmarks* (the ``train``
split's mean landmark positions as the prediction for every image). A constant predictor scores on the probe too
(its vert abs std is the mean per-vertex std of the tweaked truth). An encoder has learned something about
expression only where it beats both constants, and something about geometry only where its NME is well below the
mean-landmark one.

Held-out data: the ``test`` split of :class:`facelab.data.synthetic.SyntheticFaceDataset`, whose sample keys
(:data:`facelab.data.synthetic.SPLIT_OFFSETS`) are disjoint from the ``train`` and ``val`` splits that
:class:`facelab.data.synthetic_module.SyntheticFaceDataModule` trains and validates on, with the data settings
(seed, uv size, scene, model) that the checkpoint's datamodule stored.

Shapes: ``B`` batch, ``V`` vertices, ``L`` landmarks, ``M`` probed faces, ``N`` tweaked copies per face.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from facelab.data.synthetic import SceneConfig, SyntheticFaceBatch, SyntheticFaceDataset, SyntheticFaceSample
from facelab.errors import AssetFormatError
from facelab.io.weights import read_checkpoint
from facelab.metrics import VertexErrorStats, landmark_nme, vertex_error_stats
from facelab.morphable import Flame
from smirk.data import as_smirk_batch
from smirk.metrics import ExpressionVertexError, expression_mse, probe_statistics
from smirk.module import load_encoder_checkpoint
from smirk.networks import SmirkEncoder

__all__ = [
    "EvaluationModel",
    "ExpressionProbe",
    "ExpressionTweak",
    "ConstantExpression",
    "ExpressionBaseline",
    "SmirkBaselines",
    "SmirkEvaluation",
    "TrainStatistics",
    "evaluate_checkpoint",
    "evaluate_encoder",
    "expression_probe",
    "held_out_dataset",
    "load_evaluation_model",
    "train_statistics",
]


#: Extra entropy word of the probe's tweak generators: a stream independent of the samples' own draws.
_PROBE_STREAM = 4


# ------------------------------------------------------------------------------------------------------ probe
@dataclass
class ExpressionTweak:
    """The small expression changes of the Table 4 probe ("N different (minor) augmentations in the expression
    parameters ..., including jaw and eyelids", supplementary §3.2).

    Each copy adds ``N(0, expression_std^2)`` to the model's expression coefficients, ``N(0, jaw_open_std^2)`` to
    the jaw opening (clamped to ``[0, jaw_open_max]``), ``N(0, jaw_side_std^2)`` to the two other jaw angles and
    ``U(-eyelid_range, eyelid_range)`` to the eyelids (clamped to [0, 1]). The synthetic world draws active
    expression coefficients with std 1 and jaw openings up to 0.35 rad, so the defaults are small changes.

    Attributes:
        num_copies: N tweaked copies per face (>= 2: the std needs two).
        expression_std, jaw_open_std, jaw_side_std, eyelid_range: tweak sizes (coefficients, radians, closure).
        jaw_open_max: upper clamp of the jaw opening (radians).
    """

    num_copies: int = 8
    expression_std: float = 0.3
    jaw_open_std: float = 0.03
    jaw_side_std: float = 0.005
    eyelid_range: float = 0.1
    jaw_open_max: float = 0.35

    def __post_init__(self) -> None:
        if self.num_copies < 2:
            raise ValueError(f"ExpressionTweak.num_copies must be >= 2 (vert abs std), got {self.num_copies}")

    def apply(self, expression: Tensor, jaw_pose: Tensor, eyelids: Tensor, n_model: int, generator: torch.Generator
              ) -> tuple[Tensor, Tensor, Tensor]:
        """N tweaked copies of one face.

        Args:
            expression: (K,) true coefficients; only the first ``n_model`` (the encoder's) are tweaked.
            jaw_pose: (3,). eyelids: (2,). generator: the draws' source (one per face: reproducible).

        Returns:
            (N, K) expressions, (N, 3) jaw poses, (N, 2) eyelids.
        """
        n, k = self.num_copies, min(n_model, expression.shape[-1])
        exp = expression.expand(n, -1).clone()
        exp[:, :k] += self.expression_std * torch.randn(n, k, generator=generator)
        jaw = jaw_pose.expand(n, -1).clone()
        jaw[:, 0] = (jaw[:, 0] + self.jaw_open_std * torch.randn(n, generator=generator)).clamp(0, self.jaw_open_max)
        jaw[:, 1:] += self.jaw_side_std * torch.randn(n, 2, generator=generator)
        lids = eyelids + self.eyelid_range * (2 * torch.rand(n, 2, generator=generator) - 1)
        return exp, jaw, lids.clamp(0.0, 1.0)


class _TweakedFaces(SyntheticFaceDataset):
    """A synthetic split whose faces can be re-rendered with other expressions, everything else (identity,
    albedo, lighting, background, occluder, head pose) as drawn for the sample; the camera re-frames the landmarks
    as for any sample."""

    def __init__(self, base: SyntheticFaceDataset) -> None:
        super().__init__(family=base.family, model_path=base.model_path, num_samples=base.num_samples,
                         split=base.split, seed=base.seed, image_size=base.image_size, camera=base.camera_model,
                         uv_size=base.uv_size, scene=base.scene, render_wrinkles=base.render_wrinkles,
                         model=base.model, synthetic=base.synthetic)
        self._overrides: Iterator[dict[str, Tensor]] | None = None

    def _scene(self, index: int):
        scene = super()._scene(index)
        if self._overrides is None:
            return scene
        return replace(scene, frames=replace(scene.frames, **next(self._overrides)))

    def render(self, index: int, expression: Tensor, jaw_pose: Tensor, eyelids: Tensor) -> SyntheticFaceBatch:
        """Sample ``index`` rendered once per row of (N, K) ``expression``, (N, 3) ``jaw_pose``, (N, 2) ``eyelids``."""
        rows = [dict(expression=e[None], jaw_pose=j[None], eyelids=lid[None])
                for e, j, lid in zip(expression, jaw_pose, eyelids)]
        self._overrides = iter(rows)
        try:
            return SyntheticFaceSample.collate(self.generate([index] * len(rows)))
        finally:
            self._overrides = None

    def truth(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """The drawn (K,) expression, (3,) jaw and (2,) eyelids of sample ``index`` (no rendering)."""
        frames = super()._scene(index).frames
        return frames.expression[0], frames.jaw_pose[0], frames.eyelids[0]


@dataclass
class ExpressionProbe:
    """Supplementary Table 4's expression-change probe on synthetic faces (vertex units: mm).

    Attributes:
        vert_l1_mm: mean absolute vertex-coordinate difference between the tweaked truth and the estimates.
        vert_abs_std_mm: mean absolute difference of the per-vertex std over the N copies.
        num_faces, num_copies: M probed faces, N tweaked copies each.
        vertices: which vertices ("face" region).
        tweak: the tweak settings.
    """

    vert_l1_mm: float
    vert_abs_std_mm: float
    num_faces: int
    num_copies: int
    vertices: str
    tweak: ExpressionTweak


def _probe_vertices(encoder: SmirkEncoder, error: ExpressionVertexError, dataset: SyntheticFaceDataset,
                    num_faces: int, tweak: ExpressionTweak, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """(M, N, V_face, 3) face-region expression-only vertices (mm) of the tweaked truth and of the estimates."""
    faces = _TweakedFaces(dataset)
    n_model = error.flame.n_expression
    targets, preds = [], []
    for index in range(min(num_faces, len(dataset))):
        seed = np.random.SeedSequence([dataset.seed, dataset.sample_key(index), _PROBE_STREAM]).generate_state(1)[0]
        exp, jaw, lids = tweak.apply(*faces.truth(index), n_model, torch.Generator().manual_seed(int(seed)))
        batch = as_smirk_batch(faces.render(index, exp, jaw, lids).to(device))
        enc = encoder(batch.image)
        pred = error.vertices(enc.expression, enc.jaw_pose, enc.eyelids)[:, error.face]
        true = error.vertices(exp.to(pred), jaw.to(pred), lids.to(pred))[:, error.face]
        targets.append(true * error.scale)
        preds.append(pred * error.scale)
    if not targets:
        raise ValueError("expression_probe needs at least one face (num_faces >= 1 and a non-empty split)")
    return torch.stack(targets), torch.stack(preds)


def _probe(target: Tensor, pred: Tensor, tweak: ExpressionTweak) -> ExpressionProbe:
    l1, abs_std = probe_statistics(target, pred)
    return ExpressionProbe(vert_l1_mm=float(l1), vert_abs_std_mm=float(abs_std), num_faces=target.shape[0],
                           num_copies=tweak.num_copies, vertices="face", tweak=tweak)


@torch.no_grad()
def expression_probe(encoder: SmirkEncoder, error: ExpressionVertexError, dataset: SyntheticFaceDataset,
                     num_faces: int, tweak: ExpressionTweak, device: torch.device | str = "cpu") -> ExpressionProbe:
    """Run the Table 4 probe on the first ``num_faces`` samples of ``dataset`` (see the module docstring).

    Per face ``m``: draw N tweaks of its true expression/jaw/eyelids (generator seeded with the dataset's seed and
    the sample key), render the N copies, encode them, and build the face-region expression-only vertices of the
    tweaked truth and of the estimates; :func:`probe_statistics` of the (M, N, V_face, 3) stacks, in mm.
    """
    return _probe(*_probe_vertices(encoder, error, dataset, num_faces, tweak, device), tweak)


@dataclass
class ConstantExpression:
    """A trivial predictor: the same expression, jaw and eyelids for every image.

    Attributes:
        name: ``"zero expression"`` or ``"train-set mean"``.
        expression: (K,) coefficients (the model's K). jaw_pose: (3,). eyelids: (2,).
    """

    name: str
    expression: Tensor
    jaw_pose: Tensor
    eyelids: Tensor

    @classmethod
    def zero(cls, n_expression: int) -> ConstantExpression:
        """The neutral face."""
        return cls("zero expression", torch.zeros(n_expression), torch.zeros(3), torch.zeros(2))

    @classmethod
    def mean_of(cls, expression: Tensor, jaw_pose: Tensor, eyelids: Tensor) -> ConstantExpression:
        """The train-set mean of (S, K) expressions (the model's K), (S, 3) jaws and (S, 2) eyelids."""
        return cls("train-set mean", expression.mean(0), jaw_pose.mean(0), eyelids.mean(0))

    def expand(self, batch_size: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, K) expression, (B, 3) jaw, (B, 2) eyelids on ``like``'s device/dtype."""
        return tuple(t.to(like).expand(batch_size, -1) for t in (self.expression, self.jaw_pose, self.eyelids))


@dataclass
class ExpressionBaseline:
    """What a :class:`ConstantExpression` scores on the same held-out faces (mm where the name says so).

    Attributes:
        name: the predictor's name. expression_mse: MSE of the coefficients.
        expression_vertex_error: face-region expression vertex errors (Table 2 format).
        probe: the Table 4 probe of the constant (None when the probe was not run).
    """

    name: str
    expression_mse: float
    expression_vertex_error: VertexErrorStats
    probe: ExpressionProbe | None = None


@dataclass
class SmirkBaselines:
    """The trivial baselines every metric is reported beside (module docstring).

    Attributes:
        nme_mp, nme_fan: landmark NME of the train split's mean landmarks (mediapipe-105, iBUG-68).
        zero: the zero-expression predictor. train_mean: the train-set mean predictor.
        num_train: train samples the means were taken over.
    """

    nme_mp: float
    nme_fan: float
    zero: ExpressionBaseline
    train_mean: ExpressionBaseline
    num_train: int

    @property
    def best_expression(self) -> ExpressionBaseline:
        """The better (lower mean vertex error) of the two constant predictors."""
        return min((self.zero, self.train_mean), key=lambda b: b.expression_vertex_error.mean_mm)


# ------------------------------------------------------------------------------------------------------ evaluation
@dataclass
class TrainStatistics:
    """The ``train`` split's means the trivial baselines predict.

    Attributes:
        landmarks_mp: (105, 2) mean mediapipe landmarks (NDC). landmarks_fan: (68, 2) mean iBUG landmarks (NDC).
        mean_expression: the train-set mean :class:`ConstantExpression`. num_samples: S samples averaged.
    """

    landmarks_mp: Tensor
    landmarks_fan: Tensor
    mean_expression: ConstantExpression
    num_samples: int


@torch.no_grad()
def train_statistics(dataset: SyntheticFaceDataset, n_expression: int, batch_size: int = 32) -> TrainStatistics:
    """Mean landmarks and mean ground-truth expression/jaw/eyelids of ``dataset`` (the ``train`` split)."""
    if len(dataset) < 1:
        raise ValueError("train_statistics needs at least one train sample")
    mp, fan, exp, jaw, lids = [], [], [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = as_smirk_batch(SyntheticFaceSample.collate(
            dataset.generate(list(range(start, min(start + batch_size, len(dataset)))))))
        mp.append(batch.landmarks_mp)
        fan.append(batch.landmarks_fan)
        gt = batch.ground_truth
        exp.append(gt.expression[:, :n_expression])
        jaw.append(gt.jaw_pose)
        lids.append(gt.eyelids)
    return TrainStatistics(torch.cat(mp).mean(0), torch.cat(fan).mean(0),
                           ConstantExpression.mean_of(torch.cat(exp), torch.cat(jaw), torch.cat(lids)), len(dataset))


@dataclass
class SmirkEvaluation:
    """Everything :func:`evaluate_encoder` measured (NME in NDC units, vertex errors in mm).

    Attributes:
        source: the checkpoint path, or ``"init"`` for randomly initialized encoders.
        phase: the checkpoint's training phase (``"pretrain"``, ``"core"``, or ``"init"``).
        image_size, split, seed, num_images: the held-out data.
        nme_mp, nme_fan: landmark NME of the 105 mediapipe and 68 iBUG points (NDC units).
        expression_mse: MSE of the model's expression coefficients.
        expression_vertex_error: face-region expression vertex errors (Table 2 format).
        probe: the Table 4 probe, or None when it was not run.
        baselines: the trivial baselines on the same faces (:class:`SmirkBaselines`), or None when not computed.
    """

    source: str
    phase: str
    image_size: int
    split: str
    seed: int
    num_images: int
    nme_mp: float
    nme_fan: float
    expression_mse: float
    expression_vertex_error: VertexErrorStats
    probe: ExpressionProbe | None = None
    baselines: SmirkBaselines | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def ratios(self) -> dict[str, float]:
        """Each headline metric divided by its trivial baseline (< 1: better than the baseline; needs baselines):
        ``nme_mp`` / mean landmarks, ``vertex_error`` (mean) / zero expression and / train-set mean,
        ``probe_abs_std`` / the zero-expression constant's (when the probe ran)."""
        if self.baselines is None:
            raise ValueError("this evaluation has no baselines (baseline_samples=0)")
        b = self.baselines
        out = {"nme_mp_vs_mean_landmarks": self.nme_mp / b.nme_mp,
               "nme_fan_vs_mean_landmarks": self.nme_fan / b.nme_fan,
               "vertex_error_vs_zero": self.expression_vertex_error.mean_mm / b.zero.expression_vertex_error.mean_mm,
               "vertex_error_vs_train_mean": (self.expression_vertex_error.mean_mm
                                              / b.train_mean.expression_vertex_error.mean_mm)}
        if self.probe is not None and b.zero.probe is not None:
            out["probe_abs_std_vs_zero"] = self.probe.vert_abs_std_mm / b.zero.probe.vert_abs_std_mm
        return out

    def format_table(self) -> str:
        """A readable report: every metric beside its trivial baselines (NME, Table 2 rows, Table 4 probe)."""
        v, b = self.expression_vertex_error, self.baselines
        head = (f"SMIRK evaluation of {self.source} (phase: {self.phase}) on {self.num_images} held-out synthetic "
                f"faces (split {self.split}, seed {self.seed}, {self.image_size}x{self.image_size})")
        if b is None:
            return "\n".join([
                head, "", f"landmark NME (NDC units)     mediapipe-105 {self.nme_mp:.4f}    iBUG-68 {self.nme_fan:.4f}",
                f"expression coefficient MSE   {self.expression_mse:.4f}",
                f"expression vertex error (mm; supplementary Table 2): mean {v.mean_mm:.3f} median {v.median_mm:.3f} "
                f"max {v.max_mm:.3f}"] + self._probe_lines())
        cols = ["model", "zero exp", "train mean", "mean lmk"]
        width = 36

        def row(name: str, model: float, zero: float | None, mean: float | None, lmk: float | None, fmt: str) -> str:
            cells = [format(x, fmt) if x is not None else "-" for x in (model, zero, mean, lmk)]
            return f"  {name:<{width}}" + "".join(f"{c:>12}" for c in cells)

        z, m = b.zero, b.train_mean
        zv, mv = z.expression_vertex_error, m.expression_vertex_error
        lines = [head, f"(baselines: zero expression; the train-set mean expression/jaw/eyelids and mean landmarks "
                       f"over {b.num_train} train samples)", "",
                 f"  {'metric':<{width}}" + "".join(f"{c:>12}" for c in cols),
                 row("landmark NME mediapipe-105 (NDC)", self.nme_mp, None, None, b.nme_mp, ".4f"),
                 row("landmark NME iBUG-68 (NDC)", self.nme_fan, None, None, b.nme_fan, ".4f"),
                 row("expression coefficient MSE", self.expression_mse, z.expression_mse, m.expression_mse, None,
                     ".4f"),
                 f"  expression vertex error, face region, {v.num_vertices} vertices (mm; supplementary Table 2)",
                 row("  mean (per image, averaged)", v.mean_mm, zv.mean_mm, mv.mean_mm, None, ".3f"),
                 row("  median (per image, averaged)", v.median_mm, zv.median_mm, mv.median_mm, None, ".3f"),
                 row("  max (per image, averaged)", v.max_mm, zv.max_mm, mv.max_mm, None, ".3f"),
                 row("  per-vertex field median", v.field_median_mm, zv.field_median_mm, mv.field_median_mm, None,
                     ".3f"),
                 row("  per-vertex field max", v.field_max_mm, zv.field_max_mm, mv.field_max_mm, None, ".3f")]
        if self.probe is not None:
            p = self.probe
            lines += [f"  expression-change probe, {p.num_faces} faces x {p.num_copies} tweaks, {p.vertices} region "
                      "(mm; supplementary Table 4)",
                      row("  vert L1", p.vert_l1_mm, z.probe and z.probe.vert_l1_mm,
                          m.probe and m.probe.vert_l1_mm, None, ".4f"),
                      row("  vert abs std", p.vert_abs_std_mm, z.probe and z.probe.vert_abs_std_mm,
                          m.probe and m.probe.vert_abs_std_mm, None, ".4f")]
        ratios = self.ratios()
        lines += ["", "  relative to the baselines (< 1 is better): " + ", ".join(
            f"{k} {r:.3f}" for k, r in ratios.items())]
        return "\n".join(lines)

    def _probe_lines(self) -> list[str]:
        if self.probe is None:
            return []
        p = self.probe
        return ["", f"expression-change probe, {p.num_faces} faces x {p.num_copies} tweaks, {p.vertices} region "
                    "(mm; supplementary Table 4)",
                f"  vert L1 {p.vert_l1_mm:.4f}    vert abs std {p.vert_abs_std_mm:.4f}"]

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as indented JSON (parent folders created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


@torch.no_grad()
def evaluate_encoder(encoder: SmirkEncoder, flame: Flame, dataset: SyntheticFaceDataset, *, flame_path: str,
                     batch_size: int = 32, device: torch.device | str = "cpu", probe_faces: int = 32,
                     tweak: ExpressionTweak | None = None, source: str = "encoder", phase: str = "unknown",
                     train_stats: TrainStatistics | None = None) -> SmirkEvaluation:
    """Landmark NME, expression errors and (``probe_faces > 0``) the Table 4 probe of ``encoder`` on ``dataset``,
    and, given ``train_stats``, the same metrics of the trivial baselines on the same faces.

    The encoder runs in eval mode (BatchNorm running statistics); its training mode is restored afterwards.

    Args:
        encoder: the three SMIRK encoders. flame: the FLAME they predict parameters of (``n_expression`` as
            trained; with the mediapipe embedding and the ``face`` region). dataset: held-out synthetic faces
            (``camera="weak"``, FLAME family). flame_path: ``flame``'s source (for the truth's larger FLAME).
        batch_size: images per forward pass. device: where to run. probe_faces: M faces probed (0: no probe).
        tweak: the probe's tweaks (None: :class:`ExpressionTweak` defaults). source, phase: recorded as given.
        train_stats: the train split's means (:func:`train_statistics`); None: no baselines.
    """
    was_training = encoder.training
    encoder.to(device).eval()
    flame = flame.to(device)
    error = ExpressionVertexError(flame, flame_path)
    tweak = tweak or ExpressionTweak()
    n_exp = flame.n_expression
    constants = [] if train_stats is None else [ConstantExpression.zero(n_exp), train_stats.mean_expression]
    nme_mp, nme_fan, exp_mse, vertex_errors = [], [], [], []
    base_nme_mp, base_nme_fan = [], []
    base_mse, base_vertex = [[] for _ in constants], [[] for _ in constants]
    try:
        for start in range(0, len(dataset), batch_size):
            indices = list(range(start, min(start + batch_size, len(dataset))))
            batch = as_smirk_batch(SyntheticFaceSample.collate(dataset.generate(indices)).to(device))
            gt = batch.ground_truth
            enc = encoder(batch.image)
            mesh, camera = flame(enc.flame_params()), enc.camera()
            nme_mp.append(landmark_nme(camera.project(mesh.landmarks_mp), batch.landmarks_mp))
            nme_fan.append(landmark_nme(camera.project(mesh.landmarks68), batch.landmarks_fan))
            exp_mse.append(expression_mse(enc.expression, gt.expression))
            vertex_errors.append(error(enc.expression, enc.jaw_pose, enc.eyelids, gt))
            if train_stats is not None:
                base_nme_mp.append(landmark_nme(train_stats.landmarks_mp.to(batch.landmarks_mp).expand_as(
                    batch.landmarks_mp), batch.landmarks_mp))
                base_nme_fan.append(landmark_nme(train_stats.landmarks_fan.to(batch.landmarks_fan).expand_as(
                    batch.landmarks_fan), batch.landmarks_fan))
            for c, const in enumerate(constants):
                exp, jaw, lids = const.expand(len(indices), enc.expression)
                base_mse[c].append(expression_mse(exp, gt.expression))
                base_vertex[c].append(error(exp, jaw, lids, gt))
        probe, target = None, None
        if probe_faces > 0:
            target, pred = _probe_vertices(encoder, error, dataset, probe_faces, tweak, device)
            probe = _probe(target, pred, tweak)
    finally:
        encoder.train(was_training)
    baselines = None
    if train_stats is not None:
        scored = []
        for c, const in enumerate(constants):
            const_probe = None
            if target is not None:
                m, n = target.shape[:2]
                exp, jaw, lids = const.expand(1, target)
                verts = error.vertices(exp, jaw, lids)[:, error.face] * error.scale  # (1, V_face, 3)
                const_probe = _probe(target, verts[None].expand(m, n, -1, -1), tweak)
            scored.append(ExpressionBaseline(const.name, float(torch.cat(base_mse[c]).mean()),
                                             vertex_error_stats(torch.cat(base_vertex[c]).cpu()), const_probe))
        baselines = SmirkBaselines(nme_mp=float(torch.cat(base_nme_mp).mean()),
                                   nme_fan=float(torch.cat(base_nme_fan).mean()), zero=scored[0],
                                   train_mean=scored[1], num_train=train_stats.num_samples)
    return SmirkEvaluation(source=source, phase=phase, image_size=dataset.image_size, split=dataset.split,
                           seed=dataset.seed, num_images=len(dataset), nme_mp=float(torch.cat(nme_mp).mean()),
                           nme_fan=float(torch.cat(nme_fan).mean()), expression_mse=float(torch.cat(exp_mse).mean()),
                           expression_vertex_error=vertex_error_stats(torch.cat(vertex_errors).cpu()), probe=probe,
                           baselines=baselines)


@dataclass
class EvaluationModel:
    """An encoder to evaluate with its FLAME and the data settings it was trained with.

    Attributes:
        encoder, flame: the networks. flame_path: FLAME's source. phase: ``"pretrain"``, ``"core"`` or ``"init"``.
        image_size: the crops the encoder was trained on. data: the training datamodule's hyperparameters (may be
            empty: then the synthetic defaults are used).
    """

    encoder: SmirkEncoder
    flame: Flame
    flame_path: str
    phase: str
    image_size: int
    data: dict


def _read_checkpoint(path: str) -> dict:
    """A Lightning checkpoint of :class:`smirk.module.SmirkModule` (``torch.load(weights_only=True)``)."""
    ckpt = read_checkpoint(path, what="SMIRK checkpoint", config_key="--ckpt")
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise AssetFormatError(f"{path}: not a Lightning checkpoint of smirk.SmirkModule (needs 'state_dict' and "
                               "'hyper_parameters')")
    return ckpt


def load_evaluation_model(ckpt: str | None, image_size: int | None = None, seed: int = 0) -> EvaluationModel:
    """The encoders of a SMIRK checkpoint (either phase), or randomly initialized ones (``ckpt=None``).

    ``n_shape``, ``n_expression``, ``image_size`` and ``flame_path`` come from the checkpoint's
    ``hyper_parameters`` (the initialization uses SMIRK's defaults, 300 / 50 / 224 / ``"synthetic"``, with
    ``image_size`` overridable and weights drawn from ``seed``, leaving the global RNG as it was).

    Raises:
        MissingAssetError: no such checkpoint. AssetFormatError: not a SMIRK checkpoint, or weights that do not fit.
        ValueError: ``image_size`` differs from the size the checkpoint was trained at.
    """
    if ckpt is None:
        hp, data, phase = {}, {}, "init"
    else:
        raw = _read_checkpoint(ckpt)
        hp, data = dict(raw["hyper_parameters"]), dict(raw.get("datamodule_hyper_parameters") or {})
        phase = str(hp.get("phase", "unknown"))
    trained_size = int(hp.get("image_size", image_size or 224))
    if ckpt is not None and image_size is not None and image_size != trained_size:
        raise ValueError(f"{ckpt} was trained on {trained_size}x{trained_size} crops; --image-size {image_size} "
                         "would evaluate it out of distribution (leave it out or set it alike)")
    n_shape, n_expression = int(hp.get("n_shape", 300)), int(hp.get("n_expression", 50))
    flame_path = str(hp.get("flame_path", "synthetic"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = SmirkEncoder(n_shape, n_expression)
    if ckpt is not None:
        load_encoder_checkpoint(encoder, ckpt, config_key="--ckpt")
    flame = Flame(flame_path, n_shape=n_shape, n_expression=n_expression)
    return EvaluationModel(encoder, flame, flame_path, phase, trained_size, data)


def held_out_dataset(model: EvaluationModel, num_images: int, split: str = "test", seed: int | None = None
                     ) -> SyntheticFaceDataset:
    """The ``split`` of the synthetic world the model's datamodule drew from (seed, uv size, scene, model)."""
    data = model.data
    scene = data.get("scene")
    family = data.get("family", "flame")
    if family != "flame" or data.get("camera", "weak") != "weak":
        raise ValueError(f"SMIRK evaluates on FLAME faces with a weak-perspective camera; the checkpoint's data "
                         f"used family={family!r}, camera={data.get('camera')!r}")
    return SyntheticFaceDataset(
        family="flame", model_path=str(data.get("model_path", model.flame_path)), num_samples=num_images,
        split=split, seed=int(data.get("seed", 0) if seed is None else seed), image_size=model.image_size,
        camera="weak", uv_size=int(data.get("uv_size", min(256, model.image_size))),
        scene=SceneConfig(**scene) if isinstance(scene, dict) else None,
        render_wrinkles=bool(data.get("render_wrinkles", True)))


def evaluate_checkpoint(ckpt: str | None, *, num_images: int = 256, image_size: int | None = None,
                        batch_size: int = 32, device: str = "cpu", probe_faces: int = 32,
                        tweak: ExpressionTweak | None = None, split: str = "test", seed: int | None = None,
                        baseline_samples: int = 256) -> SmirkEvaluation:
    """:func:`evaluate_encoder` of a checkpoint (or, ``ckpt=None``, of a random initialization) on ``num_images``
    held-out synthetic faces (:func:`held_out_dataset`), beside the trivial baselines whose means are taken over
    ``baseline_samples`` faces of the ``train`` split (0: no baselines). See :func:`load_evaluation_model` for the
    errors."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if baseline_samples < 0:
        raise ValueError(f"baseline_samples must be >= 0, got {baseline_samples}")
    model = load_evaluation_model(ckpt, image_size, seed=0 if seed is None else seed)
    dataset = held_out_dataset(model, num_images, split, seed)
    stats = None
    if baseline_samples > 0:
        stats = train_statistics(held_out_dataset(model, baseline_samples, "train", seed), model.flame.n_expression,
                                 batch_size)
    result = evaluate_encoder(model.encoder, model.flame, dataset, flame_path=model.flame_path,
                              batch_size=batch_size, device=device, probe_faces=probe_faces, tweak=tweak,
                              source=str(ckpt) if ckpt is not None else "init", phase=model.phase,
                              train_stats=stats)
    if not math.isfinite(result.nme_mp):
        raise AssetFormatError(f"{result.source}: the encoder produced non-finite landmarks (a diverged run?)")
    return result
