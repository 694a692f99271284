"""Rotation conversions shared by the morphable models and the cameras (one implementation of each)."""

from __future__ import annotations

import torch
from kornia.geometry.conversions import quaternion_from_euler, quaternion_to_rotation_matrix
from torch import Tensor

# skew(r) = r @ _SKEW_BASIS viewed as (3, 3): [[0, -z, y], [z, 0, -x], [-y, x, 0]]
_SKEW_BASIS = torch.tensor([[0, 0, 0, 0, 0, -1, 0, 1, 0], [0, 0, 1, 0, 0, 0, -1, 0, 0], [0, -1, 0, 1, 0, 0, 0, 0, 0]])


def axis_angle_to_matrix(rot_vecs: Tensor) -> Tensor:
    """Rodrigues' formula R = I + sin(θ)/θ K + (1 - cos θ)/θ² K², smooth at zero (Taylor series near θ = 0).

    Args:
        rot_vecs: (..., 3) axis-angle vectors (radians).

    Returns:
        (..., 3, 3) rotation matrices.
    """
    theta2 = (rot_vecs * rot_vecs).sum(-1, keepdim=True).unsqueeze(-1)  # (..., 1, 1)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / safe2)
    skew = (rot_vecs @ _SKEW_BASIS.to(rot_vecs)).unflatten(-1, (3, 3))
    eye = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)
    return torch.addcmul(torch.addcmul(eye, a, skew), b, skew @ skew)


def euler_to_matrix(angles: Tensor) -> Tensor:
    """Rotation matrices from Euler angles ``(x, y, z)`` = (pitch about x, yaw about y, roll about z), radians.

    The rotation applies x first, then y, then z: ``R = Rz(az) @ Ry(ay) @ Rx(ax)``, which is Deep3DFaceRecon's
    ``compute_rotation`` (its ``face_shape @ rot`` equals ``R @ p`` with this ``R``). Uses kornia's
    ``quaternion_from_euler`` (roll = x, pitch = y, yaw = z).

    Args:
        angles: (..., 3) angles about x, y and z in radians.

    Returns:
        (..., 3, 3) rotation matrices.
    """
    shape = angles.shape[:-1]
    flat = angles.reshape(-1, 3)
    quat = torch.stack(quaternion_from_euler(flat[:, 0], flat[:, 1], flat[:, 2]), dim=-1)  # (N, 4) w, x, y, z
    return quaternion_to_rotation_matrix(quat).reshape(*shape, 3, 3)
