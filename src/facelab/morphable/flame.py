"""FLAME (Li et al., SIGGRAPH Asia 2017) with the companions DECA/SMIRK use: 68 iBUG landmarks with a
yaw-dependent contour, 105 mediapipe landmarks, eyelid blendshapes, region masks and the UV template."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from kornia.geometry.conversions import rotation_matrix_to_axis_angle
from torch import Tensor

from facelab.errors import AssetFormatError
from facelab.morphable.base import MeshOutput, MorphableModel, MorphableParams, barycentric_points
from facelab.morphable.flame_assets import (
    NUM_SHAPE_TOTAL,
    FlameArrays,
    flame_folder_paths,
    read_flame_folder,
)
from facelab.morphable.lbs import lbs
from facelab.rotations import axis_angle_to_matrix

#: Joints of FLAME's kinematic tree, in order.
FLAME_JOINTS = ("global", "neck", "jaw", "left_eye", "right_eye")


#: FLAME's optional parameter fields and their widths.
FLAME_POSE_FIELDS = {"global_pose": 3, "neck_pose": 3, "jaw_pose": 3, "eye_pose": 6, "eyelids": 2}


@dataclass
class FlameParams(MorphableParams):
    """FLAME parameters. Only ``identity`` and ``expression`` are required; absent poses and eyelids are zero.

    Attributes:
        identity: (B, n_shape) identity ("shape") coefficients.
        expression: (B, n_expression) expression coefficients.
        albedo: unused (FLAME has no colour basis here); must stay None.
        global_pose: (B, 3) axis-angle head rotation about the root joint.
        neck_pose: (B, 3). jaw_pose: (B, 3). eye_pose: (B, 6) left then right eye axis-angle.
        eyelids: (B, 2) left and right eyelid closure (0 open, 1 closed), added after skinning.
    """

    global_pose: Tensor | None = None
    neck_pose: Tensor | None = None
    jaw_pose: Tensor | None = None
    eye_pose: Tensor | None = None
    eyelids: Tensor | None = None

    def full_pose(self) -> Tensor:
        """(B, 5, 3) axis-angle of every joint, zeros where a pose is absent."""
        b, like = self.batch_size, self.identity
        parts = [self.global_pose, self.neck_pose, self.jaw_pose, self.eye_pose]
        sizes = [3, 3, 3, 6]
        pose = [p if p is not None else like.new_zeros(b, n) for p, n in zip(parts, sizes)]
        return torch.cat(pose, dim=1).view(b, 5, 3)


def resolve_flame_paths(model_path: str | os.PathLike, given: dict) -> dict:
    """Fill companion paths that were not given: from the synthetic stand-in, or from the model's folder."""
    spec = str(model_path)
    if spec.startswith("synthetic"):
        from facelab.morphable.synthetic import synthetic_asset_dir

        size = spec.split(":", 1)[1] if ":" in spec else "full"
        folder = synthetic_asset_dir("flame", size=size)
        defaults = flame_folder_paths(folder)
    elif Path(spec).is_dir():
        defaults = flame_folder_paths(spec)
    else:
        defaults = {k: v for k, v in flame_folder_paths(Path(spec).parent).items() if k != "model"}
        defaults["model"] = Path(spec)
    given = {k: v for k, v in given.items() if k != "model"}  # the model file comes from the resolution above
    return {k: given.get(k) if given.get(k) is not None else defaults.get(k) for k in defaults}


