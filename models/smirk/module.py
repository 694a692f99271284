"""``SmirkModule``: SMIRK's training recipe (pretraining and core phase) as a LightningModule.

Recipe: ``shared/docs/smirk_reference.md`` ("Losses and weights", "Schedule", "Augmented expression cycle path",
"Masking") and the supplementary material (§1.2 transfer pixels, §1.3 structural identity loss, §1.6 training
details, §3.1 masking). The building blocks live in :mod:`smirk.networks`, :mod:`smirk.masking`,
:mod:`smirk.cycle` and :mod:`smirk.losses`; this module only wires them and owns the optimization schedule.

* ``phase="pretrain"``: no generator; the pose, shape and expression encoders learn from landmarks (mediapipe 105
  + FAN contour) with expression regularization and, when MICA weights are given, the shape teacher. One Adam step
  per batch (supplementary §1.6: lr 5e-4).
* ``phase="core"``: pose and shape encoders frozen (``requires_grad=False``, BatchNorm in eval mode); the expression
  encoder and the generator alternate by batch: even batches step the generator (encoder frozen, grad-norm clip
  0.1), odd batches step the expression encoder (generator frozen). Each batch takes two optimizer steps, one on the
  reconstruction path and one on the augmented cycle path, so ``trainer.global_step`` (which counts optimizer
  steps) advances by 2 per batch: the paper's 250k core iterations are ``max_steps=500000``.

Learning rates: Adam; generator lr = ``lr`` with betas (0.5, 0.999); encoder lr = ``encoder_lr_factor * lr`` in
the core phase (0.25) and ``lr`` in pretraining; cosine annealing per iteration, restarted at every epoch
(supplementary §1.6), stepped once per batch.

Frames: landmarks in NDC (+y up) as in :mod:`smirk.data`; the NME metrics are mean Euclidean distances in those
[-1, 1] units (half the crop side = 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from facelab.errors import AssetFormatError
from facelab.io.weights import load_state_dict_strict, read_state_dict
from facelab.log import get_logger, warn_missing_weights
from facelab.morphable import Flame, MeshOutput
from facelab.render import MeshRenderer, RenderOutput, ndc_to_pixels, shape_lights
from facelab.training import (
    GuardedStep,
    ImageGridLogger,
    StepOutcome,
    epoch_cosine,
    freeze,
    kept_norm_statistics,
    norm_statistics,
    restore_frozen_modes,
    restore_norm_statistics,
    set_steps_per_epoch,
    step_schedulers,
    tensorboard_writer,
)
from facelab.viz import draw_landmarks, mesh_overlay
from smirk.cycle import AUGMENTATION_GROUPS, ExpressionTemplates, augment_expressions, synthetic_templates
from smirk.data import FlameGroundTruth, SmirkBatch, as_smirk_batch
from smirk.losses import (
    CycleLoss,
    EmotionFeatureLoss,
    MicaShapeTeacher,
    VGGPerceptualLoss,
    affine_aligned_landmark_loss,
    expression_regularization,
    fan_contour_landmark_loss,
    jaw_regularization,
    landmark_loss,
    reconstruction_loss,
    structural_identity_loss,
)
from smirk.masking import MaskedInput, SmirkMasker
from smirk.metrics import ExpressionVertexError, expression_mse, landmark_nme
from smirk.networks import SmirkEncoder, SmirkEncoding, SmirkGenerator

__all__ = ["SmirkLossWeights", "SmirkModule", "load_encoder_checkpoint"]

log = get_logger(__name__)

#: SMIRK's gray albedo for the rendered face (smirk_reference.md "Renderer").
RENDER_ALBEDO = 180.0 / 255.0


@dataclass
class SmirkLossWeights:
    """Loss weights; the defaults are the core phase's (smirk_reference.md, "Losses and weights").

    Use :meth:`for_phase` for pretraining's. The supplementary material (§1.6) lists photo 1, VGG 10, cycle 10; the
    public code (and these defaults) use reconstruction 10, perceptual 10, cycle 1: both are expressible here.

    Attributes:
        landmark_mp: MSE of the 105 mediapipe landmarks (NDC).
        landmark_fan: MSE of the 17 FAN contour landmarks (skipped where absent).
        landmark_aligned: MSE of the 105 mediapipe landmarks after the best affine camera
            (:func:`smirk.losses.affine_aligned_landmark_loss`); when non-zero, expression, jaw and eyelids learn
            from this term only and the projected landmark terms train pose, camera and shape (issue 9: the
            expression head then cannot absorb pose/camera errors). 0 in the paper's recipe;
            ``configs/smirk_synthetic.yaml`` turns it on.
        expression_reg: ``mean(exp^2)``.
        jaw_reg: ``mean(jaw^2)``.
        shape_teacher: ``MSE(shape, MICA(image))`` (needs MICA weights).
        reconstruction: L1 between the translator's output and the image.
        perceptual: VGG16 feature L1 (needs VGG weights).
        emotion: emotion-feature L2 (needs emotion-network weights; trains the encoder only).
        cycle: the cycle-path consistency loss (its inner weights: :class:`smirk.losses.CycleLoss`).
        structural_identity: frozen-shape-encoder L2, generated vs input (supplementary §1.3; generator only).
    """

    landmark_mp: float = 100.0
    landmark_fan: float = 100.0
    landmark_aligned: float = 0.0
    expression_reg: float = 1e-3
    jaw_reg: float = 1e-2
    shape_teacher: float = 0.0
    reconstruction: float = 10.0
    perceptual: float = 10.0
    emotion: float = 1.0
    cycle: float = 1.0
    structural_identity: float = 1.0

    #: The terms each phase computes; a non-zero weight on any other term is a configuration error (issue 9: keys
    #: that nothing reads must not look as if they ran).
    PHASE_TERMS = {
        "pretrain": ("landmark_mp", "landmark_fan", "landmark_aligned", "expression_reg", "jaw_reg", "shape_teacher"),
        "core": ("landmark_mp", "landmark_fan", "landmark_aligned", "expression_reg", "jaw_reg", "reconstruction",
                 "perceptual", "emotion", "cycle", "structural_identity"),
    }

    def check_phase(self, phase: str) -> None:
        """Raise ``ValueError`` naming the non-zero weights ``phase`` never reads (set them to 0 or remove them)."""
        unread = [f"{k}={v:g}" for k, v in asdict(self).items() if v and k not in self.PHASE_TERMS[phase]]
        if unread:
            raise ValueError(f"model.init_args.loss_weights: the {phase} phase computes no {', '.join(unread)} term "
                             f"(it reads {', '.join(self.PHASE_TERMS[phase])}); set them to 0 or remove them")

    @classmethod
    def for_phase(cls, phase: str) -> SmirkLossWeights:
        """The reference weights of ``"pretrain"`` or ``"core"``."""
        if phase == "core":
            return cls()
        if phase == "pretrain":
            return cls(expression_reg=1e-2, jaw_reg=0.0, shape_teacher=10.0, reconstruction=0.0, perceptual=0.0,
                       emotion=0.0, cycle=0.0, structural_identity=0.0)
        raise ValueError(f"phase must be 'pretrain' or 'core', got {phase!r}")


def load_encoder_checkpoint(encoder: SmirkEncoder, path: str, config_key: str = "model.init_args.pretrain_ckpt"
                            ) -> None:
    """Load the three encoders from a pretraining checkpoint (``torch.load(weights_only=True)``), strictly.

    Accepts a Lightning checkpoint of :class:`SmirkModule` (keys ``encoder.*`` of its ``state_dict``) or a plain
    :class:`smirk.networks.SmirkEncoder` state dict.

    Raises:
        MissingAssetError: no such file. AssetFormatError: keys or shapes do not fit the encoder.
    """
    state = read_state_dict(path, what="SMIRK pretraining checkpoint", config_key=config_key)
    sub = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")} or state
    load_state_dict_strict(encoder, sub, path, hint=f"set by {config_key}; same n_shape / n_expression as in "
                                                    "pretraining?")


@dataclass
class _Reconstruction:
    """What the reconstruction path produced (for the cycle path and the image grid)."""

    encoding: SmirkEncoding
    mesh: MeshOutput
    render: RenderOutput
    masked: MaskedInput
    verts_px: Tensor
    generated: Tensor


class SmirkModule(LightningModule):
    """SMIRK (Retsinas et al., CVPR 2024) training: landmark pretraining or the analysis-by-neural-synthesis core.

    Args:
        phase: ``"pretrain"`` (encoders from landmarks) or ``"core"`` (expression encoder + generator).
        encoder: the three encoders; None builds :class:`SmirkEncoder` with the ``*_backbone_weights``.
        generator: the image-to-image translator (core phase); None builds :class:`SmirkGenerator`.
        masker: builds the generator's masked input; None builds :class:`SmirkMasker` with the reference settings.
        loss_weights: None takes :meth:`SmirkLossWeights.for_phase` of ``phase``.
        flame_path: FLAME asset (``generic_model.pkl``, its folder, or ``"synthetic"``).
        n_shape: FLAME shape components (300).
        n_expression: FLAME expression components (50).
        image_size: side of the square input crops (224).
        pretrain_ckpt: core phase: checkpoint of the pretraining phase whose pose/shape/expression encoders are
            loaded; None starts them from their initialization (a WARNING) and, unless ``train_pose_shape`` says
            otherwise, trains the pose and shape encoders in the core phase too (from the landmark terms), so that
            ``lightning-cli fit --config configs/smirk.yaml`` alone still learns a usable model.
        train_pose_shape: core phase: also train the pose/shape encoders (the paper freezes them after
            pretraining). None: only when ``pretrain_ckpt`` is None.
        pose_backbone_weights, shape_backbone_weights, expression_backbone_weights: local ImageNet timm weights of
            the MobileNetV3 backbones when ``encoder`` is None (None: random initialization, logged).
        vgg_weights: torchvision VGG16 state dict for the perceptual loss (or inject ``perceptual_loss``); without
            either, the term is switched off with a WARNING.
        emotion_weights: emotion-network ResNet-50 state dict (or inject ``emotion_loss``); without either, the
            term is switched off with a WARNING.
        mica_path: MICA shape-teacher export (pretraining); ``"synthetic"``: on synthetic data the true shape stands
            in for MICA's prediction (the term resolves the scale/identity ambiguity of landmark-only fitting);
            None: the teacher term is switched off with a WARNING.
        perceptual_loss: an already built :class:`VGGPerceptualLoss` (e.g. ``allow_random=True`` in tests).
        emotion_loss: an already built :class:`EmotionFeatureLoss` (e.g. EMOCA's with ``key_prefix``).
        cycle_loss: the cycle path's loss with its inner weights; None: :class:`CycleLoss` (exp 1, jaw 10,
            eyelids 10, shape 1 on generator batches).
        templates_path: expression templates for the cycle path's template-injection group: an
            :class:`smirk.cycle.ExpressionTemplates` ``.npz`` (e.g. FaMoS fits), ``"synthetic"`` for
            :func:`smirk.cycle.synthetic_templates` (only with the synthetic FLAME, ``flame_path: synthetic``), or
            None to drop that group (a WARNING).
        cycle_groups: the cycle path's augmentation groups (supplementary Table 3 ablations are subsets).
        cycle_updates_norm_stats: let the cycle path's encoder pass over the translator's images update the
            expression encoder's BatchNorm running statistics, as the public code does. False (default): that pass
            normalises with its batch's statistics as usual, but the running statistics, which the encoder uses
            at test time on real images, keep describing real images only (issue 9: an early translator's output
            moved them so far that 100 core batches took the held-out expression vertex error from 1.7 to 6 mm,
            with the cycle loss switched off).
        lr: base learning rate; None: 5e-4 in pretraining, 1e-3 in the core phase (supplementary §1.6).
        encoder_lr_factor: core phase: encoder lr = factor x ``lr`` (0.25).
        generator_betas: Adam betas of the generator.
        generator_grad_clip: gradient-norm clip of the generator (0.1; 0 disables).
        min_lr_factor: lr floor of the per-epoch cosine, as a fraction of the base lr.
        log_images_every_n_steps: training batches between TensorBoard image grids (0: never).
        max_logged_images: samples (columns) per image grid.

    The loss weights that really run (``self.weights``: the requested ones with the terms whose network has no
    weights switched off) are logged as hyper-parameters, ``resolved_loss_weights/<term>`` in TensorBoard.
    """

    def __init__(
        self,
        phase: Literal["pretrain", "core"] = "core",
        encoder: SmirkEncoder | None = None,
        generator: SmirkGenerator | None = None,
        masker: SmirkMasker | None = None,
        loss_weights: SmirkLossWeights | None = None,
        flame_path: str = "synthetic",
        n_shape: int = 300,
        n_expression: int = 50,
        image_size: int = 224,
        pretrain_ckpt: str | None = None,
        train_pose_shape: bool | None = None,
        pose_backbone_weights: str | None = None,
        shape_backbone_weights: str | None = None,
        expression_backbone_weights: str | None = None,
        vgg_weights: str | None = None,
        emotion_weights: str | None = None,
        mica_path: str | None = None,
        perceptual_loss: VGGPerceptualLoss | None = None,
        emotion_loss: EmotionFeatureLoss | None = None,
        cycle_loss: CycleLoss | None = None,
        templates_path: str | None = None,
        cycle_groups: tuple[str, ...] = AUGMENTATION_GROUPS,
        cycle_updates_norm_stats: bool = False,
        lr: float | None = None,
        encoder_lr_factor: float = 0.25,
        generator_betas: tuple[float, float] = (0.5, 0.999),
        generator_grad_clip: float = 0.1,
        min_lr_factor: float = 0.0,
        log_images_every_n_steps: int = 500,
        max_logged_images: int = 8,
    ) -> None:
        super().__init__()
        if phase not in ("pretrain", "core"):
            raise ValueError(f"phase must be 'pretrain' or 'core', got {phase!r}")
        if isinstance(loss_weights, dict):  # hparams of a checkpoint store the weights as a plain dict
            loss_weights = SmirkLossWeights(**loss_weights)
        self.automatic_optimization = False
        self.phase, self.image_size = phase, int(image_size)
        requested = loss_weights if loss_weights is not None else SmirkLossWeights.for_phase(phase)
        requested.check_phase(phase)
        self.weights = SmirkLossWeights(**asdict(requested))  # effective: terms without weights files set to 0
        self.lr = lr if lr is not None else (1e-3 if phase == "core" else 5e-4)
        self.encoder_lr_factor, self.generator_betas = encoder_lr_factor, tuple(generator_betas)
        self.generator_grad_clip, self.min_lr_factor = generator_grad_clip, min_lr_factor
        self.image_grid = ImageGridLogger(log_images_every_n_steps, max_logged_images)
        self.guarded_step = GuardedStep.for_lightning(self, name="SMIRK", logger=__name__)

        self.flame = Flame(flame_path, n_shape=n_shape, n_expression=n_expression)
        if not self.flame.has_mediapipe or "face" not in self.flame.regions:
            raise AssetFormatError(f"SMIRK needs FLAME's mediapipe landmark embedding and its 'face' region mask "
                                   f"(FLAME_masks.pkl) beside {flame_path} (model.init_args.flame_path)")
        self.renderer = MeshRenderer.from_model(self.flame, region="face", image_size=self.image_size)
        self.masker = masker if masker is not None else SmirkMasker()
        self.masker.set_topology(self.flame.faces, self.flame.regions, allowed_faces=self.flame.region_faces("face"))
        self.encoder = self._build_encoder(encoder, n_shape, n_expression, pose_backbone_weights,
                                           shape_backbone_weights, expression_backbone_weights)
        self.generator = None
        self.train_pose_shape = phase == "core" and (pretrain_ckpt is None if train_pose_shape is None
                                                     else bool(train_pose_shape))
        if phase == "core":
            self._load_pretrained(pretrain_ckpt)
            if not self.train_pose_shape:  # the paper's recipe: frozen after pretraining, kept in eval mode by train()
                freeze(self.encoder.pose_encoder, self.encoder.shape_encoder)
            self.generator = generator if generator is not None else SmirkGenerator()
        elif generator is not None or pretrain_ckpt is not None:
            log.warning("phase='pretrain' trains no generator and loads no pretraining checkpoint: `generator` / "
                        "`pretrain_ckpt` are ignored")
        self.perceptual_loss = self._feature_loss(
            "perceptual", perceptual_loss, vgg_weights, "vgg_weights", lambda p: VGGPerceptualLoss(weights_path=p),
            "VGG16 (SMIRK perceptual loss)", "the translator and the expression encoder learn from the L1 "
            "reconstruction alone (blurrier translations, weaker expression gradients)")
        self.emotion_loss = self._feature_loss(
            "emotion", emotion_loss, emotion_weights, "emotion_weights", lambda p: EmotionFeatureLoss(weights_path=p),
            "the emotion-recognition ResNet-50 (SMIRK emotion loss)", "the expression encoder is not pushed to keep "
            "the input's emotion in the translated image")
        # mica_path "synthetic": the synthetic world's true shape stands in for MICA's prediction (synthetic data)
        self.synthetic_shape_teacher = mica_path == "synthetic"
        self.shape_teacher = None if self.synthetic_shape_teacher else self._feature_loss(
            "shape_teacher", None, mica_path, "mica_path", lambda p: MicaShapeTeacher(weights_path=p, n_shape=n_shape),
            "MICA (SMIRK shape teacher)", "the shape encoder learns from landmarks alone, whose scale/identity "
            "ambiguity it cannot resolve (on synthetic data set it to 'synthetic')")
        self.cycle_loss = cycle_loss if cycle_loss is not None else CycleLoss()
        self.cycle_updates_norm_stats = bool(cycle_updates_norm_stats)
        self.cycle_groups = self._cycle_groups(tuple(cycle_groups), templates_path, flame_path, n_expression)
        self._expression_error = ExpressionVertexError(self.flame, flame_path)  # validation, synthetic truth
        self._batches_seen = 0
        self._warned_no_fan = False

        self.save_hyperparameters(ignore=["encoder", "generator", "masker", "perceptual_loss", "emotion_loss",
                                          "cycle_loss", "loss_weights"])
        # plain dicts keep checkpoints weights_only-loadable; a second call makes them part of the hyper-parameters
        # Lightning logs (TensorBoard: resolved_loss_weights/perceptual ...), so the log shows what really ran
        self.save_hyperparameters({"loss_weights": asdict(requested), "resolved_loss_weights": asdict(self.weights)})

    # ---------------------------------------------------------------------------------------------- building
    @staticmethod
    def _build_encoder(encoder: SmirkEncoder | None, n_shape: int, n_expression: int, *backbone_weights: str | None
                       ) -> SmirkEncoder:
        if encoder is None:
            keys = tuple(f"model.init_args.{part}_backbone_weights" for part in ("pose", "shape", "expression"))
            return SmirkEncoder(n_shape, n_expression, *backbone_weights, config_keys=keys)
        if any(w is not None for w in backbone_weights):
            raise ValueError("give the *_backbone_weights inside the injected encoder's init_args "
                             "(pose_pretrained_path, ...), not to SmirkModule")
        return encoder

    def _load_pretrained(self, pretrain_ckpt: str | None) -> None:
        if pretrain_ckpt is None:
            consequence = ("the pose/shape encoders are trained in the core phase too, from the landmark terms only "
                           "(no shape teacher; the paper freezes them after a pretraining phase)"
                           if self.train_pose_shape else "and train_pose_shape is false: the pose/shape encoders "
                           "stay FROZEN AT THEIR RANDOM INITIALIZATION")
            warn_missing_weights("model.init_args.pretrain_ckpt", "the SMIRK pretraining checkpoint (pose, shape and "
                                 "expression encoders)", f"the core phase starts the encoders from their "
                                 f"initialization; {consequence}. Run configs/smirk_pretrain.yaml first (or `make "
                                 f"fit`) for the paper's recipe", logger=__name__)
            return
        load_encoder_checkpoint(self.encoder, pretrain_ckpt)
        log.info("SMIRK core phase: encoders loaded from %s", pretrain_ckpt)

    def _feature_loss(self, term: str, injected: nn.Module | None, path: str | None, key: str, build, what: str,
                      lost: str) -> nn.Module | None:
        """The frozen network of a feature loss, or None when its weight is 0; a missing weights file switches the
        term off (weight 0) with a WARNING naming ``model.init_args.<key>``, what it is and what the run loses."""
        if injected is not None and path is not None:
            raise ValueError(f"give either {key} or the injected {term} loss module, not both")
        if injected is not None:
            return injected
        weight = getattr(self.weights, term)
        if weight == 0:
            return None
        if path is None:
            warn_missing_weights(f"model.init_args.{key}", what, f"the {term} loss (weight {weight:g}) is switched "
                                 f"off (resolved_loss_weights/{term} = 0): {lost}", logger=__name__)
            setattr(self.weights, term, 0.0)
            return None
        return build(path)

    def _cycle_groups(self, groups: tuple[str, ...], templates_path: str | None, flame_path: str,
                      n_expression: int) -> tuple[str, ...]:
        """The cycle path's groups; registers the (T, n_expression) ``templates`` buffer (T = 0 without them)."""
        templates = torch.zeros(0, n_expression)
        if "template" in groups and self.phase == "core":
            if templates_path is None:
                log.warning("SMIRK cycle path: model.init_args.templates_path is not set, the template-injection "
                            "augmentation group is dropped (build templates with smirk.cycle.build_templates)")
                groups = tuple(g for g in groups if g != "template")
            elif templates_path == "synthetic":
                if not str(flame_path).startswith("synthetic"):
                    raise ValueError(f"templates_path 'synthetic' acts expressions out in the synthetic FLAME's "
                                     f"components, which mean nothing for the FLAME at {flame_path!r}: set "
                                     "model.init_args.templates_path to your templates .npz, or null to drop the "
                                     "template group")
                templates = synthetic_templates(n_expression).expressions()
            else:
                templates = ExpressionTemplates.load(templates_path, "model.init_args.templates_path").expressions(
                    n_expression)
        self.register_buffer("templates", templates, persistent=False)
        return groups

    def train(self, mode: bool = True) -> SmirkModule:
        """Train mode everywhere except the frozen pose/shape encoders of the core phase (BatchNorm in eval)."""
        super().train(mode)
        return restore_frozen_modes(self)

    # ---------------------------------------------------------------------------------------------- optimizers
    def configure_optimizers(self):
        """Adam per trained network, each with a per-epoch cosine (:func:`facelab.training.epoch_cosine`)."""
        if self.phase == "pretrain":
            groups = [(self.encoder.parameters(), self.lr, (0.9, 0.999))]
        else:
            encoders = (self.encoder if self.train_pose_shape else self.encoder.expression_encoder).parameters()
            groups = [(encoders, self.encoder_lr_factor * self.lr, (0.9, 0.999)),
                      (self.generator.parameters(), self.lr, self.generator_betas)]
        optimizers = [torch.optim.Adam([p for p in params if p.requires_grad], lr=lr, betas=betas)
                      for params, lr, betas in groups]
        return optimizers, [epoch_cosine(opt, self.min_lr_factor) for opt in optimizers]

    def on_train_epoch_start(self) -> None:
        """Set the cosine's period to this epoch's batch count (the schedulers step once per batch)."""
        set_steps_per_epoch(self._as_list(self.lr_schedulers()), self.trainer.num_training_batches)

    @staticmethod
    def _as_list(x) -> list:
        if x is None:
            return []
        return list(x) if isinstance(x, (list, tuple)) else [x]

    def _optimize(self, opt, losses: dict[str, Tensor], clip: float = 0.0) -> StepOutcome:
        """One guarded step of ``opt`` on the weighted ``losses`` (:class:`facelab.training.GuardedStep`): skipped
        and warned when a term or gradient is non-finite on any rank; no step when no weighted term has a graph."""
        return self.guarded_step(opt, losses, self.weights, clip)

    # ---------------------------------------------------------------------------------------------- geometry
    def _render(self, enc: SmirkEncoding) -> tuple[MeshOutput, RenderOutput]:
        """FLAME mesh of an encoding and its gray, five-light render of the face region (reference "Renderer")."""
        mesh = self.flame(enc.flame_params())
        lights = shape_lights(device=mesh.verts.device, dtype=mesh.verts.dtype)
        return mesh, self.renderer(mesh.verts, enc.camera(), albedo=RENDER_ALBEDO, lights=lights)

    def _landmark_losses(self, enc: SmirkEncoding, mesh: MeshOutput, batch: SmirkBatch) -> dict[str, Tensor]:
        """Landmark and regularization terms (reference "Losses": MSE in [-1, 1] crop coordinates).

        With ``landmark_aligned`` on, the projected terms see the expression, jaw and eyelids detached (they train
        pose, camera and shape) and the aligned term sees pose, camera and shape detached (it trains the rest).
        """
        camera = enc.camera()
        if self.weights.landmark_aligned:
            nonrigid = replace(enc, shape=enc.shape.detach(), global_pose=enc.global_pose.detach(),
                               cam=enc.cam.detach())
            aligned = affine_aligned_landmark_loss(self.flame(nonrigid.flame_params()).landmarks_mp,
                                                   batch.landmarks_mp)
            rigid = replace(enc, expression=enc.expression.detach(), jaw_pose=enc.jaw_pose.detach(),
                            eyelids=enc.eyelids.detach())
            mesh = self.flame(rigid.flame_params())
        losses = {"landmark_mp": landmark_loss(camera.project(mesh.landmarks_mp), batch.landmarks_mp)}
        has_fan = batch.landmarks_fan is not None and (batch.fan_valid is None or bool(batch.fan_valid.any()))
        if has_fan and self.weights.landmark_fan:
            losses["landmark_fan"] = fan_contour_landmark_loss(camera.project(mesh.landmarks68), batch.landmarks_fan,
                                                               batch.fan_valid)
        elif self.weights.landmark_fan and not self._warned_no_fan:
            self._warned_no_fan = True
            rank_zero_warn(f"SMIRK: loss_weights.landmark_fan is {self.weights.landmark_fan:g} but the batches carry "
                           "no FAN contour landmarks (the cache was built without them, or the data has none): the "
                           "jaw-contour term is skipped. Build the cache with FAN landmarks (`facelab preprocess "
                           "--fan-checkpoint FAN.pt`) or set model.init_args.loss_weights.landmark_fan: 0")
        if self.weights.landmark_aligned:
            losses["landmark_aligned"] = aligned
        losses["expression_reg"] = expression_regularization(enc.expression)
        if self.weights.jaw_reg:
            losses["jaw_reg"] = jaw_regularization(enc.jaw_pose)
        return losses

    def _mask(self, batch: SmirkBatch, render_mask: Tensor, verts_px: Tensor, **kwargs) -> MaskedInput:
        landmarks_px = None if batch.hull_mask is not None else ndc_to_pixels(batch.landmarks_mp, self.image_size)
        return self.masker(batch.image, landmarks_px, render_mask, verts_px, self.flame.faces,
                           hull_mask=batch.hull_mask, **kwargs)

    # ---------------------------------------------------------------------------------------------- training
    def _prepare(self, batch) -> SmirkBatch:
        batch = as_smirk_batch(batch, self.flame.mp_indices)  # real crops: this FLAME's 105-point order
        if batch.image_size != (self.image_size, self.image_size):
            raise ValueError(f"SMIRK was built for {self.image_size}x{self.image_size} crops (model.init_args."
                             f"image_size) but the batch has {batch.image_size}: set both sizes alike")
        return batch

    def training_step(self, batch, batch_idx: int) -> None:
        batch = self._prepare(batch)
        self._batches_seen += 1
        skipped, stats = self.guarded_step.skipped, norm_statistics(self, clone=True)
        if self.phase == "pretrain":
            losses, panels = self._pretrain_step(batch)
        else:
            losses, panels = self._core_step(batch, train_generator=batch_idx % 2 == 0)
        if self.guarded_step.skipped > skipped:  # a NaN batch leaves the BatchNorm statistics as they were
            restore_norm_statistics(self, stats)
        step_schedulers(self._as_list(self.lr_schedulers()))  # per-iteration cosine: both networks, every batch
        self._log_train(losses, batch.batch_size)
        self.image_grid.log(self._image_writer(), "train/images", panels, self.global_step)

    def _pretrain_step(self, batch: SmirkBatch) -> tuple[dict[str, Tensor], list[Tensor]]:
        """Landmark pretraining of the three encoders (supplementary §1.6)."""
        enc = self.encoder(batch.image)
        mesh = self.flame(enc.flame_params())
        losses = self._landmark_losses(enc, mesh, batch)
        if self.synthetic_shape_teacher and self.weights.shape_teacher:
            if batch.ground_truth is None:
                raise ValueError("model.init_args.mica_path 'synthetic' takes the shape teacher's target from the "
                                 "synthetic world's ground truth, and this batch has none (real data): set mica_path "
                                 "to MICA's weights, or null to drop the term")
            target = batch.ground_truth.shape[:, :self.flame.n_shape].to(enc.shape)  # MICA's [:, :n_shape]
            losses["shape_teacher"] = F.mse_loss(enc.shape[:, :target.shape[1]], target)
        elif self.shape_teacher is not None and self.weights.shape_teacher:
            if batch.mica_image is None:
                rank_zero_warn("SMIRK: the MICA shape teacher is on but the batch carries no mica_image; the term "
                               "is skipped")
            else:
                losses["shape_teacher"] = self.shape_teacher(enc.shape, batch.mica_image)
        losses["total"] = self._optimize(self.optimizers(), losses).total
        return losses, self._pretrain_panels(batch, enc, mesh)

    def _core_step(self, batch: SmirkBatch, train_generator: bool) -> tuple[dict[str, Tensor], list[Tensor]]:
        """One core-phase batch: the reconstruction-path step, then the cycle-path step, of one network."""
        opt_encoder, opt_generator = self.optimizers()
        opt = opt_generator if train_generator else opt_encoder
        clip = self.generator_grad_clip if train_generator else 0.0
        self.toggle_optimizer(opt)  # requires_grad=False on the other network's parameters
        try:
            losses, recon = self._reconstruction_path(batch, train_generator)
            recon_total = self._optimize(opt, losses, clip).total
            cycle, cycle_panels = self._cycle_path(batch, recon, train_generator)
            cycle_total = self._optimize(opt, {"cycle": cycle}, clip).total
        finally:
            self.untoggle_optimizer(opt)
        losses["cycle"] = cycle
        losses["recon_path"], losses["cycle_path"] = recon_total, cycle_total
        losses["total"] = recon_total + cycle_total
        return losses, self._core_panels(batch, recon, cycle_panels)

    def _reconstruction_path(self, batch: SmirkBatch, train_generator: bool
                             ) -> tuple[dict[str, Tensor], _Reconstruction]:
        """Encode, render the face region, mask, translate; the loss terms of the network being trained.

        Generator batches: reconstruction + perceptual + structural identity (supplementary §1.3). Encoder batches:
        landmarks + regularizers + reconstruction + perceptual + emotion (the generator, frozen, passes gradients
        through to the render).
        """
        enc = self.encoder(batch.image)
        with torch.set_grad_enabled(not train_generator):  # on generator batches nothing upstream of it trains
            mesh, render = self._render(enc)
        verts_px = ndc_to_pixels(render.verts_ndc, self.image_size)
        masked = self._mask(batch, render.mask, verts_px.detach())
        generated = self.generator(render.image, masked.masked_image)
        losses = {} if train_generator else self._landmark_losses(enc, mesh, batch)
        losses["reconstruction"] = reconstruction_loss(generated, batch.image)
        if self.perceptual_loss is not None and self.weights.perceptual:
            losses["perceptual"] = self.perceptual_loss(generated, batch.image)
        if train_generator and self.weights.structural_identity:
            losses["structural_identity"] = structural_identity_loss(self.encoder.shape_encoder, generated,
                                                                     batch.image)
        if not train_generator and self.emotion_loss is not None and self.weights.emotion:
            losses["emotion"] = self.emotion_loss(generated, batch.image)  # generator frozen for it (reference)
        return losses, _Reconstruction(enc, mesh, render, masked, verts_px.detach(), generated)

    def _cycle_path(self, batch: SmirkBatch, recon: _Reconstruction, train_generator: bool
                    ) -> tuple[Tensor, list[Tensor]]:
        """Augmented expression cycle (reference "cycle path"; supplementary §1.2 transfer pixels).

        The detached estimates get new expressions (the four augmentation groups), the generator renders them with
        the reconstruction path's sampled pixels transferred onto the modified mesh, and the expression encoder
        re-estimates them. Encoder batches see the generator's output detached; generator batches also keep the
        shape (CycleLoss's shape term) through the frozen shape encoder.
        """
        base = recon.encoding.detach()
        aug = augment_expressions(base.expression, base.jaw_pose, base.eyelids, self.templates,
                                  groups=self.cycle_groups)
        target = SmirkEncoding(shape=base.shape, expression=aug.expression, eyelids=aug.eyelids,
                               jaw_pose=aug.jaw_pose, global_pose=base.global_pose, cam=base.cam)
        with torch.no_grad():
            _, render = self._render(target)
        masked = self._mask(batch, render.mask, recon.verts_px, points=recon.masked.points,
                            verts_px_dst=ndc_to_pixels(render.verts_ndc, self.image_size),
                            patch_drop_p=self.masker.cycle_patch_drop_p)
        with torch.set_grad_enabled(train_generator):
            generated = self.generator(render.image, masked.masked_image)
        image = generated if train_generator else generated.detach()
        with kept_norm_statistics(self.encoder, enabled=not self.cycle_updates_norm_stats):
            expression = self.encoder.expression_encoder(image)
            shape = self.encoder.shape_encoder(image) if train_generator else base.shape
        pred = SmirkEncoding(shape=shape, expression=expression.expression, eyelids=expression.eyelids,
                             jaw_pose=expression.jaw_pose, global_pose=base.global_pose, cam=base.cam)
        loss = self.cycle_loss(pred, target, include_shape=train_generator)
        return loss, [render.image, masked.masked_image, generated]

    def _log_train(self, losses: dict[str, Tensor], batch_size: int) -> None:
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value.detach(), on_step=True, on_epoch=False, batch_size=batch_size)
        names = ["encoder"] if self.phase == "pretrain" else ["encoder", "generator"]
        for name, opt in zip(names, self._as_list(self.optimizers())):
            self.log(f"train/lr_{name}", opt.param_groups[0]["lr"], on_step=True, on_epoch=False,
                     batch_size=batch_size)
        self.log("train/skipped_steps", float(self.guarded_step.skipped), on_step=True, on_epoch=False,
                 batch_size=batch_size)

    # ---------------------------------------------------------------------------------------------- images
    def _overlay(self, batch: SmirkBatch, enc: SmirkEncoding, mesh: MeshOutput) -> Tensor:
        """Mesh over the image, target landmarks red, predicted green (pixels)."""
        camera = enc.camera()
        target_px = ndc_to_pixels(batch.landmarks_mp, self.image_size)
        pred_px = ndc_to_pixels(camera.project(mesh.landmarks_mp), self.image_size)
        overlay = mesh_overlay(batch.image, mesh.verts.detach(), camera, self.renderer)
        return draw_landmarks(draw_landmarks(overlay, target_px, color=(1.0, 0.0, 0.0)), pred_px)

    def _pretrain_panels(self, batch: SmirkBatch, enc: SmirkEncoding, mesh: MeshOutput) -> list[Tensor]:
        if not self._want_images():
            return []
        with torch.no_grad():
            return [batch.image, self._overlay(batch, enc.detach(), mesh)]

    def _core_panels(self, batch: SmirkBatch, recon: _Reconstruction, cycle: list[Tensor]) -> list[Tensor]:
        if not self._want_images():
            return []
        with torch.no_grad():
            overlay = self._overlay(batch, recon.encoding.detach(), recon.mesh)
        return [batch.image, recon.masked.masked_image, recon.render.image, recon.generated, overlay, *cycle]

    def _image_writer(self):
        """TensorBoard's writer on rank 0, else None (:func:`facelab.training.tensorboard_writer`)."""
        return tensorboard_writer(self.logger, self.global_rank)

    def _want_images(self) -> bool:
        """Whether this training batch logs an image grid (its panels are only assembled then)."""
        return self._batches_seen > 0 and self.image_grid.due(self._batches_seen - 1, self._image_writer())

    # ---------------------------------------------------------------------------------------------- validation
    def validation_step(self, batch, batch_idx: int) -> None:
        """Landmark NME (NDC units) and, with ground truth, expression and face-region vertex errors."""
        batch = self._prepare(batch)
        enc = self.encoder(batch.image)
        mesh = self.flame(enc.flame_params())
        camera = enc.camera()
        metrics = {"nme_mp": landmark_nme(camera.project(mesh.landmarks_mp), batch.landmarks_mp).mean()}
        if batch.landmarks_fan is not None:
            metrics["nme_fan"] = landmark_nme(camera.project(mesh.landmarks68), batch.landmarks_fan).mean()
        if batch.ground_truth is not None:
            metrics.update(self._ground_truth_errors(enc, batch.ground_truth))
        for name, value in metrics.items():
            self.log(f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch.batch_size)
        writer = self._image_writer()
        if batch_idx == 0 and writer is not None:
            self.image_grid.log(writer, "val/images", [batch.image, self._overlay(batch, enc, mesh)], self.global_step)

    def _ground_truth_errors(self, enc: SmirkEncoding, gt: FlameGroundTruth) -> dict[str, Tensor]:
        """Expression errors against the synthetic ground truth (:mod:`smirk.metrics`, as ``facelab evaluate``).

        ``expression_mse``: MSE of the model's first ``n_expression`` coefficients. ``expression_vertex_error_mm``:
        mean per-vertex distance on FLAME's face region between the expression-only meshes (mean identity, zero
        head pose; predicted vs true expression, jaw and eyelids, the truth with all its components), in mm.
        """
        errors = self._expression_error(enc.expression, enc.jaw_pose, enc.eyelids, gt)
        return {"expression_mse": expression_mse(enc.expression, gt.expression).mean(),
                "expression_vertex_error_mm": errors.mean()}
