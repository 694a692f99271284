"""The geometry stream's losses (DualStream Sec. III-A.3, Eq. 4-8).

* **Eq. 4, parametric**: ``L_p = ||P - P_gt||^2 + gamma ||p_t||^2`` over the PSN's albedo, SH and pose, with the
  albedo regulariser ``gamma = 5e-2`` ("5 x 10^-2" in the text). Each group is a mean squared error over its
  components (so 199 albedo coefficients do not drown 3 pose angles; the paper's plain norm would), and only samples
  whose target exists count (300W-LP has no SH: ``sh_valid``).
* **Eq. 5, ASM**: ``L_asm = sum_{m,n} ||A_id - A_id^gt||^2 W + sum_{m,n} ||A_exp - A_exp^gt||^2``, W the PRNet weight
  mask (:mod:`dualstream.uv_weights`), the expression term over the face texels (W > 0), both averaged over texels
  (a mean instead of the sum: the weight does not depend on the map size). On the decoders' normalised maps
  (:class:`dualstream.asm.AsmRange`). Ablations: ``use_weight_mask=False`` replaces W by the face mask (Table III's
  "MSE" row); no expression ASM: one term ``||A - A^gt||^2 W`` on the full map.
* **Eq. 6, symmetry**: ``L_sym = ||A_id - F_h(A_id)||_1``. ``F_h`` is the horizontal flip of the UV map, which is the
  mirror of the face only for a layout symmetric about its vertical centre line; here it is built for any layout
  from the model's mirror vertex pairs (:func:`mirror_uv_grid`; on a symmetric layout it is exactly the flip), the
  mirrored positions are reflected (x negated) and, since an image-aligned map of a *turned* head is symmetric
  only up to a rigid motion, rigidly aligned to ``A_id`` (weighted Kabsch, the motion detached) before the L1
  distance. A symmetric identity face in any pose gives 0; the flip of a frontal one needs no alignment.
* **Eq. 7, Laplacian smoothness** (lost in the OCR; reconstructed from the text "Laplacian regularization on the
  vertex locations for the set of all vertices", "A = A_id + A_exp", "N is the number of vertices", "v^{m,n} is the
  projection of v onto the ASM space with location (m, n)", "N_i is the 1-ring neighbourhood of the i-th vertex"):
  ``L_reg = 1/N sum_i || v_i - 1/|N_i| sum_{j in N_i} v_j ||^2`` with ``v_i = A(m_i, n_i)`` the vertex read from the
  full map at its UV (bilinear, :meth:`dualstream.asm.AsmCodec.to_vertices`); the uniform Laplacian of
  :func:`facelab.losses.laplacian_smoothness`.
* **Eq. 8, total**: ``L_gs = 0.5 L_p + 1 L_asm + 0.5 L_sym + 1e-3 L_reg`` (weights from the config).

Shapes: ``B`` batch, ``S`` ASM side, ``V`` vertices, ``K`` albedo coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dualstream.asm import AsmCodec
from dualstream.data import AsmSample, FaceTopology
from dualstream.geometry import GeometryOutput
from facelab.losses import masked_mean
from facelab.losses.geometry import MeshLaplacianSmoothness
from facelab.uv import uv_to_grid

__all__ = ["GeometryLosses", "LossWeights", "asm_loss", "mirror_uv_grid", "mirror_vertex_ids", "parametric_loss",
           "symmetry_loss_aligned"]


@dataclass
class LossWeights:
    """Eq. 8's weights (paper: 0.5, 1, 0.5, 1e-3)."""

    parametric: float = 0.5
    asm: float = 1.0
    symmetry: float = 0.5
    laplacian: float = 1e-3


