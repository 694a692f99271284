"""FLAME forward: facelab's LBS against a straightforward SMPL-X-style reference, same inputs, same run.

The reference is written the way SMPL-X/FLAME_PyTorch structure LBS: blendshapes by einsum over a (V, 3, K)
tensor, joints regressed from all shaped vertices, 4x4 homogeneous transforms along the chain, per-vertex
4x4 @ 4x1 matmuls for skinning, landmarks by gathering triangles. Goals (issue 2): library >= 2x faster at B=1,
not slower at B=256, outputs equal to 1e-5.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import Tensor

from facelab.bench.common import BenchRow, available_devices, peak_memory_mb, time_fn
from facelab.morphable.flame import Flame, FlameParams
from facelab.morphable.flame_assets import FlameArrays


class ReferenceFlame(torch.nn.Module):
    """SMPL-X-style LBS over the same :class:`FlameArrays` (for benchmarking and cross-checking)."""

    def __init__(self, a: FlameArrays, n_shape: int = 300, n_expression: int = 100):
        super().__init__()
        shapedirs = np.concatenate([a.shapedirs[..., :n_shape], a.shapedirs[..., 300:300 + n_expression]], 2)
        f32 = torch.get_default_dtype()
        self.register_buffer("v_template", torch.as_tensor(a.v_template, dtype=f32))
        self.register_buffer("shapedirs", torch.as_tensor(shapedirs, dtype=f32))  # (V, 3, K)
        self.register_buffer("posedirs", torch.as_tensor(a.posedirs.reshape(-1, a.posedirs.shape[2]).T, dtype=f32))
        self.register_buffer("j_regressor", torch.as_tensor(a.j_regressor, dtype=f32))  # (J, V) dense
        self.register_buffer("weights", torch.as_tensor(a.weights, dtype=f32))
        self.register_buffer("parents", torch.as_tensor(a.parents))
        self.register_buffer("faces", torch.as_tensor(a.faces))
        self.register_buffer("static_faces", torch.as_tensor(a.static_lmk_faces))
        self.register_buffer("static_bary", torch.as_tensor(a.static_lmk_bary, dtype=f32))
        self.register_buffer("dynamic_faces", torch.as_tensor(a.dynamic_lmk_faces))
        self.register_buffer("dynamic_bary", torch.as_tensor(a.dynamic_lmk_bary, dtype=f32))

    @staticmethod
    def rodrigues(rot_vecs: Tensor) -> Tensor:
        angle = torch.norm(rot_vecs + 1e-8, dim=1, keepdim=True)
        axis = rot_vecs / angle
        cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
        rx, ry, rz = torch.split(axis, 1, dim=1)
        zeros = torch.zeros_like(rx)
        k = torch.cat([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=1).view(-1, 3, 3)
        eye = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)[None]
        return eye + sin * k + (1 - cos) * torch.bmm(k, k)

    def forward(self, betas: Tensor, pose: Tensor) -> tuple[Tensor, Tensor]:
        b, n_j = betas.shape[0], self.weights.shape[1]
        v_shaped = self.v_template + torch.einsum("bl,mkl->bmk", betas, self.shapedirs)
        joints = torch.einsum("bik,ji->bjk", v_shaped, self.j_regressor)
        rot = self.rodrigues(pose.reshape(-1, 3)).view(b, -1, 3, 3)
        eye = torch.eye(3, dtype=betas.dtype, device=betas.device)
        pose_feature = (rot[:, 1:] - eye).view(b, -1)
        v_posed = v_shaped + torch.matmul(pose_feature, self.posedirs).view(b, -1, 3)
        rel = joints.clone()
        rel[:, 1:] -= joints[:, self.parents[1:]]
        mats = torch.cat([torch.nn.functional.pad(rot, [0, 0, 0, 1]),
                          torch.nn.functional.pad(rel.unsqueeze(-1), [0, 0, 0, 1], value=1)], dim=-1)
        chain = [mats[:, 0]]
        for i in range(1, n_j):
            chain.append(torch.matmul(chain[int(self.parents[i])], mats[:, i]))
        world = torch.stack(chain, dim=1)
        posed_joints = world[:, :, :3, 3]
        joints_h = torch.nn.functional.pad(joints.unsqueeze(-1), [0, 0, 0, 1])
        rel_t = world - torch.nn.functional.pad(torch.matmul(world, joints_h), [3, 0, 0, 0, 0, 0, 0, 0])
        t = torch.matmul(self.weights, rel_t.view(b, n_j, 16)).view(b, -1, 4, 4)
        homo = torch.cat([v_posed, torch.ones_like(v_posed[..., :1])], dim=2)
        verts = torch.matmul(t, homo.unsqueeze(-1))[:, :, :3, 0]
        return verts, posed_joints

    def landmarks(self, verts: Tensor, pose: Tensor) -> Tensor:
        b = verts.shape[0]
        # DECA: yaw of the neck chain (neck then global) in whole degrees selects the contour row
        rots = self.rodrigues(pose.view(b, -1, 3)[:, :2].reshape(-1, 3)).view(b, 2, 3, 3)
        rel = torch.bmm(rots[:, 0], rots[:, 1])
        yaw = torch.atan2(-rel[:, 2, 0], torch.sqrt(rel[:, 0, 0] ** 2 + rel[:, 1, 0] ** 2))
        deg = torch.round(torch.clamp(yaw * 180.0 / np.pi, max=39)).long()
        bins = torch.where(deg < 0, torch.where(deg < -39, torch.full_like(deg, 78), 39 - deg), deg)
        faces = torch.cat([self.dynamic_faces[bins], self.static_faces.expand(b, -1)], 1)
        bary = torch.cat([self.dynamic_bary[bins], self.static_bary.expand(b, -1, -1)], 1)
        tri = self.faces[faces]  # (B, L, 3)
        flat = verts.reshape(-1, 3)[(tri + torch.arange(b, device=verts.device)[:, None, None] * verts.shape[1])]
        return torch.einsum("blfi,blf->bli", flat, bary)


def random_params(flame: Flame, batch: int, generator: torch.Generator) -> FlameParams:
    def r(*shape, s=1.0):
        return torch.randn(*shape, generator=generator) * s

    return FlameParams(identity=r(batch, flame.n_shape), expression=r(batch, flame.n_expression),
                       global_pose=r(batch, 3, s=0.3), neck_pose=r(batch, 3, s=0.1),
                       jaw_pose=r(batch, 3, s=0.1).abs(), eye_pose=r(batch, 6, s=0.1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--model", default="synthetic", help="FLAME model path or 'synthetic' (full size)")
    parser.add_argument("--repeat", type=int, default=20)


def _measure(flame: Flame, ref: ReferenceFlame, p: FlameParams, device: str, repeat: int) -> list[BenchRow]:
    betas, pose = torch.cat([p.identity, p.expression], 1), p.full_pose()

    @torch.no_grad()
    def library():
        return flame(p)

    @torch.no_grad()
    def reference():
        verts, joints = ref(betas, pose)
        return verts, joints, ref.landmarks(verts, pose)

    out, (verts, joints, lmk) = library(), reference()
    err = max((out.verts - verts).abs().max().item(), (out.joints - joints).abs().max().item(),
              (out.landmarks68 - lmk).abs().max().item())
    t_ref = time_fn(reference, device, repeat=repeat, min_time_s=0.5)
    t_lib = time_fn(library, device, repeat=repeat, min_time_s=0.5)
    batch = p.batch_size
    return [BenchRow("flame", impl, device, batch, t, batch / t * 1e3, peak_memory_mb(fn, device),
                     extra={"speedup_vs_ref": round(t_ref / t, 2), "max_abs_err": f"{err:.2e}"})
            for impl, t, fn in (("reference", t_ref, reference), ("facelab", t_lib, library))]


def run(args: argparse.Namespace) -> list[BenchRow]:
    from facelab.morphable.flame import resolve_flame_paths
    from facelab.morphable.flame_assets import read_flame_folder

    paths = resolve_flame_paths(args.model, {})
    arrays = read_flame_folder(paths["model"], paths["landmarks"])
    rows: list[BenchRow] = []
    for device in available_devices(args.device):
        flame = Flame.from_arrays(arrays).to(device)
        ref = ReferenceFlame(arrays).to(device)
        gen = torch.Generator().manual_seed(0)
        for batch in args.batch_sizes:
            p = random_params(flame, batch, gen)
            p = FlameParams(**{k: v.to(device) for k, v in vars(p).items() if v is not None})
            rows += _measure(flame, ref, p, device, args.repeat)
    return rows
