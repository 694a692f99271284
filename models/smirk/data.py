"""The batch SMIRK trains on (:class:`SmirkBatch`) and the adapter from the synthetic face world.

The training recipe (:class:`smirk.module.SmirkModule`) reads only :class:`SmirkBatch`. Any dataset works once it
yields a ``SmirkBatch`` or something :func:`as_smirk_batch` converts: today the synthetic face world's
:class:`facelab.data.synthetic.SyntheticFaceBatch`; real-image datasets (``facelab.data.datasets``) either return
``SmirkBatch`` directly or get one more branch in :func:`as_smirk_batch`.

Frames (see :mod:`facelab.render.camera`): landmarks are **NDC** ``(x, y)`` in [-1, 1] of the crop with **+y up**,
the frame :meth:`facelab.render.WeakPerspectiveCamera.project` produces, so the landmark loss compares like with
like. (The public SMIRK code normalizes pixel landmarks to [-1, 1] with +y *down*; such coordinates convert by
negating y.) Detections in pixels convert with :func:`facelab.render.pixels_to_ndc`.

Shapes: ``B`` batch, ``H, W`` image size.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from facelab.data.synthetic import SyntheticFaceBatch

__all__ = ["FlameGroundTruth", "SmirkBatch", "as_smirk_batch"]


@dataclass
class FlameGroundTruth:
    """Ground-truth FLAME parameters of a batch (synthetic data only), for validation metrics.

    Attributes:
        shape: (B, K_shape). expression: (B, K_exp) (may hold more components than the trained model).
        jaw_pose: (B, 3). eyelids: (B, 2). global_pose: (B, 3).
    """

    shape: Tensor
    expression: Tensor
    jaw_pose: Tensor
    eyelids: Tensor
    global_pose: Tensor


@dataclass
class SmirkBatch:
    """One training/validation batch for SMIRK.

    Attributes:
        image: (B, 3, H, W) RGB face crops in [0, 1].
        landmarks_mp: (B, 105, 2) mediapipe landmarks (SMIRK's 105-point subset), NDC +y up.
        landmarks_fan: (B, 68, 2) FAN/iBUG landmarks, NDC +y up, or None (the contour loss is then skipped).
        fan_valid: (B,) bool, which images have FAN landmarks; None: all (when ``landmarks_fan`` is given).
        hull_mask: (B, 1, H, W) float, convex hull of the face landmarks (the generator's hole before dilation);
            None: the hull of ``landmarks_mp`` is rasterized on the fly.
        mica_image: the MICA teacher's input (e.g. (B, 3, 112, 112) ArcFace crops), or None.
        ground_truth: FLAME parameters the image was rendered from (synthetic data), or None.
    """

    image: Tensor
    landmarks_mp: Tensor
    landmarks_fan: Tensor | None = None
    fan_valid: Tensor | None = None
    hull_mask: Tensor | None = None
    mica_image: Tensor | None = None
    ground_truth: FlameGroundTruth | None = None

    def __post_init__(self) -> None:
        if self.image.dim() != 4 or self.image.shape[1] != 3:
            raise ValueError(f"SmirkBatch.image must be (B, 3, H, W), got {tuple(self.image.shape)}")
        b = self.image.shape[0]
        if self.landmarks_mp.shape != (b, 105, 2):
            raise ValueError(f"SmirkBatch.landmarks_mp must be ({b}, 105, 2), got {tuple(self.landmarks_mp.shape)}")
        if self.landmarks_fan is not None and self.landmarks_fan.shape != (b, 68, 2):
            raise ValueError(f"SmirkBatch.landmarks_fan must be ({b}, 68, 2), got {tuple(self.landmarks_fan.shape)}")

    @property
    def batch_size(self) -> int:
        return self.image.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image.shape[-2], self.image.shape[-1]

    def to(self, *args, **kwargs) -> SmirkBatch:
        """A copy with every tensor moved/cast by ``Tensor.to`` (Lightning calls it to move batches)."""
        def move(value):
            if isinstance(value, Tensor):
                return value.to(*args, **kwargs)
            if isinstance(value, FlameGroundTruth):
                return FlameGroundTruth(**{f.name: getattr(value, f.name).to(*args, **kwargs)
                                           for f in fields(value)})
            return value

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})


def _from_synthetic(batch: SyntheticFaceBatch) -> SmirkBatch:
    if batch.image.dim() != 4:
        raise ValueError("SMIRK trains on single images: use the synthetic data with sequence_length=0")
    if batch.landmarks_mp_ndc is None:
        raise ValueError("the synthetic batch has no mediapipe landmarks: SMIRK needs a FLAME model with the "
                         "mediapipe embedding (data.init_args.family: flame)")
    if batch.camera_model != "weak":
        raise ValueError("SMIRK's encoders predict a weak-perspective camera: use data.init_args.camera: weak")
    b = batch.image.shape[0]
    gt = FlameGroundTruth(shape=batch.shape, expression=batch.expression, jaw_pose=batch.jaw_pose,
                          eyelids=batch.eyelids, global_pose=batch.global_pose)
    return SmirkBatch(image=batch.image, landmarks_mp=batch.landmarks_mp_ndc, landmarks_fan=batch.landmarks68_ndc,
                      fan_valid=torch.ones(b, dtype=torch.bool, device=batch.image.device),
                      hull_mask=batch.hull_mask, ground_truth=gt)


def as_smirk_batch(batch: SmirkBatch | SyntheticFaceBatch) -> SmirkBatch:
    """The :class:`SmirkBatch` view of a supported batch type.

    A :class:`SyntheticFaceBatch` contributes its image, its 105 mediapipe and 68 iBUG landmarks (NDC, +y up; the
    68 stand in for FAN detections, all valid), its hull mask and its FLAME ground truth.

    Raises:
        TypeError: an unsupported batch type.
    """
    if isinstance(batch, SmirkBatch):
        return batch
    if isinstance(batch, SyntheticFaceBatch):
        return _from_synthetic(batch)
    raise TypeError(f"SMIRK cannot read a batch of type {type(batch).__name__}: yield smirk.data.SmirkBatch or "
                    "add a conversion to smirk.data.as_smirk_batch")