def _group_mse(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    per_sample = (pred - target.to(pred)).square().mean(dim=1)
    return masked_mean(per_sample, valid.to(pred.dtype))


def parametric_loss(out: GeometryOutput, batch: AsmSample, albedo_reg: float = 5e-2) -> Tensor:
    """Eq. 4 (module docstring): per-group MSE of albedo / SH / pose on valid targets + ``gamma * mean(p_t^2)``."""
    if out.albedo.shape != batch.albedo.shape:
        raise ValueError(f"PSN predicts {out.albedo.shape[1]} albedo coefficients, the data has "
                         f"{batch.albedo.shape[1]}: set num_albedo to the data's model")
    loss = (_group_mse(out.albedo, batch.albedo, batch.albedo_valid) + _group_mse(out.sh, batch.sh, batch.sh_valid)
            + _group_mse(out.pose, batch.pose, batch.pose_valid))
    return loss + albedo_reg * out.albedo.square().mean()


def asm_loss(pred_id: Tensor, pred_exp: Tensor | None, true_id: Tensor, true_exp: Tensor, weight: Tensor,
             face: Tensor) -> Tensor:
    """Eq. 5 on normalised maps (module docstring).

    Args:
        pred_id: (B, 3, S, S) predicted identity map (the full map when ``pred_exp`` is None).
        pred_exp: (B, 3, S, S) or None. true_id, true_exp: (B, 3, S, S) targets (``true_exp`` already in the
            expression range; with ``pred_exp`` None the caller passes the full map as ``true_id``).
        weight: (B or 1, 1, S, S) W. face: (B or 1, 1, S, S) face texels (the expression term's support).
    """
    loss = ((pred_id - true_id).square().sum(1, keepdim=True) * weight).mean()
    if pred_exp is not None:
        loss = loss + ((pred_exp - true_exp).square().sum(1, keepdim=True) * face).mean()
    return loss


def mirror_vertex_ids(mean_shape: Tensor) -> Tensor:
    """(V, 3) model-frame shape (+x across the face) -> (V,) id of each vertex's mirror partner (nearest vertex to
    its reflection about the shape's mean x plane)."""
    from scipy.spatial import cKDTree

    pts = mean_shape.detach().double().cpu().numpy()
    mirrored = pts.copy()
    mirrored[:, 0] = 2 * pts[:, 0].mean() - pts[:, 0]
    return torch.from_numpy(cKDTree(pts).query(mirrored)[1].astype(np.int64))


def mirror_uv_grid(codec: AsmCodec, mirror_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Where each texel's mirror point lies in the UV map.

    Returns:
        grid: (1, S, S, 2) ``grid_sample`` coordinates (texels off the charts: their horizontal flip).
        valid: (1, 1, S, S) texels on the charts.
    """
    m = codec.mapper
    pairs = m.vert_uv_pairs
    v = m.num_verts
    uv_vert = torch.zeros(v, 2).index_add(0, pairs[:, 0], m.uv[pairs[:, 1]])
    uv_vert = uv_vert / torch.zeros(v).index_add(0, pairs[:, 0], torch.ones(len(pairs))).clamp(min=1)[:, None]
    mirrored_uv = (m.texel_bary[..., None] * uv_vert[mirror_ids[m.texel_corners]]).sum(1)  # (M, 2)
    h, w = m.size
    xs = (torch.arange(w) + 0.5) / w * 2 - 1
    ys = (torch.arange(h) + 0.5) / h * 2 - 1
    flip = torch.stack(torch.meshgrid(-xs, ys, indexing="xy"), -1).reshape(-1, 2)  # horizontal flip
    flip[m.texel_idx] = uv_to_grid(mirrored_uv)
    return flip.view(1, h, w, 2), m.mask


def _kabsch(src: Tensor, dst: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted rotation + centroids mapping (B, N, 3) ``src`` onto ``dst``: ``R (src - c_s) + c_d``."""
    w = weight / weight.sum(1, keepdim=True).clamp(min=1e-12)
    cs, cd = (w * src).sum(1, keepdim=True), (w * dst).sum(1, keepdim=True)
    h = ((src - cs) * w).transpose(1, 2) @ (dst - cd)  # (B, 3, 3)
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.det(vt.transpose(1, 2) @ u.transpose(1, 2)))
    diag = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    return vt.transpose(1, 2) @ diag @ u.transpose(1, 2), cs, cd


def symmetry_loss_aligned(a_id: Tensor, grid: Tensor, valid: Tensor, align: bool = True) -> Tensor:
    """Eq. 6 (module docstring): L1 between the identity map and its rigidly aligned mirror image.

    Args:
        a_id: (B, 3, S, S) identity map (any frame with x across the image). grid, valid: :func:`mirror_uv_grid`.
        align: rigidly align the mirror image first (False: the plain flip + reflection, for frontal faces).
    """
    b = a_id.shape[0]
    mirrored = F.grid_sample(a_id, grid.to(a_id).expand(b, -1, -1, -1), mode="bilinear", padding_mode="border",
                             align_corners=False)
    mirrored = mirrored * a_id.new_tensor([-1.0, 1.0, 1.0]).view(1, 3, 1, 1)
    weight = valid.to(a_id).expand(b, 1, -1, -1)
    if align:
        src, dst = mirrored.flatten(2).transpose(1, 2), a_id.flatten(2).transpose(1, 2)  # (B, S*S, 3)
        wts = weight.flatten(2).transpose(1, 2)
        with torch.no_grad():
            rot, cs, cd = _kabsch(src.detach().double(), dst.detach().double(), wts.double())
        aligned = (src - cs.to(src)) @ rot.to(src).transpose(1, 2) + cd.to(src)
        mirrored = aligned.transpose(1, 2).reshape_as(a_id)
    return masked_mean((a_id - mirrored).abs().mean(1, keepdim=True), weight)


class GeometryLosses(nn.Module):
    """Eq. 4-8 for one topology (module docstring).

    Args:
        topology: the mesh (:func:`dualstream.data.load_topology`). codec: its ASM codec.
        weights: Eq. 8's weights. albedo_reg: Eq. 4's gamma.
        use_weight_mask: W in Eq. 5 (False: uniform over the face). symmetry: Eq. 6 on. laplacian: Eq. 7 on.
        align_symmetry: rigidly align the mirror image in Eq. 6.
    """

    mirror_grid: Tensor
    mirror_valid: Tensor

    def __init__(self, topology: FaceTopology, codec: AsmCodec, weights: LossWeights | None = None,
                 albedo_reg: float = 5e-2, use_weight_mask: bool = True, symmetry: bool = True,
                 laplacian: bool = True, align_symmetry: bool = True) -> None:
        super().__init__()
        self.codec, self.weights, self.albedo_reg = codec, weights or LossWeights(), float(albedo_reg)
        self.use_weight_mask, self.symmetry, self.laplacian = use_weight_mask, symmetry, laplacian
        self.align_symmetry = align_symmetry
        grid, valid = mirror_uv_grid(codec, mirror_vertex_ids(topology.mean_shape))
        self.register_buffer("mirror_grid", grid, persistent=False)
        self.register_buffer("mirror_valid", valid, persistent=False)
        self.smoothness = MeshLaplacianSmoothness(topology.faces, topology.num_verts)

    def targets(self, batch: AsmSample) -> tuple[Tensor, Tensor]:
        """Normalised ``(a_id, a_exp)`` targets of a batch."""
        self.codec.check_map(batch.asm_id, "asm_id")
        return self.codec.encode(batch.asm_id, batch.asm_full)

    def full_map(self, out: GeometryOutput) -> Tensor:
        """The full map in identity units (``a_id + a_exp / gain``; the ablation's single map as is)."""
        if out.a_exp is None:
            return out.a_id
        return out.a_id + out.a_exp / self.codec.range.expression_gain

    def forward(self, out: GeometryOutput, batch: AsmSample, parametric_only: bool = False) -> dict[str, Tensor]:
        """Named terms and ``total`` (Eq. 8); ``parametric_only``: Eq. 4 alone (stage 1's encoder + PSN phase)."""
        terms = {"parametric": parametric_loss(out, batch, self.albedo_reg)}  # Eq. 4
        if parametric_only:
            return {**terms, "total": terms["parametric"]}
        t_id, t_exp = self.targets(batch)
        face = (batch.weight_mask > 0).to(t_id.dtype)
        weight = batch.weight_mask if self.use_weight_mask else face
        if out.a_exp is None:  # ablation: one full map
            t_full = t_id + t_exp / self.codec.range.expression_gain
            terms["asm"] = asm_loss(out.a_id, None, t_full, t_exp, weight, face)
        else:
            terms["asm"] = asm_loss(out.a_id, out.a_exp, t_id, t_exp, weight, face)  # Eq. 5
        if self.symmetry and out.a_exp is not None:
            terms["symmetry"] = symmetry_loss_aligned(out.a_id, self.mirror_grid, self.mirror_valid,
                                                      self.align_symmetry)  # Eq. 6
        if self.laplacian:
            verts = self.codec.mapper.to_vertices(self.full_map(out))
            terms["laplacian"] = self.smoothness(verts)  # Eq. 7
        w = self.weights
        total = sum(getattr(w, k) * v for k, v in terms.items())  # Eq. 8
        return {**terms, "total": total}
