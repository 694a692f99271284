"""Evaluation metrics shared by the methods (plain PyTorch/numpy; no Lightning).

* images and float maps: :func:`psnr`, :func:`ssim` (:mod:`facelab.metrics.image`);
* sets of images: :class:`FID` (:mod:`facelab.metrics.fid`);
* identity: :func:`arcface_crop`, :class:`ArcFaceOnnx`, :class:`FaceIDDistance` (:mod:`facelab.metrics.identity`);
* landmarks: :func:`landmark_nme`, :func:`yaw_binned_mean` (:mod:`facelab.metrics.landmarks`);
* meshes of one topology: :func:`vertex_distances`, :func:`vertex_error_stats`, :func:`lip_vertex_error`
  (:mod:`facelab.metrics.vertices`);
* meshes vs scans: :func:`rigid_align`, :func:`rigid_icp`, :func:`scan_to_mesh_distance`
  (:mod:`facelab.metrics.registration`).

The identity module imports insightface/onnxruntime only when an ArcFace function is used.
"""

from facelab.metrics.fid import FID, INCEPTION_WEIGHTS_SOURCE
from facelab.metrics.identity import (
    ARCFACE_MODEL_SOURCE,
    ARCFACE_TEMPLATE,
    ArcFaceOnnx,
    FaceIDDistance,
    arcface_crop,
    arcface_crop_batch,
    arcface_transform,
    faceid_distance,
)
from facelab.metrics.image import psnr, ssim, ssim_map
from facelab.metrics.landmarks import (
    IBUG68_INTER_OCULAR,
    IBUG68_INTER_PUPIL,
    YawBinnedError,
    landmark_distances,
    landmark_nme,
    nme_normalizer,
    yaw_binned_mean,
)
from facelab.metrics.registration import (
    IcpResult,
    MeshProximity,
    RigidTransform,
    closest_point_on_triangle,
    closest_points_on_mesh,
    rigid_align,
    rigid_icp,
    scan_to_mesh_distance,
)
from facelab.metrics.vertices import (
    MM_PER_UNIT,
    VertexErrorStats,
    lip_vertex_error,
    mm_per_unit,
    read_vertex_indices,
    vertex_distances,
    vertex_error_stats,
)

__all__ = [
    "ARCFACE_MODEL_SOURCE",
    "ARCFACE_TEMPLATE",
    "FID",
    "IBUG68_INTER_OCULAR",
    "IBUG68_INTER_PUPIL",
    "INCEPTION_WEIGHTS_SOURCE",
    "MM_PER_UNIT",
    "ArcFaceOnnx",
    "FaceIDDistance",
    "IcpResult",
    "MeshProximity",
    "RigidTransform",
    "VertexErrorStats",
    "YawBinnedError",
    "arcface_crop",
    "arcface_crop_batch",
    "arcface_transform",
    "closest_point_on_triangle",
    "closest_points_on_mesh",
    "faceid_distance",
    "landmark_distances",
    "landmark_nme",
    "lip_vertex_error",
    "mm_per_unit",
    "nme_normalizer",
    "psnr",
    "read_vertex_indices",
    "rigid_align",
    "rigid_icp",
    "scan_to_mesh_distance",
    "ssim",
    "ssim_map",
    "vertex_distances",
    "vertex_error_stats",
    "yaw_binned_mean",
]
