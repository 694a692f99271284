"""SMIRK's loss terms, each a small function or module (weights live in the recipe, not here).

Recipe: ``shared/docs/smirk_reference.md`` ("Losses and weights", "Augmented expression cycle path"); supplementary
§1.3 (structural identity loss), §1.6 (weights, landmarks: mediapipe interior + FAN contour, MICA shape teacher),
§3.4 (emotion loss). Shapes: ``B`` batch, ``L`` landmarks, ``E`` expression components, ``H, W`` image size.

The generic terms live in :mod:`facelab.losses` (landmark, photometric, VGG perceptual, the frozen-network base);
this module keeps SMIRK's conventions around them and its own terms (cycle, structural identity, emotion, MICA
teacher). Frozen feature networks (:class:`VGGPerceptualLoss`, :class:`EmotionFeatureLoss`,
:class:`MicaShapeTeacher`) load local weights only; they stay in eval mode with ``requires_grad=False`` parameters
and pass gradients to their *inputs* (:class:`facelab.losses.FrozenNetwork`).
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterator

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.func import functional_call

from facelab.errors import AssetFormatError
from facelab.io.assets import require_file
from facelab.io.weights import load_state_dict_strict, read_state_dict
from facelab.log import get_logger, warn_missing_weights
from facelab.losses import (
    FrozenNetwork,
    PerceptualLoss,
    photometric_loss,
    require_weights_or_random,
)
from facelab.losses import landmark_loss as _landmark_loss
from smirk.networks import SmirkEncoding

__all__ = [
    "CycleLoss",
    "EmotionFeatureLoss",
    "MicaShapeTeacher",
    "VGGPerceptualLoss",
    "affine_aligned_landmark_loss",
    "cycle_loss",
    "expression_regularization",
    "fan_contour_landmark_loss",
    "jaw_regularization",
    "landmark_loss",
    "reconstruction_loss",
    "structural_identity_loss",
]

log = get_logger(__name__)

#: SMIRK's perceptual term (reference "Losses"): the core VGG perceptual loss with its defaults, L1 between VGG16
#: relu1_2, relu2_2, relu3_3 and relu4_3 features of ImageNet-normalised [0, 1] images (the public SMIRK code
#: mis-scales them), the target's features without gradient.
VGGPerceptualLoss = PerceptualLoss


# --------------------------------------------------------------------------------------------------------------
# Geometry and regularization terms
# --------------------------------------------------------------------------------------------------------------


def landmark_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean squared landmark error in normalized [-1, 1] crop coordinates (reference "Losses": landmarks).

    ``sum_{valid b, l, c} (pred - target)^2 / (#valid * 2)``; both in the same frame (e.g. NDC of
    :mod:`facelab.render.camera`, or pixels mapped with :func:`facelab.render.pixels_to_ndc`).

    Args:
        pred: (B, L, 2+) predicted landmarks (only x, y are used).
        target: (B, L, 2+) detected landmarks.
        valid: (B,) or (B, L) bool, which samples/landmarks have a detection; None: all.

    Returns:
        Scalar; 0 (still attached to ``pred``) when nothing is valid.
    """
    return _landmark_loss(pred[..., :2], target[..., :2], visibility=valid, norm="l2")


def fan_contour_landmark_loss(pred68: Tensor, target68: Tensor, valid: Tensor | None = None) -> Tensor:
    """:func:`landmark_loss` on the 17 jaw-contour points (iBUG 0-16) of the FAN 68 landmarks.

    SMIRK uses mediapipe for the face interior and FAN only for the boundary (supplementary §1.6), and skips
    images without FAN landmarks.

    Args:
        pred68: (B, 68, 2+). target68: (B, 68, 2+). valid: (B,) bool, images with FAN landmarks; None: all.
    """
    return landmark_loss(pred68[:, :17], target68[:, :17], valid)


