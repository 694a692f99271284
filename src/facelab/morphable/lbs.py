"""Linear blend skinning for skinned morphable models (FLAME), written for speed at small and large batch.

The model is the SMPL/FLAME one (Loper et al. 2015, Li et al. 2017, Eq. 1-4 of the FLAME paper):
    T_P(beta, theta) = T + B_S(beta) + B_P(theta)                shaped + pose-corrected template
    J(beta) = J_reg (T + B_S(beta))                               joint locations
    v_i = sum_k w_ik G_k(theta, J) [T_P,i; 1]                     skinning
with G_k the world transform of joint k composed along the kinematic tree, minus its rest location.

What makes it fast (see ``facelab bench flame``):
- identity + expression blendshapes are one (K, 3V) matrix, so ``B_S`` is one GEMM (``addmm``) with no permute
  of a (V, 3, K) tensor per call;
- the joint regressor is folded into the blendshapes at load (``J = J_T + beta @ J_dirs``), so joints cost
  O(K J) instead of a regression over all vertices;
- skinning blends 3x4 affine transforms (not 4x4 homogeneous matrices) and applies them with broadcasting
  instead of V tiny batched matmuls.
"""

from __future__ import annotations

import torch
from torch import Tensor

from facelab.rotations import axis_angle_to_matrix


def rigid_chain(rot_mats: Tensor, joints: Tensor, parents: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Compose local joint rotations along a kinematic tree.

    Args:
        rot_mats: (B, J, 3, 3) local rotation of each joint.
        joints: (B, J, 3) rest joint locations.
        parents: (J,) parent of each joint, -1 for the root; parents come before children.

    Returns:
        posed_joints: (B, J, 3) joint locations after posing.
        transforms: (B, J, 4, 3) skinning transforms, *transposed*: rows 0-2 are R_world^T and row 3 is
            (t_world - R_world J_rest)^T, so that ``x_posed = x @ T[:3] + T[3]`` for a row vector x.
    """
    rel = (joints[:, 1:] - joints[:, list(max(p, 0) for p in parents[1:])]).unsqueeze(-1)  # (B, J-1, 3, 1)
    rots, trans = [rot_mats[:, 0]], [joints[:, 0:1].mT]
    for j in range(1, len(parents)):
        p = parents[j]
        rots.append(rots[p] @ rot_mats[:, j])
        trans.append(torch.baddbmm(trans[p], rots[p], rel[:, j - 1]))
    r_world, posed = torch.stack(rots, 1), torch.stack(trans, 1)  # (B, J, 3, 3), (B, J, 3, 1)
    t_skin = posed - r_world @ joints.unsqueeze(-1)
    return posed.squeeze(-1), torch.cat([r_world, t_skin], dim=-1).mT


def lbs(
    betas: Tensor,
    pose: Tensor,
    v_template: Tensor,
    dirs: Tensor,
    joint_template: Tensor,
    joint_dirs: Tensor,
    lbs_weights: Tensor,
    parents: tuple[int, ...],
) -> tuple[Tensor, Tensor, Tensor]:
    """Shape + expression + pose-corrective blendshapes and linear blend skinning.

    Args:
        betas: (B, K) blendshape coefficients (identity and expression concatenated).
        pose: (B, J, 3) axis-angle rotation of each joint (joint 0 is the global rotation).
        v_template: (V, 3) template vertices.
        dirs: (K + 9(J-1), 3V) blendshapes then pose correctives (driven by R_j - I, j = 1..J-1), each row one
            component flattened vertex-major: ``T_P = T + [betas, pose_feature] @ dirs`` is one GEMM.
        joint_template: (J, 3) = J_reg @ v_template.
        joint_dirs: (K, 3J) = J_reg applied to each blendshape.
        lbs_weights: (V, J) skinning weights.
        parents: (J,) parents, -1 for the root.

    Returns:
        verts: (B, V, 3) posed vertices. joints: (B, J, 3) posed joints. rot_mats: (B, J, 3, 3) local rotations.
    """
    batch, n_joints = betas.shape[0], len(parents)
    rot_mats = axis_angle_to_matrix(pose)  # (B, J, 3, 3)
    eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
    coeffs = torch.cat([betas, (rot_mats[:, 1:] - eye).flatten(1)], dim=1)
    v_posed = torch.addmm(v_template.reshape(1, -1), coeffs, dirs).view(batch, -1, 3)  # FLAME Eq. 2-4
    joints = torch.addmm(joint_template.reshape(1, -1), betas, joint_dirs).view(batch, n_joints, 3)
    posed_joints, transforms = rigid_chain(rot_mats, joints, parents)
    t_vert = torch.matmul(lbs_weights, transforms.reshape(batch, n_joints, 12)).view(batch, -1, 4, 3)  # Eq. 1
    verts = torch.addcmul(t_vert[:, :, 3], t_vert[:, :, 0], v_posed[..., 0:1])
    verts = verts.addcmul(t_vert[:, :, 1], v_posed[..., 1:2]).addcmul(t_vert[:, :, 2], v_posed[..., 2:3])
    return verts, posed_joints, rot_mats
