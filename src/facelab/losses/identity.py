"""Face-identity loss: cosine distance of face-recognition embeddings and, optionally, of features at several depths.

``L_id = w_e (1 - cos(R(x), R(y))) + sum_l w_l (1 - cos(R_l(x), R_l(y)))`` with ``R`` a frozen recognition network
and ``R_l`` its intermediate feature maps, flattened (DNPM Eq. 14: ArcFace features at 5 semantic levels;
DualStream's fusion identity loss and FaceDet3D's identity conditioning use the embedding alone).

Backbones (local weights only; nothing is downloaded):

* ``"arcface"``: an :mod:`~facelab.losses.iresnet` (Deng et al. 2019) from insightface ``arcface_torch``'s
  ``backbone.pth``. Input: 112 x 112 RGB, aligned by a similarity transform of 5 landmarks onto ArcFace's template
  (insightface ``face_align.arcface_dst``; what ``norm_crop`` does, here differentiable) or, without landmarks,
  the (optionally cropped) image resized to 112; normalised ``(x - 0.5) / 0.5``.
* ``"facenet"``: facenet-pytorch's ``InceptionResnetV1`` (Schroff et al. 2015; Szegedy et al. 2017) from its
  ``20180402-114759-vggface2.pt`` (or casia-webface) state dict; the classifier ``logits.*`` is dropped. Input:
  an MTCNN-style face crop (the detected box, optionally with a margin) resized to 160 x 160, normalised with
  facenet-pytorch's ``fixed_image_standardization`` (``(255 x - 127.5) / 128``). It is not trained on
  landmark-aligned crops, so ``landmarks`` are refused.

Images are (B, 1|3, H, W) in [0, 1] (one channel is repeated to RGB); landmarks are (B, 5, 2) pixel coordinates
(x right, y down; left eye, right eye, nose tip, left and right mouth corner as seen in the image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.io.weights import load_state_dict_strict, read_state_dict
from facelab.losses.base import FrozenNetwork, as_rgb, require_weights_or_random
from facelab.losses.iresnet import iresnet

__all__ = ["ARCFACE_LEVELS", "FACENET_LEVELS", "IdentityLoss", "arcface_alignment", "cosine_distance"]

IdentityBackbone = Literal["arcface", "facenet"]

#: Five semantic levels of the IResNet (stem and the four stages), as in DNPM Eq. 14.
ARCFACE_LEVELS = ("prelu", "layer1", "layer2", "layer3", "layer4")
#: The InceptionResnetV1 stages from the stem to the last block.
FACENET_LEVELS = ("conv2d_4b", "repeat_1", "repeat_2", "repeat_3", "block8")
INPUT_SIZE = {"arcface": 112, "facenet": 160}


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos(a_b, b_b)`` per sample of (B, ...) tensors (flattened): (B,) in [0, 2]."""
    return 1.0 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8)


def _similarity_lstsq(src: Tensor, dst: Tensor) -> Tensor:
    """The least-squares similarity (rotation, uniform scale, translation; no reflection) mapping ``src`` onto
    ``dst`` (Umeyama 1991), solved in complex numbers: ``z_dst ~ a z_src + t``.

    Args: src: (B, N, 2). dst: (N, 2). Returns: (B, 2, 3) affine matrices (pixel coordinates).
    """
    zs = torch.complex(src[..., 0], src[..., 1])  # (B, N)
    zd = torch.complex(dst[..., 0], dst[..., 1]).to(zs)[None]  # (1, N)
    ms, md = zs.mean(dim=1, keepdim=True), zd.mean(dim=1, keepdim=True)
    a = ((zs - ms).conj() * (zd - md)).sum(1) / (zs - ms).abs().square().sum(1)  # (B,)
    t = md[:, 0] - a * ms[:, 0]
    row0 = torch.stack([a.real, -a.imag, t.real], dim=1)
    row1 = torch.stack([a.imag, a.real, t.imag], dim=1)
    return torch.stack([row0, row1], dim=1)