def affine_aligned_landmark_loss(points: Tensor, target: Tensor, ridge: float = 1e-8) -> Tensor:
    """:func:`landmark_loss` after the least-squares affine camera that best maps ``points`` onto ``target``.

    Per image, the 2x3 affine camera ``y = (X - mean X) P + mean y`` (orthographic projection of any rotation, any
    scale, any image translation, and two shears) is solved in closed form,
    ``P = (Xc^T Xc + ridge I)^-1 Xc^T Yc``, and the residual of that fit is the loss. What is left is the non-rigid
    part of the misfit: a parameter that only moves the landmarks rigidly gets no gradient from it, so an
    expression head trained on it cannot absorb the errors of the pose/camera estimate (the fix of issue 9; the
    rigid part is learnt by the projected :func:`landmark_loss` of the pose encoder). Differentiable in
    ``points`` (through the solve).

    Args:
        points: (B, L, 3) model-frame landmarks (any rigid pose). target: (B, L, 2+) landmarks in the crop frame.
        ridge: Tikhonov term of the 3x3 normal equations (relative to the mean squared point spread).

    Returns:
        Scalar: ``sum (fitted - target)^2 / (B * L * 2)``.
    """
    if points.dim() != 3 or points.shape[-1] != 3 or target.shape[:2] != points.shape[:2]:
        raise ValueError(f"affine_aligned_landmark_loss expects (B, L, 3) points and (B, L, 2+) targets, got "
                         f"{tuple(points.shape)} and {tuple(target.shape)}")
    y = target[..., :2].to(points)
    xc = points - points.mean(dim=1, keepdim=True)
    yc = y - y.mean(dim=1, keepdim=True)
    normal = xc.transpose(1, 2) @ xc
    scale = normal.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)[:, None, None]
    eye = torch.eye(3, dtype=points.dtype, device=points.device)
    camera = torch.linalg.solve(normal + ridge * scale * eye, xc.transpose(1, 2) @ yc)  # (B, 3, 2)
    return (xc @ camera - yc).pow(2).mean()


def expression_regularization(expression: Tensor, reference: Tensor | None = None) -> Tensor:
    """``mean((exp - ref)^2)``, ``ref = 0`` by default (reference "Losses": expression regularization).

    Args:
        expression: (B, E). reference: (B, E) or None.
    """
    return (expression if reference is None else expression - reference).pow(2).mean()


def jaw_regularization(jaw_pose: Tensor, reference: Tensor | None = None) -> Tensor:
    """``mean((jaw - ref)^2)``, ``ref = 0`` by default (reference "Losses": jaw regularization). jaw: (B, 3)."""
    return (jaw_pose if reference is None else jaw_pose - reference).pow(2).mean()


def reconstruction_loss(generated: Tensor, image: Tensor) -> Tensor:
    """Photometric L1, ``mean |generated - image|`` over all pixels and channels. (B, 3, H, W) each."""
    return photometric_loss(generated, image, norm="l1")


def cycle_loss(pred: SmirkEncoding, target: SmirkEncoding, expression_weight: float = 1.0, jaw_weight: float = 10.0,
               eyelid_weight: float = 10.0, shape_weight: float = 0.0) -> Tensor:
    """Cycle consistency of the re-estimated parameters (reference "cycle path"):
    ``w_e MSE(exp) + w_j MSE(jaw) + w_l MSE(eyelids) + w_s MSE(shape)``.

    Args:
        pred: the encoder's estimates on the generated images.
        target: the augmented parameters the generator rendered (detached inside).
        expression_weight, jaw_weight, eyelid_weight: 1, 10, 10 in SMIRK.
        shape_weight: 1 on generator steps (the shape must survive translation), 0 otherwise.
    """
    loss = expression_weight * F.mse_loss(pred.expression, target.expression.detach())
    loss = loss + jaw_weight * F.mse_loss(pred.jaw_pose, target.jaw_pose.detach())
    loss = loss + eyelid_weight * F.mse_loss(pred.eyelids, target.eyelids.detach())
    if shape_weight:
        loss = loss + shape_weight * F.mse_loss(pred.shape, target.shape.detach())
    return loss


