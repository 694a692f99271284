"""Fréchet Inception Distance (Heusel et al. 2017) through ``torchmetrics``, on local Inception weights only.

``FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))`` of the Gaussians fitted to the features of the real
and the generated images (FaceDet3D's Tables 1-2 compare renders across expression edits this way).

The features come from either

* the FID Inception-v3 (the TensorFlow 2015-12-05 graph of the original FID code, as ``torchmetrics`` runs it
  through ``torch-fidelity``'s ``FeatureExtractorInceptionV3``) read from a *local* weights file
  (``weights-inception-2015-12-05-6726825d.pth`` of torch-fidelity's v0.2.0 release): nothing is downloaded, and a
  missing file is an error, never random weights (random Inception features make the number meaningless); or
* any injected feature extractor ``nn.Module`` mapping (B, 3, H, W) images in [0, 1] to (B, D) features (tests, or
  another backbone such as a face-recognition network).

Shapes: ``B`` images, ``D`` feature size.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from facelab.errors import MissingAssetError
from facelab.io.assets import require_file

__all__ = ["FID", "INCEPTION_WEIGHTS_SOURCE"]

#: Where users obtain the FID Inception weights (shown in the missing-weights error).
INCEPTION_WEIGHTS_SOURCE = ("torch-fidelity's FID Inception-v3 weights-inception-2015-12-05-6726825d.pth (release "
                            "v0.2.0 of the toshas/torch-fidelity repository on GitHub; the TensorFlow FID graph "
                            "converted to PyTorch)")


class _InjectedFeatures(nn.Module):
    """An injected extractor as torchmetrics expects it: eval mode, no gradients, checked (B, D) output."""

    def __init__(self, extractor: nn.Module, num_features: int | None) -> None:
        super().__init__()
        self.extractor = extractor.eval().requires_grad_(False)
        if num_features is not None:
            self.num_features = int(num_features)

    def train(self, mode: bool = True) -> _InjectedFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        features = self.extractor(images)
        if features.dim() != 2 or features.shape[0] != images.shape[0]:
            raise ValueError(f"the FID feature extractor must return (B, D) features, got {tuple(features.shape)} "
                             f"for {images.shape[0]} images")
        return features


class FID(nn.Module):
    """Fréchet distance between the features of a real and a generated image set (module docstring).

    Feed both sets with :meth:`update` (any number of batches), then :meth:`compute`; :meth:`reset` starts over.
    ``.to(device)`` moves the feature network and the accumulated statistics.

    Args:
        inception_weights: local FID Inception-v3 weights file (see :data:`INCEPTION_WEIGHTS_SOURCE`).
        feature_extractor: instead of Inception, an ``nn.Module`` (B, 3, H, W) in [0, 1] -> (B, D).
        feature: Inception feature layer (64, 192, 768 or 2048, the standard FID's pool features).
        feature_dim: D of ``feature_extractor`` (None: found by running it once on a 3x299x299 image).

    Raises:
        MissingAssetError: neither a weights file nor an extractor, or no such weights file.
        ModuleNotFoundError: Inception weights given but ``torch-fidelity`` (torchmetrics' Inception) missing.
    """

    def __init__(self, inception_weights: str | None = None, *, feature_extractor: nn.Module | None = None,
                 feature: int = 2048, feature_dim: int | None = None) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance  # torchmetrics imports in ~1 s

        super().__init__()
        if feature_extractor is not None:
            if inception_weights is not None:
                raise ValueError("FID takes inception_weights or a feature_extractor, not both")
            self.metric = FrechetInceptionDistance(feature=_InjectedFeatures(feature_extractor, feature_dim),
                                                   normalize=True)
            return
        if inception_weights is None:
            raise MissingAssetError(f"FID needs Inception-v3 weights and none were given: set `inception_weights` to "
                                    f"a local copy of {INCEPTION_WEIGHTS_SOURCE}, or inject a `feature_extractor`. "
                                    "Nothing is downloaded, and random Inception weights would make FID meaningless.")
        path = require_file(inception_weights, what="FID Inception-v3 weights", config_key="inception_weights")
        if importlib.util.find_spec("torch_fidelity") is None:
            raise ModuleNotFoundError("FID with Inception-v3 runs torchmetrics' Inception, which needs torch-fidelity:"
                                      " `pip install torch-fidelity` (the `torchmetrics[image]` extra)")
        self.metric = FrechetInceptionDistance(feature=feature, normalize=True,
                                               feature_extractor_weights_path=str(path))

    @staticmethod
    def _check(images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"FID expects float (B, 3, H, W) images in [0, 1], got {images.dtype} "
                             f"{tuple(images.shape)}")

    def update(self, images: Tensor, real: bool) -> None:
        """Add (B, 3, H, W) images in [0, 1] to the real (``real=True``) or the generated set."""
        self._check(images)
        self.metric.update(images, real=real)

    def compute(self) -> Tensor:
        """() the FID of everything added since the last :meth:`reset` (both sets need >= 2 images)."""
        return self.metric.compute()

    def reset(self) -> None:
        self.metric.reset()

    def forward(self, real: Tensor, generated: Tensor) -> Tensor:
        """() FID of two complete sets: ``reset``, add both, compute."""
        self.reset()
        self.update(real, real=True)
        self.update(generated, real=False)
        return self.compute()