def arcface_alignment(image: Tensor, landmarks: Tensor, size: int = 112) -> Tensor:
    """ArcFace's 5-point alignment, differentiable in the image: warp (B, C, H, W) so ``landmarks`` (B, 5, 2) land
    on insightface's ``arcface_dst`` template (scaled by ``size / 112``), like ``face_align.norm_crop``
    (cv2 ``warpAffine``, zero border). Returns (B, C, size, size)."""
    from insightface.utils.face_align import arcface_dst  # the template constants; imported only when aligning

    if landmarks.dim() != 3 or landmarks.shape[1:] != (5, 2) or landmarks.shape[0] != image.shape[0]:
        raise ValueError(f"landmarks must be (B={image.shape[0]}, 5, 2) pixel coordinates, got "
                         f"{tuple(landmarks.shape)}")
    template = torch.as_tensor(arcface_dst, dtype=torch.float64) * (size / 112.0)
    matrix = _similarity_lstsq(landmarks.detach().double(), template).to(image.dtype)
    return kornia.geometry.transform.warp_affine(image, matrix, dsize=(size, size), mode="bilinear",
                                                 padding_mode="zeros", align_corners=True)


def _build_backbone(backbone: IdentityBackbone, weights_path: str | None, arcface_depth: int) -> nn.Module:
    if backbone == "arcface":
        net: nn.Module = iresnet(arcface_depth)
        if weights_path is not None:
            state = read_state_dict(weights_path, what=f"ArcFace IResNet-{arcface_depth} weights (arcface_torch "
                                    "backbone.pth)", config_key="weights_path")
            load_state_dict_strict(net, state, weights_path, hint=f"arcface_depth={arcface_depth}")
        return net
    from facenet_pytorch import InceptionResnetV1

    state = None
    if weights_path is not None:  # read first: a missing file fails before any network is built
        state = read_state_dict(weights_path, what="FaceNet InceptionResnetV1 weights (facenet-pytorch state dict)",
                                config_key="weights_path")
    net = InceptionResnetV1(pretrained=None, classify=False)
    if state is not None:
        load_state_dict_strict(net, {k: v for k, v in state.items() if not k.startswith("logits.")}, weights_path)
    return net