class CycleLoss(nn.Module):
    """Module form of :func:`cycle_loss` holding its weights.

    Args:
        expression_weight: 1.0. jaw_weight: 10.0. eyelid_weight: 10.0.
        shape_weight: weight of the shape term when ``include_shape`` (generator steps): 1.0.
    """

    def __init__(self, expression_weight: float = 1.0, jaw_weight: float = 10.0, eyelid_weight: float = 10.0,
                 shape_weight: float = 1.0) -> None:
        super().__init__()
        self.expression_weight, self.jaw_weight = expression_weight, jaw_weight
        self.eyelid_weight, self.shape_weight = eyelid_weight, shape_weight

    def forward(self, pred: SmirkEncoding, target: SmirkEncoding, include_shape: bool = False) -> Tensor:
        return cycle_loss(pred, target, self.expression_weight, self.jaw_weight, self.eyelid_weight,
                          self.shape_weight if include_shape else 0.0)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def structural_identity_loss(shape_encoder: nn.Module, generated: Tensor, image: Tensor) -> Tensor:
    """L2 between a frozen shape encoder's outputs on the generated and the input image (supplementary §1.3).

    ``mean((E_beta(generated) - E_beta(image))^2)``. The encoder runs in eval mode with detached parameters, so
    the gradient reaches only ``generated`` (the loss trains the translator, never the encoder), whatever the
    encoder's ``requires_grad`` flags.

    Args:
        shape_encoder: maps (B, 3, H, W) -> (B, n_shape) (e.g. :class:`smirk.networks.ShapeEncoder`).
        generated: (B, 3, H, W) translator output.
        image: (B, 3, H, W) input image.
    """
    params = {name: p.detach() for name, p in shape_encoder.named_parameters()}
    with _eval_mode(shape_encoder):
        pred = functional_call(shape_encoder, params, (generated,))
        with torch.no_grad():
            target = shape_encoder(image)
    return F.mse_loss(pred, target)


# --------------------------------------------------------------------------------------------------------------
# Frozen feature networks
# --------------------------------------------------------------------------------------------------------------


