"""Loss terms shared by the methods: each a function plus a thin nn.Module (plain PyTorch; weights live in recipes).

* :mod:`~facelab.losses.geometry`: :func:`landmark_loss` (L1/L2/euclidean, visibility, per-landmark weights),
  mesh Laplacian smoothness (uniform / cotangent).
* :mod:`~facelab.losses.image`: masked :func:`photometric_loss`, :func:`total_variation`, :func:`symmetry_loss`
  under a horizontal flip, :func:`laplacian_pyramid_loss`.
* :mod:`~facelab.losses.perceptual`: :class:`PerceptualLoss` on VGG16/VGG19 features (:class:`VGGFeatures`).
* :mod:`~facelab.losses.lpips_loss`: :class:`LPIPS` through the ``lpips`` package, trunk from a local file.
* :mod:`~facelab.losses.identity`: :class:`IdentityLoss` (ArcFace IResNet or FaceNet; embedding and multi-level
  feature cosine distances).
* :mod:`~facelab.losses.contextual`: :class:`ContextualLoss` (Mechrez et al. 2018).
* :mod:`~facelab.losses.adversarial`: non-saturating / hinge / LSGAN losses, :func:`r1_penalty`, :class:`LazyR1`.

Pretrained networks take local weights only; ``allow_random=True`` (tests) runs them with random weights and says
so with a console WARNING (:func:`facelab.log.warn_missing_weights`); without a path and without it they raise, so
the recipe decides (e.g. switch the term off, loudly).
"""

from facelab.losses.adversarial import (
    AdversarialLoss,
    GanLossKind,
    LazyR1,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    r1_penalty,
)
from facelab.losses.base import FrozenNetwork, as_rgb, masked_mean, require_weights_or_random
from facelab.losses.contextual import ContextualLoss, contextual_loss, contextual_similarity
from facelab.losses.geometry import (
    LandmarkLoss,
    LaplacianOperator,
    MeshLaplacianSmoothness,
    apply_laplacian,
    landmark_loss,
    laplacian_smoothness,
    mesh_laplacian,
)
from facelab.losses.identity import ARCFACE_LEVELS, FACENET_LEVELS, IdentityLoss, arcface_alignment, cosine_distance
from facelab.losses.image import (
    LaplacianPyramidLoss,
    PhotometricLoss,
    SymmetryLoss,
    TotalVariation,
    laplacian_pyramid_loss,
    photometric_loss,
    symmetry_loss,
    total_variation,
)
from facelab.losses.iresnet import IResNet, iresnet
from facelab.losses.lpips_loss import LPIPS
from facelab.losses.perceptual import IMAGENET_MEAN, IMAGENET_STD, PerceptualLoss, VGGFeatures, vgg_layer_names

__all__ = [
    "ARCFACE_LEVELS",
    "FACENET_LEVELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LPIPS",
    "AdversarialLoss",
    "ContextualLoss",
    "FrozenNetwork",
    "GanLossKind",
    "IResNet",
    "IdentityLoss",
    "LandmarkLoss",
    "LaplacianOperator",
    "LaplacianPyramidLoss",
    "LazyR1",
    "MeshLaplacianSmoothness",
    "PerceptualLoss",
    "PhotometricLoss",
    "SymmetryLoss",
    "TotalVariation",
    "VGGFeatures",
    "apply_laplacian",
    "arcface_alignment",
    "as_rgb",
    "contextual_loss",
    "contextual_similarity",
    "cosine_distance",
    "discriminator_loss",
    "feature_matching_loss",
    "generator_loss",
    "iresnet",
    "landmark_loss",
    "laplacian_pyramid_loss",
    "laplacian_smoothness",
    "masked_mean",
    "mesh_laplacian",
    "photometric_loss",
    "r1_penalty",
    "require_weights_or_random",
    "symmetry_loss",
    "total_variation",
    "vgg_layer_names",
]
