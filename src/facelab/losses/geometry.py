"""Geometry losses: landmark reprojection with per-landmark visibility, mesh Laplacian smoothness.

Shapes: ``B`` batch, ``L`` landmarks, ``D`` coordinates (2 or 3), ``V`` vertices, ``F`` faces, ``C`` per-vertex
channels (3 for positions / offsets, 1 for scalar displacements).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from facelab.losses.base import masked_mean

__all__ = [
    "LandmarkLoss",
    "LaplacianOperator",
    "MeshLaplacianSmoothness",
    "apply_laplacian",
    "landmark_loss",
    "laplacian_smoothness",
    "mesh_laplacian",
]

LandmarkNorm = Literal["l1", "l2", "euclidean"]


def landmark_loss(pred: Tensor, target: Tensor, visibility: Tensor | None = None, weights: Tensor | None = None,
                  norm: LandmarkNorm = "l2") -> Tensor:
    """Weighted landmark error with per-sample / per-landmark visibility.

    With ``w_bl = visibility_bl * weights_l``:

    * ``"l2"``: ``sum w_bl (p - t)_blc^2 / (D sum w_bl)``, the mean squared coordinate error (SMIRK / DECA style);
    * ``"l1"``: the same with ``|p - t|`` (DECA's weighted L1 landmark term);
    * ``"euclidean"``: ``sum w_bl ||p_bl - t_bl||_2 / sum w_bl``, the mean point distance (the NME numerator).

    Per-landmark weights emphasise regions, e.g. Deep3DFaceRecon's weight 20 on the nose and inner-mouth points of
    the 68 iBUG landmarks.

    Args:
        pred: (B, L, D) predicted landmarks. target: (B, L, D) detected landmarks, same frame and units.
        visibility: (B,) or (B, L), bool or soft weights in [0, 1] (which samples / points have a detection, and
            how much to trust it); None: all.
        weights: (L,) per-landmark weights; None: 1.
        norm: ``"l2"``, ``"l1"`` or ``"euclidean"``.

    Returns:
        Scalar; 0 (still attached to ``pred``) when nothing is visible.
    """
    if pred.dim() != 3 or pred.shape != target.shape:
        raise ValueError(f"expected pred and target (B, L, D) of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    b, n = pred.shape[:2]
    weight = pred.new_ones(b, n)
    if visibility is not None:
        if visibility.shape not in ((b,), (b, n)):
            raise ValueError(f"visibility {tuple(visibility.shape)} does not fit landmarks {tuple(pred.shape)}: "
                             "expected (B,) or (B, L)")
        visibility = visibility.to(pred.dtype)
        weight = weight * (visibility[:, None] if visibility.dim() == 1 else visibility)
    if weights is not None:
        if weights.shape != (n,):
            raise ValueError(f"weights {tuple(weights.shape)} do not fit {n} landmarks: expected (L,)")
        weight = weight * weights.to(pred)
    diff = pred - target.to(pred)
    if norm == "euclidean":
        return masked_mean(torch.linalg.vector_norm(diff, dim=-1), weight)
    if norm == "l1":
        return masked_mean(diff.abs(), weight[..., None])
    if norm == "l2":
        return masked_mean(diff.square(), weight[..., None])
    raise ValueError(f"norm must be 'l1', 'l2' or 'euclidean', got {norm!r}")


class LandmarkLoss(nn.Module):
    """Module form of :func:`landmark_loss` holding the norm and the per-landmark weights.

    Args:
        norm: ``"l2"``, ``"l1"`` or ``"euclidean"``.
        weights: (L,) per-landmark weights (a buffer, so it follows the module's device); None: 1.
    """

    weights: Tensor | None

    def __init__(self, norm: LandmarkNorm = "l2", weights: Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        self.norm = norm
        self.register_buffer("weights", None if weights is None else torch.as_tensor(weights, dtype=torch.float32))

    def forward(self, pred: Tensor, target: Tensor, visibility: Tensor | None = None) -> Tensor:
        return landmark_loss(pred, target, visibility, self.weights, self.norm)


# --------------------------------------------------------------------------------------------------------------
# Mesh Laplacian
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LaplacianOperator:
    """A row-normalised mesh Laplacian ``(L x)_i = x_i - sum_j w_ij x_j`` (``sum_j w_ij = 1``) as an edge list.

    Attributes:
        rows: (E,) long, the vertex ``i`` of each directed edge. cols: (E,) long, its neighbour ``j``.
        weights: (E,) ``w_ij``. connected: (V,) bool, vertices with at least one neighbour (an isolated vertex has
            ``(L x)_i = 0``).
    """

    rows: Tensor
    cols: Tensor
    weights: Tensor
    connected: Tensor

    @property
    def num_verts(self) -> int:
        return self.connected.shape[0]


def _check_faces(faces: Tensor, num_verts: int) -> None:
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    if faces.numel() and (faces.min() < 0 or faces.max() >= num_verts):
        raise ValueError(f"faces index vertices {int(faces.min())}..{int(faces.max())}, outside 0..{num_verts - 1}")


def mesh_laplacian(faces: Tensor, num_verts: int, kind: Literal["uniform", "cotangent"] = "uniform",
                   verts: Tensor | None = None) -> LaplacianOperator:
    """The uniform or cotangent Laplacian of a triangle mesh, row-normalised.

    * ``"uniform"``: ``w_ij = 1 / |N(i)|`` over the 1-ring ``N(i)`` (Sorkine et al. 2004, "Laplacian surface
      editing"; DualStream Eq. 8);
    * ``"cotangent"``: ``w_ij = (cot a_ij + cot b_ij) / sum_k (cot a_ik + cot b_ik)``, ``a_ij, b_ij`` the angles
      opposite edge ``ij`` in ``verts`` (Pinkall & Polthier 1993; Desbrun et al. 1999, the normalised form of
      pytorch3d's ``"cot"``). Computed once from a rest shape, so it stays a fixed linear operator.

    Args:
        faces: (F, 3) long triangle indices. num_verts: V.
        kind: ``"uniform"`` or ``"cotangent"``.
        verts: (V, 3) rest positions, required for ``"cotangent"``.
    """
    _check_faces(faces, num_verts)
    faces = faces.long()
    if kind == "uniform":
        edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        edges = torch.cat([edges, edges.flip(1)]).unique(dim=0)  # each undirected edge once per direction
        rows, cols = edges[:, 0], edges[:, 1]
        raw = torch.ones(rows.shape[0], dtype=torch.float64, device=faces.device)  # 1/deg exact; cast on use
    elif kind == "cotangent":
        if verts is None or verts.shape != (num_verts, 3):
            raise ValueError(f"the cotangent Laplacian needs rest verts (V={num_verts}, 3), got "
                             f"{None if verts is None else tuple(verts.shape)}")
        rows, cols, raw = _cotangent_edges(faces, verts)
    else:
        raise ValueError(f"kind must be 'uniform' or 'cotangent', got {kind!r}")
    row_sum = torch.zeros(num_verts, dtype=raw.dtype, device=raw.device).index_add(0, rows, raw)
    weights = raw / row_sum[rows].clamp(min=torch.finfo(raw.dtype).tiny)
    connected = torch.zeros(num_verts, dtype=torch.bool, device=faces.device)
    connected[rows] = True
    return LaplacianOperator(rows=rows, cols=cols, weights=weights, connected=connected)


def _cotangent_edges(faces: Tensor, verts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Directed edges (both directions) with ``cot`` of the angle opposite them in each face, summed per edge."""
    corners = verts[faces]  # (F, 3, 3)
    rows, cols, cots = [], [], []
    for k in range(3):  # the angle at corner k is opposite edge (i, j)
        i, j = (k + 1) % 3, (k + 2) % 3
        a = corners[:, i] - corners[:, k]
        b = corners[:, j] - corners[:, k]
        cot = (a * b).sum(-1) / torch.linalg.cross(a, b).norm(dim=-1).clamp(min=1e-12)
        rows += [faces[:, i], faces[:, j]]
        cols += [faces[:, j], faces[:, i]]
        cots += [cot, cot]
    rows_t, cols_t, cot_t = torch.cat(rows), torch.cat(cols), torch.cat(cots)
    pairs, inverse = torch.stack([rows_t, cols_t], 1).unique(dim=0, return_inverse=True)
    summed = torch.zeros(pairs.shape[0], dtype=cot_t.dtype, device=cot_t.device).index_add(0, inverse, cot_t)
    return pairs[:, 0], pairs[:, 1], summed


def apply_laplacian(x: Tensor, operator: LaplacianOperator) -> Tensor:
    """``L x``: (B, V, C) -> (B, V, C), zero at isolated vertices."""
    if x.dim() != 3 or x.shape[1] != operator.num_verts:
        raise ValueError(f"expected (B, V={operator.num_verts}, C), got {tuple(x.shape)}")
    w = operator.weights.to(x)
    neighbours = x.new_zeros(x.shape).index_add(1, operator.rows, x[:, operator.cols] * w[None, :, None])
    return (x - neighbours) * operator.connected.to(x)[None, :, None]


def laplacian_smoothness(x: Tensor, operator: LaplacianOperator) -> Tensor:
    """``mean_{b, i} ||(L x_b)_i||^2`` over connected vertices (DualStream Eq. 8; DECA's offset smoothness).

    For per-vertex offsets, displacements or positions. Args: x: (B, V, C). operator: :func:`mesh_laplacian`.
    """
    delta = apply_laplacian(x, operator)
    return masked_mean(delta.square().sum(-1), operator.connected[None])


class MeshLaplacianSmoothness(nn.Module):
    """:func:`laplacian_smoothness` with the operator of one topology held as buffers.

    Args:
        faces: (F, 3) triangle indices of the topology (e.g. ``model.faces``).
        num_verts: V.
        kind: ``"uniform"`` or ``"cotangent"``.
        rest_verts: (V, 3) rest shape for ``"cotangent"`` (e.g. the template).
    """

    rows: Tensor
    cols: Tensor
    weights: Tensor
    connected: Tensor

    def __init__(self, faces: Tensor, num_verts: int, kind: Literal["uniform", "cotangent"] = "uniform",
                 rest_verts: Tensor | None = None) -> None:
        super().__init__()
        op = mesh_laplacian(torch.as_tensor(faces), num_verts, kind, rest_verts)
        self.kind = kind
        for name in ("rows", "cols", "weights", "connected"):
            self.register_buffer(name, getattr(op, name), persistent=False)

    @property
    def operator(self) -> LaplacianOperator:
        return LaplacianOperator(self.rows, self.cols, self.weights, self.connected)

    def forward(self, x: Tensor) -> Tensor:
        """(B, V, C) -> scalar."""
        return laplacian_smoothness(x, self.operator)