class EmotionFeatureLoss(FrozenNetwork):
    """L2 between emotion-recognition features of the generated and the input image (supplementary §3.4; EMOCA).

    The feature network is a ResNet-50 (torchvision layout, no ``fc``): the 2048-d globally pooled features, as
    in EMOCA's emotion-recognition backbone. Loss: ``mean_b mean_k (f(gen) - f(img))^2``. The recipe freezes the
    generator for this term (reference: "generator frozen for it").

    Args:
        weights_path: a state dict in torchvision ResNet-50 layout, or a checkpoint whose ``state_dict`` holds
            one under ``key_prefix`` (EMOCA: ``"backbone."``); keys outside the prefix and ``fc.*`` are ignored.
        allow_random: permit ``weights_path=None`` (random weights; tests only).
        key_prefix: prefix of the ResNet keys in the file ("" for a plain torchvision state dict).
        input_mean, input_std: per-channel normalization applied to [0, 1] inputs; None leaves them in [0, 1]
            (set ImageNet statistics for an ImageNet-style torchvision model).
        input_size: resize inputs to this square size first (None: as given).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, weights_path: str | None = None, allow_random: bool = False, key_prefix: str = "",
                 input_mean: tuple[float, float, float] | None = None,
                 input_std: tuple[float, float, float] | None = None, input_size: int | None = None) -> None:
        super().__init__()
        require_weights_or_random(weights_path, allow_random, "the emotion-recognition ResNet-50 (EmotionFeatureLoss)",
                                  "weights_path", logger=__name__)
        state = None
        if weights_path is not None:  # read first: a missing file fails before any network is built
            state = read_state_dict(weights_path, what="emotion-recognition ResNet-50 weights",
                                    config_key="weights_path")
        net = torchvision.models.resnet50(weights=None)
        net.fc = nn.Identity()
        if state is not None:
            sub = {k[len(key_prefix):]: v for k, v in state.items() if k.startswith(key_prefix)}
            sub = {k: v for k, v in sub.items() if not k.startswith("fc.")}
            load_state_dict_strict(net, sub, str(weights_path))
        self.net = net
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(input_mean or (0.0, 0.0, 0.0)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(input_std or (1.0, 1.0, 1.0)).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def features(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 2048)."""
        if self.input_size is not None and image.shape[-2:] != (self.input_size, self.input_size):
            image = F.interpolate(image, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        return self.net((image - self.mean) / self.std)

    def forward(self, generated: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            target_feats = self.features(target)
        return (self.features(generated) - target_feats).pow(2).mean()


class MicaShapeTeacher(FrozenNetwork):
    """Optional MICA shape teacher for pretraining: ``MSE(shape, MICA(image))`` (supplementary §1.6).

    MICA (Zielonka et al. 2022) is not reimplemented here. Give either an export mapping the MICA-preprocessed
    image batch to (B, >= n_shape) FLAME shape coefficients (``torch.export`` ``.pt2`` or a TorchScript archive),
    or a state dict plus the ``model`` it belongs to. With ``weights_path=None`` the teacher is off
    (:attr:`enabled` False, a console WARNING); calling it then raises with the explanation.

    Args:
        weights_path: ``.pt2`` (torch.export), TorchScript archive or state dict, local; None: off.
        model: the architecture for a state-dict file (injected via ``class_path``); unused for TorchScript.
        n_shape: shape coefficients compared (300).
    """

    def __init__(self, weights_path: str | None = None, model: nn.Module | None = None, n_shape: int = 300) -> None:
        super().__init__()
        self.n_shape = n_shape
        self.teacher: nn.Module | None = None
        if weights_path is None:
            warn_missing_weights("weights_path", "the MICA shape teacher",
                                 "the shape-teacher loss is skipped (the shape encoder learns from landmarks only)",
                                 logger=__name__)
        else:
            file = require_file(weights_path, what="MICA shape teacher (TorchScript or state dict)",
                                config_key="weights_path", family="weights")
            if file.suffix == ".pt2":
                self.teacher = torch.export.load(str(file)).module()
            elif _is_torchscript(file):
                self.teacher = torch.jit.load(str(file), map_location="cpu")
            elif model is None:
                raise AssetFormatError(f"{file} is a state dict, not TorchScript: also give `model`, the MICA "
                                       "network it belongs to, or export MICA with torch.jit.script/trace")
            else:
                state = read_state_dict(file, what="MICA weights", config_key="weights_path")
                load_state_dict_strict(model, state, file)
                self.teacher = model
            self.freeze()

    @property
    def enabled(self) -> bool:
        return self.teacher is not None

    def forward(self, shape: Tensor, image: Tensor) -> Tensor:
        """``mean((shape - MICA(image)[:, :n_shape])^2)``.

        Args:
            shape: (B, n_shape) the shape encoder's estimates.
            image: the MICA input the teacher expects (e.g. (B, 3, 112, 112) ArcFace crops).
        """
        if self.teacher is None:
            raise RuntimeError("MICA shape teacher is off: set weights_path to a TorchScript export of MICA (or a "
                               "state dict with `model`), or give the shape-teacher term weight 0")
        with torch.no_grad():
            target = self.teacher(image)[:, : self.n_shape]
        return F.mse_loss(shape, target.to(shape))


def _is_torchscript(path: os.PathLike) -> bool:
    """TorchScript archives are zip files holding ``<name>/constants.pkl`` and ``<name>/code/``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())