class Flame(MorphableModel):
    """The FLAME head model as a batch-, device- and dtype-agnostic module.

    Args:
        model_path: ``generic_model.pkl``, a folder holding the FLAME files, or ``"synthetic"`` (``"synthetic:tiny"``)
            for the generated stand-in. Companion paths left as None are looked up beside the model by their
            standard names (see :mod:`facelab.morphable.flame_assets`).
        landmark_path: DECA's ``landmark_embedding.npy`` (required: beside the model or given).
        mediapipe_path: SMIRK's ``mediapipe_landmark_embedding.npz`` (optional).
        masks_path: ``FLAME_masks.pkl`` (optional; gives ``regions`` such as ``face``).
        l_eyelid_path, r_eyelid_path: eyelid blendshapes (optional).
        template_path: ``head_template.obj`` with UVs (optional).
        n_shape: identity components used (<= 300).
        n_expression: expression components used (<= 100).
    """

    units = "m"
    params_type = FlameParams
    has_skeleton = True

    def __init__(
        self,
        model_path: str = "synthetic",
        landmark_path: str | None = None,
        mediapipe_path: str | None = None,
        masks_path: str | None = None,
        l_eyelid_path: str | None = None,
        r_eyelid_path: str | None = None,
        template_path: str | None = None,
        n_shape: int = 300,
        n_expression: int = 100,
    ) -> None:
        super().__init__()
        given = dict(model=model_path, landmarks=landmark_path, mediapipe=mediapipe_path, masks=masks_path,
                     l_eyelid=l_eyelid_path, r_eyelid=r_eyelid_path, template=template_path)
        p = resolve_flame_paths(model_path, given)
        arrays = read_flame_folder(p["model"], p["landmarks"], p["mediapipe"], p["masks"], p["l_eyelid"],
                                   p["r_eyelid"], p["template"])
        self._build(arrays, n_shape, n_expression)
        self.is_synthetic = str(model_path).startswith("synthetic")

    @classmethod
    def from_arrays(cls, arrays: FlameArrays, n_shape: int = 300, n_expression: int = 100) -> Flame:
        """Build from in-memory :class:`FlameArrays` (no files)."""
        model = cls.__new__(cls)
        MorphableModel.__init__(model)
        model._build(arrays, n_shape, n_expression)
        return model

    def _build(self, a: FlameArrays, n_shape: int, n_expression: int) -> None:
        n_exp_total = a.shapedirs.shape[2] - NUM_SHAPE_TOTAL
        if not (0 <= n_shape <= NUM_SHAPE_TOTAL and 0 <= n_expression <= n_exp_total):
            raise AssetFormatError(f"n_shape must be in [0, {NUM_SHAPE_TOTAL}] and n_expression in "
                                   f"[0, {n_exp_total}]; got {n_shape} and {n_expression}")
        self.n_shape, self.n_expression = n_shape, n_expression
        self.num_identity, self.num_expression = n_shape, n_expression
        self.parents = tuple(int(p) for p in a.parents)
        dirs = np.concatenate([a.shapedirs[:, :, :n_shape],
                               a.shapedirs[:, :, NUM_SHAPE_TOTAL:NUM_SHAPE_TOTAL + n_expression]], axis=2)
        n_verts, n_joints = a.v_template.shape[0], len(self.parents)
        buf = self.register_constant
        buf("v_template", a.v_template)
        # (K + 9(J-1), 3V): identity, expression and pose-corrective blendshapes in one GEMM operand
        buf("dirs", np.concatenate([dirs, a.posedirs], axis=2).reshape(n_verts * 3, -1).T)
        buf("joint_template", a.j_regressor @ a.v_template)  # (J, 3)
        buf("joint_dirs", np.einsum("jv,vck->kjc", a.j_regressor, dirs).reshape(dirs.shape[2], n_joints * 3))
        buf("lbs_weights", a.weights)
        self.register_topology(a.faces, a.uv, a.faces_uv)
        # per yaw bin, the 68 landmarks: 17 contour points of that bin, then the 51 static ones
        n_bins = a.dynamic_lmk_faces.shape[0]
        buf("lmk_faces", np.concatenate([a.dynamic_lmk_faces, np.tile(a.static_lmk_faces, (n_bins, 1))], 1),
            torch.long)
        buf("lmk_bary", np.concatenate([a.dynamic_lmk_bary, np.tile(a.static_lmk_bary, (n_bins, 1, 1))], 1))
        self.has_mediapipe = a.mp_faces is not None
        if self.has_mediapipe:
            buf("mp_faces", a.mp_faces, torch.long)
            buf("mp_bary", a.mp_bary)
            buf("mp_indices", a.mp_indices, torch.long)
        self.has_eyelids = a.l_eyelid is not None and a.r_eyelid is not None
        if self.has_eyelids:
            buf("eyelid_dirs", np.stack([a.l_eyelid, a.r_eyelid]).reshape(2, -1))  # (2, 3V)
        self.register_regions(a.masks)

    @property
    def num_verts(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def pose_fields(self) -> tuple[str, ...]:
        return tuple(k for k in FLAME_POSE_FIELDS if k != "eyelids" or self.has_eyelids)

    def _pose_widths(self) -> dict[str, int]:
        return {k: FLAME_POSE_FIELDS[k] for k in self.pose_fields}

    def _like(self) -> Tensor:
        return self.v_template

    @property
    def mediapipe_embedding(self) -> tuple[Tensor, Tensor, Tensor] | None:
        return (self.mp_indices, self.mp_faces, self.mp_bary) if self.has_mediapipe else None

    def forward_posed(self, params: FlameParams, head_pose: Tensor | None = None) -> MeshOutput:
        """FLAME under a head rotation (B, 3) axis-angle, applied through the root joint (see
        :meth:`MorphableModel.forward_posed`): it becomes ``global_pose``, composed as ``R_head @ R_global`` with a
        ``global_pose`` already set, so the yaw-dependent 68-landmark contour follows the turned head. The mesh
        turns about the root joint."""
        if head_pose is None:
            return self(params)
        if params.global_pose is not None:
            composed = axis_angle_to_matrix(head_pose) @ axis_angle_to_matrix(params.global_pose)
            head_pose = rotation_matrix_to_axis_angle(composed)
        return self(replace(params, global_pose=head_pose))

    def forward(self, params: FlameParams) -> MeshOutput:
        """Posed FLAME meshes and their landmarks.

        Returns:
            MeshOutput with verts (B, V, 3), landmarks68 (B, 68, 3), landmarks_mp (B, 105, 3) when the mediapipe
            embedding is loaded, joints (B, 5, 3).
        """
        params = self.as_params(params)
        self.check_params(params)
        betas = torch.cat([params.identity, params.expression], dim=1)
        pose = params.full_pose()
        verts, joints, rot_mats = lbs(betas, pose, self.v_template, self.dirs, self.joint_template, self.joint_dirs,
                                      self.lbs_weights, self.parents)
        if params.eyelids is not None:
            if not self.has_eyelids:
                raise AssetFormatError("eyelid parameters given but no eyelid blendshapes were loaded "
                                       "(l_eyelid_path / r_eyelid_path)")
            verts = verts + (params.eyelids @ self.eyelid_dirs).view_as(verts)  # added after skinning (SMIRK)
        lmk68 = self.landmarks68(verts, rot_mats)
        lmk_mp = barycentric_points(verts, self.faces, self.mp_faces, self.mp_bary) if self.has_mediapipe else None
        return MeshOutput(verts=verts, landmarks68=lmk68, landmarks_mp=lmk_mp, joints=joints)

    def landmarks68(self, verts: Tensor, rot_mats: Tensor) -> Tensor:
        """(B, 68, 3) iBUG landmarks: 17 contour points chosen by head yaw (DECA's dynamic embedding), 51 static.

        Args:
            verts: (B, V, 3) posed vertices. rot_mats: (B, J, 3, 3) local joint rotations (from :func:`lbs`).
        """
        bins = self.yaw_bin(rot_mats)
        return barycentric_points(verts, self.faces, self.lmk_faces[bins], self.lmk_bary[bins])

    @staticmethod
    def yaw_bin(rot_mats: Tensor) -> Tensor:
        """(B,) row of the dynamic contour table for the head yaw given local joint rotations (B, J, 3, 3).

        The yaw is that of R_global @ R_neck in whole degrees, clamped to [-39, 39]; row a for a >= 0 and
        39 - a for a < 0 (DECA's table layout)."""
        rel = rot_mats[:, 0].detach() @ rot_mats[:, 1].detach()
        yaw = torch.atan2(-rel[:, 2, 0], torch.hypot(rel[:, 0, 0], rel[:, 1, 0]))
        deg = torch.round(torch.nan_to_num(yaw) * (180.0 / math.pi)).clamp(-39, 39).long()  # NaN pose: row 0
        return torch.where(deg < 0, 39 - deg, deg)
