"""Optimisation-based analysis-by-synthesis fitting of any morphable model to landmarks and photos.

:class:`MorphableFitter` fits FLAME, BFM, FaceScape bilinear or ICT-FaceKit faces (batched, CPU or CUDA) to 2D
landmarks (iBUG 68, mediapipe 478) and, with photos, to the pixels through SH lighting and the model's albedo; the
result carries the parameters, camera, SH, posed mesh, the photo unwrapped into the model's UV layout with its
visibility, an overlay and a per-face convergence report.
"""

from facelab.fitting.camera import matrix_to_axis_angle, perspective_from_weak, weak_perspective_procrustes
from facelab.fitting.energy import (
    gaussian_prior,
    landmark_energy,
    photometric_energy,
    robust_penalty,
    sh_least_squares,
    sh_monochrome_prior,
)
from facelab.fitting.fitter import (
    FitReport,
    FitResult,
    FitSchedule,
    FitTargets,
    FitWeights,
    MorphableFitter,
    StageReport,
)
from facelab.fitting.landmarks import mediapipe_to_ibug68

__all__ = [
    "FitReport",
    "FitResult",
    "FitSchedule",
    "FitTargets",
    "FitWeights",
    "MorphableFitter",
    "StageReport",
    "gaussian_prior",
    "landmark_energy",
    "matrix_to_axis_angle",
    "mediapipe_to_ibug68",
    "perspective_from_weak",
    "photometric_energy",
    "robust_penalty",
    "sh_least_squares",
    "sh_monochrome_prior",
    "weak_perspective_procrustes",
]
