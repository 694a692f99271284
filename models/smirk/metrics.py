"""SMIRK's evaluation metrics (expression errors, Table 4 statistics) on the core's generic ones.

Used by :mod:`smirk.evaluate` (``facelab evaluate``) and by :class:`smirk.module.SmirkModule`'s validation, so
``val/*`` and the evaluation report are the same numbers. No Lightning, no data loading. The generic metrics
(landmark NME, per-vertex distances, the Table 2 summary) live in :mod:`facelab.metrics` and are re-exported here.

Units: landmarks in NDC of the crop (half the crop side = 1); vertices in the model's units, converted to mm where
the name says so. Shapes: ``B`` batch, ``L`` landmarks, ``V`` vertices, ``M`` faces, ``N`` copies per face.
"""

from __future__ import annotations

from torch import Tensor

from facelab.metrics import VertexErrorStats, landmark_nme, mm_per_unit, vertex_distances, vertex_error_stats
from facelab.morphable import Flame, FlameParams
from smirk.data import FlameGroundTruth

__all__ = [
    "ExpressionVertexError",
    "VertexErrorStats",
    "expression_mse",
    "landmark_nme",
    "probe_statistics",
    "vertex_distances",
    "vertex_error_stats",
]


def expression_mse(pred: Tensor, true: Tensor) -> Tensor:
    """(B,) mean squared error of the model's expression coefficients.

    Args:
        pred: (B, K) predicted coefficients. true: (B, K') ground truth with ``K' >= K`` (the synthetic truth may
            use more components than the model: only the first ``K`` are compared).
    """
    k = pred.shape[-1]
    return (pred - true[..., :k].to(pred)).pow(2).mean(dim=-1)


def probe_statistics(target_verts: Tensor, pred_verts: Tensor) -> tuple[Tensor, Tensor]:
    """Supplementary Table 4's *vert L1* and *vert abs std* from tweaked-copy vertices.

    ``vert L1 = mean_{m,n,v,c} |x^target_{mnvc} - x^pred_{mnvc}|`` and
    ``vert abs std = mean_{m,v,c} |std_n x^target_{mnvc} - std_n x^pred_{mnvc}|`` (sample std over the N copies).

    Args:
        target_verts: (M, N, V, 3) vertices of the tweaked parameters the copies were rendered from.
        pred_verts: (M, N, V, 3) vertices of the parameters the encoder estimated from the copies.

    Returns:
        Two scalar tensors (vert L1, vert abs std), in the vertices' units.
    """
    if target_verts.shape != pred_verts.shape or target_verts.dim() != 4 or target_verts.shape[1] < 2:
        raise ValueError(f"probe_statistics expects two (M, N>=2, V, 3) tensors, got {tuple(target_verts.shape)} "
                         f"and {tuple(pred_verts.shape)}")
    l1 = (target_verts - pred_verts).abs().mean()
    abs_std = (target_verts.std(dim=1) - pred_verts.std(dim=1)).abs().mean()
    return l1, abs_std


class ExpressionVertexError:
    """Face-region vertex error of the expression alone (``val/expression_vertex_error_mm``), per vertex, in mm.

    Both meshes have the mean identity (zero shape) and zero head, neck and eye pose; the prediction carries the
    estimated expression, jaw and eyelids, the truth its own (with all of its expression components: a FLAME with
    that many components is built on demand from ``flame_path``). Not an ``nn.Module``: the extra models are a
    cache, never part of a checkpoint.

    Args:
        flame: the FLAME the encoder predicts parameters of (its ``regions["face"]`` selects the vertices).
        flame_path: where ``flame`` came from (to build the ground truth's FLAME with more components).
    """

    def __init__(self, flame: Flame, flame_path: str) -> None:
        self.flame, self.flame_path = flame, flame_path
        self.face = flame.regions["face"]
        self.scale = mm_per_unit(flame.units)
        self._models: dict[int, Flame] = {flame.n_expression: flame}

    def model(self, n_expression: int) -> Flame:
        """This FLAME with ``n_expression`` expression components (same device as the base model)."""
        if n_expression not in self._models:
            self._models[n_expression] = Flame(self.flame_path, n_shape=self.flame.n_shape, n_expression=n_expression)
        return self._models[n_expression].to(next(self.flame.buffers()).device)

    def vertices(self, expression: Tensor, jaw_pose: Tensor, eyelids: Tensor) -> Tensor:
        """(B, V, 3) expression-only meshes of (B, K) expression, (B, 3) jaw, (B, 2) eyelids."""
        model = self.model(expression.shape[-1])
        shape = expression.new_zeros(expression.shape[0], model.n_shape)
        return model(FlameParams(identity=shape, expression=expression, jaw_pose=jaw_pose, eyelids=eyelids)).verts

    def __call__(self, expression: Tensor, jaw_pose: Tensor, eyelids: Tensor, truth: FlameGroundTruth) -> Tensor:
        """(B, V_face) per-vertex errors in mm of the predicted (B, K) expression, (B, 3) jaw, (B, 2) eyelids."""
        pred = self.vertices(expression, jaw_pose, eyelids)
        true = self.vertices(truth.expression.to(pred), truth.jaw_pose.to(pred), truth.eyelids.to(pred))
        return vertex_distances(pred, true, self.face, self.scale)
