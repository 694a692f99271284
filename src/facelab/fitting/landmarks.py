"""2D landmark targets of a fit: mediapipe's 478-point face mesh to the iBUG 68 layout.

mediapipe's face mesh (Kartynnik et al. 2019) tracks 478 fixed points of a canonical face surface. The iBUG 68
points (Sagonas et al. 2013) are named features; every one except the jaw line is a mediapipe vertex with the same
meaning (eye corners and lids, brow arches, nose ridge and base, the lips' outer and inner contours), listed in
:data:`MP_IBUG68_FEATURES`. iBUG's 17 jaw points are spread evenly from ear to ear; mediapipe's face oval holds
23 vertices along the same curve (:data:`MP_JAW_POLYLINE`), so jaw point ``k`` is the point at parameter
``22 k / 16`` along that polyline (linear interpolation between its two neighbours: fixed weights, hence a fixed
surface point that turns with the face, like a model's landmark vertex).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["MP_IBUG68_FEATURES", "MP_JAW_POLYLINE", "mediapipe_to_ibug68"]

#: mediapipe's face oval from the subject's right ear (image left) under the chin to the left ear.
MP_JAW_POLYLINE = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288,
                   361, 323, 454, 356)
#: iBUG points 17-67 as mediapipe vertices: brows (outer to inner, then inner to outer), nose ridge and base, eyes
#: (outer corner, upper lid, inner corner, lower lid), outer lips from the right corner, inner lips.
MP_IBUG68_FEATURES = (
    70, 63, 105, 66, 107,  # 17-21 right brow (image left), outer -> inner
    336, 296, 334, 293, 300,  # 22-26 left brow, inner -> outer
    168, 197, 5, 1,  # 27-30 nose ridge: nasion -> tip
    98, 97, 2, 326, 327,  # 31-35 nose base: right alar -> subnasale -> left alar
    33, 160, 158, 133, 153, 144,  # 36-41 right eye
    362, 385, 387, 263, 373, 380,  # 42-47 left eye
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # 48-59 outer lips
    78, 81, 13, 311, 308, 402, 14, 178,  # 60-67 inner lips
)


def _jaw_weights() -> tuple[np.ndarray, np.ndarray]:
    """(17, 2) polyline vertex pairs and (17, 2) interpolation weights of iBUG's jaw points."""
    n = len(MP_JAW_POLYLINE) - 1
    t = np.arange(17) * n / 16.0
    lo = np.minimum(np.floor(t).astype(np.int64), n - 1)
    frac = t - lo
    poly = np.asarray(MP_JAW_POLYLINE)
    return np.stack([poly[lo], poly[lo + 1]], 1), np.stack([1.0 - frac, frac], 1)


def mediapipe_to_ibug68(points: Tensor) -> Tensor:
    """iBUG-68 landmarks from mediapipe face-mesh landmarks.

    Args:
        points: (..., 478, 2|3) (or 468 without the irises) mediapipe landmarks, any coordinates.

    Returns:
        (..., 68, C) in the same coordinates.
    """
    if points.dim() < 2 or points.shape[-2] not in (468, 478):
        raise ValueError(f"expected mediapipe landmarks (..., 478 or 468, C), got {tuple(points.shape)}")
    pairs, weights = _jaw_weights()
    pairs_t = torch.as_tensor(pairs, device=points.device)
    w = torch.as_tensor(weights, dtype=points.dtype, device=points.device)
    jaw = (points[..., pairs_t, :] * w[..., None]).sum(dim=-2)  # (..., 17, C)
    features = points[..., torch.as_tensor(MP_IBUG68_FEATURES, device=points.device), :]
    return torch.cat([jaw, features], dim=-2)
