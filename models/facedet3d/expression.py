"""The target expression parameters ``alpha^_e`` of paper Eq. 3 from target action units.

FaceDet3D renders the detailed geometry ``G_D = {D~(I_y), alpha_s, alpha^_e}`` (Eq. 3, 12): the coarse BFM mesh
takes the *target* expression, the hallucinated map adds its wrinkles. A target given as AUs (a preset such as
``happy``, or an AU vector) carries no BFM coefficients, and the paper does not say how it obtained them. Ours: a
ridge regression ``alpha_e ~ [AU, 1] W`` fitted on the training faces of DetH (every training face has both its AUs
and its fitted BFM expression), accumulated as sufficient statistics during training and stored in the DetH
checkpoint. The target expression is the regression's prediction, the least-squares estimate of the expression
given the target AUs:

    alpha^_e = [y, 1] W

``keep_residual=True`` instead applies the AU change to the input's own expression, ``alpha_e(I_x) + (y - x) W_AU``:
``y = x`` then keeps the input's geometry exactly, and whatever part of ``alpha_e`` the AUs do not explain stays.
Measured on the synthetic world (64 held-out same-identity pairs, the map fitted during the DetH learning test):
see ``tests/facedet3d/test_deth_learning.py``. When the AUs explain only part of the expression, the residual
carries the input's unrelated expression into the target, so the prediction is the default.

``W = (G + lambda n I)^-1 C`` with ``G = sum [a, 1][a, 1]^T``, ``C = sum [a, 1] e^T`` over the
``n`` training faces (both summed over all DDP ranks, so every rank holds the same fit).

Shapes: ``B`` batch, ``A = 17`` AUs, ``K`` expression coefficients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from facelab.data.wrinkles import AU_NAMES
from facelab.errors import FacelabError

__all__ = ["AUExpressionMap", "ExpressionMapError"]

NUM_AUS = len(AU_NAMES)


class ExpressionMapError(FacelabError, ValueError):
    """The AU -> expression map was used before it saw any training face, or with mismatched sizes."""


class AUExpressionMap:
    """Ridge regression from AUs to BFM expression coefficients, accumulated batch by batch (module docstring).

    Args:
        ridge: ``lambda``, the per-face ridge weight (keeps AUs that never vary in the data at a zero effect).
    """

    def __init__(self, ridge: float = 1e-3) -> None:
        self.ridge = float(ridge)
        self.gram: Tensor | None = None   # (A + 1, A + 1) float64
        self.cross: Tensor | None = None  # (A + 1, K) float64
        self.count = 0

    @property
    def fitted(self) -> bool:
        return self.count > 0

    @staticmethod
    def statistics(aus: Tensor, expression: Tensor) -> tuple[Tensor, Tensor]:
        """One batch's (G, C) (float64): (B, A) AUs and (B, K) expression coefficients."""
        if aus.dim() != 2 or aus.shape[1] != NUM_AUS or expression.dim() != 2 or expression.shape[0] != aus.shape[0]:
            raise ExpressionMapError(f"AUExpressionMap expects AUs (B, {NUM_AUS}) and expressions (B, K), got "
                                     f"{tuple(aus.shape)} and {tuple(expression.shape)}")
        a = torch.cat([aus.detach().double(), aus.new_ones(aus.shape[0], 1, dtype=torch.float64)], dim=1)
        return a.t() @ a, a.t() @ expression.detach().double()

    def update(self, aus: Tensor, expression: Tensor, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Add a batch; ``reduce`` sums a tensor over the DDP ranks (e.g. ``strategy.reduce(t, reduce_op="sum")``)."""
        gram, cross = self.statistics(aus, expression)
        n = torch.tensor([float(aus.shape[0])], dtype=torch.float64, device=aus.device)
        if reduce is not None:  # one collective for the three sums
            k = gram.numel()
            flat = reduce(torch.cat([gram.flatten(), cross.flatten(), n]))
            gram, cross, n = flat[:k].view_as(gram), flat[k:-1].view_as(cross), flat[-1:]
        if self.gram is None:
            self.gram, self.cross = torch.zeros_like(gram), torch.zeros_like(cross)
        elif self.cross.shape != cross.shape:
            raise ExpressionMapError(f"expression size changed from {self.cross.shape[1]} to {cross.shape[1]}")
        self.gram = self.gram.to(gram.device) + gram
        self.cross = self.cross.to(cross.device) + cross
        self.count += int(round(float(n.item())))

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ExpressionMapError("the AU -> expression map has seen no training face (a DetH checkpoint from "
                                     "before it was added, or one saved before the first training step)")

    def weights(self) -> Tensor:
        """(A + 1, K) float64 ``W`` (last row: the intercept)."""
        self._require_fitted()
        eye = torch.eye(self.gram.shape[0], dtype=self.gram.dtype, device=self.gram.device)
        eye[-1, -1] = 0.0  # the intercept is not shrunk
        return torch.linalg.solve(self.gram + self.ridge * self.count * eye, self.cross)

    def predict(self, aus: Tensor, weights: Tensor | None = None) -> Tensor:
        """(B, A) AUs -> (B, K) expression coefficients (the regression itself, intercept included); ``weights``:
        an already solved :meth:`weights`."""
        w = (self.weights() if weights is None else weights).to(aus.device)
        return (aus.double() @ w[:-1] + w[-1]).to(aus.dtype)

    def mean_expression(self) -> Tensor:
        """(K,) float64 mean expression of the training faces (the "predict the mean" baseline)."""
        self._require_fitted()
        return self.cross[-1] / self.count

    def target_expression(self, expression: Tensor, source_aus: Tensor, target_aus: Tensor,
                          keep_residual: bool = False) -> Tensor:
        """(B, K) ``alpha^_e`` for the input's (B, K) expression and (B, A) AUs x (source) and y (target):
        ``[y, 1] W``, or with ``keep_residual`` ``alpha_e + (y - x) W_AU`` (module docstring)."""
        w = self.weights()
        if w.shape[1] != expression.shape[1]:
            raise ExpressionMapError(f"the map was fitted on {w.shape[1]} expression coefficients, the face has "
                                     f"{expression.shape[1]}")
        if not keep_residual:
            return self.predict(target_aus, w).to(expression.dtype)
        return expression + ((target_aus - source_aus).double() @ w[:-1].to(expression.device)).to(expression.dtype)

    # ----------------------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        return {"ridge": self.ridge, "count": self.count,
                "gram": None if self.gram is None else self.gram.cpu(),
                "cross": None if self.cross is None else self.cross.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict | None) -> AUExpressionMap:
        out = cls(float((state or {}).get("ridge", 1e-3)))
        if state and state.get("gram") is not None:
            out.gram, out.cross = state["gram"].double(), state["cross"].double()
            out.count = int(state["count"])
        return out