class IdentityLoss(FrozenNetwork):
    """``w_e (1 - cos) of the embeddings + sum_l w_l (1 - cos) of the features at feature_layers``, batch mean.

    Args:
        backbone: ``"arcface"`` (IResNet) or ``"facenet"`` (InceptionResnetV1).
        weights_path: the local state dict (module docstring).
        allow_random: permit ``weights_path=None`` (random weights, with a console WARNING; tests only).
            Without either a ``ValueError`` leaves the decision (e.g. switch the loss off) to the caller.
        arcface_depth: IResNet depth (50 or 100 for the published ArcFace models; 18 / 34 exist too).
        feature_layers: names of submodules whose outputs are compared too (e.g. :data:`ARCFACE_LEVELS`,
            :data:`FACENET_LEVELS`); empty: the embedding alone.
        feature_weights: one weight per feature layer (default 1 each).
        embedding_weight: weight of the embedding term (0: features only).
        crop: without landmarks, the box ``(x0, y0, x1, y1)`` in fractions of the input kept before resizing
            (e.g. the face box inside a larger crop); None: the whole image.
        detach_target: the target's embedding and features carry no gradient.
    """

    def __init__(self, backbone: IdentityBackbone = "arcface", weights_path: str | None = None,
                 allow_random: bool = False, arcface_depth: int = 50, feature_layers: Sequence[str] = (),
                 feature_weights: Sequence[float] | None = None, embedding_weight: float = 1.0,
                 crop: tuple[float, float, float, float] | None = None, detach_target: bool = True) -> None:
        super().__init__()
        if backbone not in INPUT_SIZE:
            raise ValueError(f"backbone must be 'arcface' or 'facenet', got {backbone!r}")
        name = f"ArcFace IResNet-{arcface_depth}" if backbone == "arcface" else "FaceNet InceptionResnetV1"
        require_weights_or_random(weights_path, allow_random, f"{name} (identity loss)", "weights_path")
        self.net = _build_backbone(backbone, weights_path, arcface_depth)
        modules = dict(self.net.named_modules())
        unknown = [layer for layer in feature_layers if layer not in modules or not layer]
        if unknown:
            raise ValueError(f"unknown {name} layers {unknown}; e.g. "
                             f"{ARCFACE_LEVELS if backbone == 'arcface' else FACENET_LEVELS}")
        self.feature_layers = tuple(feature_layers)
        self.feature_weights = list(feature_weights) if feature_weights is not None else [1.0] * len(feature_layers)
        if len(self.feature_weights) != len(self.feature_layers):
            raise ValueError(f"{len(self.feature_weights)} feature weights for {len(self.feature_layers)} layers")
        self.backbone, self.input_size = backbone, INPUT_SIZE[backbone]
        self.embedding_weight, self.crop, self.detach_target = embedding_weight, crop, detach_target
        self.freeze()

    def prepare(self, image: Tensor, landmarks: Tensor | None = None) -> Tensor:
        """(B, 1|3, H, W) in [0, 1] -> the network input (B, 3, S, S), aligned / resized and normalised."""
        image = as_rgb(image)
        if landmarks is not None:
            if self.backbone != "arcface":
                raise ValueError("FaceNet expects MTCNN-style box crops, not landmark-aligned ones: pass the face "
                                 "crop without landmarks (or use the arcface backbone)")
            image = arcface_alignment(image, landmarks.to(image), self.input_size)
        else:
            if self.crop is not None:
                h, w = image.shape[-2:]
                x0, y0, x1, y1 = self.crop
                image = image[..., round(y0 * h): round(y1 * h), round(x0 * w): round(x1 * w)]
            if image.shape[-2:] != (self.input_size, self.input_size):
                image = F.interpolate(image, size=(self.input_size,) * 2, mode="bilinear", align_corners=False,
                                      antialias=True)
        if self.backbone == "arcface":
            return (image - 0.5) / 0.5
        return (image * 255.0 - 127.5) / 128.0  # facenet-pytorch's fixed_image_standardization

    def embed(self, image: Tensor, landmarks: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """The embedding (B, 512) and the ``feature_layers`` outputs of (B, 1|3, H, W) images in [0, 1]."""
        captured: dict[str, Tensor] = {}
        modules = dict(self.net.named_modules())
        handles = [modules[layer].register_forward_hook(
            lambda module, args, output, layer=layer: captured.__setitem__(layer, output))
            for layer in self.feature_layers]  # registered per call: copies of this module hold no stale hooks
        try:
            embedding = self.net(self.prepare(image, landmarks))
        finally:
            for handle in handles:
                handle.remove()
        return embedding, [captured[layer] for layer in self.feature_layers]

    def forward(self, pred: Tensor, target: Tensor, landmarks: Tensor | None = None,
                target_landmarks: Tensor | None = None) -> Tensor:
        """Args: pred, target: (B, 1|3, H, W) in [0, 1]. landmarks: (B, 5, 2) of ``pred`` (and of ``target``
        unless ``target_landmarks`` is given), arcface only. Returns a scalar."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_target):
            target_emb, target_feats = self.embed(target, landmarks if target_landmarks is None else target_landmarks)
        pred_emb, pred_feats = self.embed(pred, landmarks)
        loss = self.embedding_weight * cosine_distance(pred_emb, target_emb).mean()
        for w, p, t in zip(self.feature_weights, pred_feats, target_feats):
            loss = loss + w * cosine_distance(p, t).mean()
        return loss
