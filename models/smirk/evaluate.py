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
    "SmirkEvaluation",
    "evaluate_checkpoint",
    "evaluate_encoder",
    "expression_probe",
    "held_out_dataset",
    "load_evaluation_model",
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


@torch.no_grad()
def expression_probe(encoder: SmirkEncoder, error: ExpressionVertexError, dataset: SyntheticFaceDataset,
                     num_faces: int, tweak: ExpressionTweak, device: torch.device | str = "cpu") -> ExpressionProbe:
    """Run the Table 4 probe on the first ``num_faces`` samples of ``dataset`` (see the module docstring).

    Per face ``m``: draw N tweaks of its true expression/jaw/eyelids (generator seeded with the dataset's seed and
    the sample key), render the N copies, encode them, and build the face-region expression-only vertices of the
    tweaked truth and of the estimates; :func:`probe_statistics` of the (M, N, V_face, 3) stacks, in mm.
    """
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
    l1, abs_std = probe_statistics(torch.stack(targets), torch.stack(preds))
    return ExpressionProbe(vert_l1_mm=float(l1), vert_abs_std_mm=float(abs_std), num_faces=len(targets),
                           num_copies=tweak.num_copies, vertices="face", tweak=tweak)


# ------------------------------------------------------------------------------------------------------ evaluation
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

    def to_dict(self) -> dict:
        return asdict(self)

    def format_table(self) -> str:
        """A readable report: NME, the Table 2 rows (mean / median / max) and the Table 4 probe."""
        v = self.expression_vertex_error
        lines = [f"SMIRK evaluation of {self.source} (phase: {self.phase}) on {self.num_images} held-out synthetic "
                 f"faces (split {self.split}, seed {self.seed}, {self.image_size}x{self.image_size})",
                 "",
                 f"landmark NME (NDC units)     mediapipe-105 {self.nme_mp:.4f}    iBUG-68 {self.nme_fan:.4f}",
                 f"expression coefficient MSE   {self.expression_mse:.4f}",
                 "",
                 f"expression vertex error, face region, {v.num_vertices} vertices (mm; supplementary Table 2)",
                 f"  {'':<34}{'mean':>8}{'median':>8}{'max':>8}",
                 f"  {'per image, averaged over images':<34}{v.mean_mm:8.3f}{v.median_mm:8.3f}{v.max_mm:8.3f}",
                 f"  {'image-averaged per-vertex error':<34}{v.mean_mm:8.3f}{v.field_median_mm:8.3f}"
                 f"{v.field_max_mm:8.3f}"]
        if self.probe is not None:
            p = self.probe
            lines += ["", f"expression-change probe, {p.num_faces} faces x {p.num_copies} tweaks, {p.vertices} region "
                          "(mm; supplementary Table 4)",
                      f"  vert L1 {p.vert_l1_mm:.4f}    vert abs std {p.vert_abs_std_mm:.4f}"]
        return "\n".join(lines)

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as indented JSON (parent folders created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


@torch.no_grad()
def evaluate_encoder(encoder: SmirkEncoder, flame: Flame, dataset: SyntheticFaceDataset, *, flame_path: str,
                     batch_size: int = 32, device: torch.device | str = "cpu", probe_faces: int = 32,
                     tweak: ExpressionTweak | None = None, source: str = "encoder", phase: str = "unknown"
                     ) -> SmirkEvaluation:
    """Landmark NME, expression errors and (``probe_faces > 0``) the Table 4 probe of ``encoder`` on ``dataset``.

    The encoder runs in eval mode (BatchNorm running statistics); its training mode is restored afterwards.

    Args:
        encoder: the three SMIRK encoders. flame: the FLAME they predict parameters of (``n_expression`` as
            trained; with the mediapipe embedding and the ``face`` region). dataset: held-out synthetic faces
            (``camera="weak"``, FLAME family). flame_path: ``flame``'s source (for the truth's larger FLAME).
        batch_size: images per forward pass. device: where to run. probe_faces: M faces probed (0: no probe).
        tweak: the probe's tweaks (None: :class:`ExpressionTweak` defaults). source, phase: recorded as given.
    """
    was_training = encoder.training
    encoder.to(device).eval()
    flame = flame.to(device)
    error = ExpressionVertexError(flame, flame_path)
    nme_mp, nme_fan, exp_mse, vertex_errors = [], [], [], []
    try:
        for start in range(0, len(dataset), batch_size):
            indices = list(range(start, min(start + batch_size, len(dataset))))
            batch = as_smirk_batch(SyntheticFaceSample.collate(dataset.generate(indices)).to(device))
            enc = encoder(batch.image)
            mesh, camera = flame(enc.flame_params()), enc.camera()
            nme_mp.append(landmark_nme(camera.project(mesh.landmarks_mp), batch.landmarks_mp))
            nme_fan.append(landmark_nme(camera.project(mesh.landmarks68), batch.landmarks_fan))
            exp_mse.append(expression_mse(enc.expression, batch.ground_truth.expression))
            vertex_errors.append(error(enc.expression, enc.jaw_pose, enc.eyelids, batch.ground_truth))
        probe = None
        if probe_faces > 0:
            probe = expression_probe(encoder, error, dataset, probe_faces, tweak or ExpressionTweak(), device)
    finally:
        encoder.train(was_training)
    return SmirkEvaluation(source=source, phase=phase, image_size=dataset.image_size, split=dataset.split,
                           seed=dataset.seed, num_images=len(dataset), nme_mp=float(torch.cat(nme_mp).mean()),
                           nme_fan=float(torch.cat(nme_fan).mean()), expression_mse=float(torch.cat(exp_mse).mean()),
                           expression_vertex_error=vertex_error_stats(torch.cat(vertex_errors).cpu()), probe=probe)


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
                        tweak: ExpressionTweak | None = None, split: str = "test", seed: int | None = None
                        ) -> SmirkEvaluation:
    """:func:`evaluate_encoder` of a checkpoint (or, ``ckpt=None``, of a random initialization) on ``num_images``
    held-out synthetic faces (:func:`held_out_dataset`). See :func:`load_evaluation_model` for the errors."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    model = load_evaluation_model(ckpt, image_size, seed=0 if seed is None else seed)
    dataset = held_out_dataset(model, num_images, split, seed)
    result = evaluate_encoder(model.encoder, model.flame, dataset, flame_path=model.flame_path,
                              batch_size=batch_size, device=device, probe_faces=probe_faces, tweak=tweak,
                              source=str(ckpt) if ckpt is not None else "init", phase=model.phase)
    if not math.isfinite(result.nme_mp):
        raise AssetFormatError(f"{result.source}: the encoder produced non-finite landmarks (a diverged run?)")
    return result
