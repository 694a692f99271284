"""The detail regressor: photo texture -> UV displacement map. It **stands in for FDS** (Chen et al. 2019).

FaceDet3D takes its input detail map ``D(I_x)`` from FDS, a Windows-only pipeline whose maps users precompute.
So that a photo works end to end without FDS, this network predicts the map from what ``facelab fit`` gives: the
photo unwrapped into the BFM UV layout ``T(I_x)`` (wrinkles show there as shading) with its visibility. It is a
:class:`facelab.nn.UNet` (input: texture RGB, visibility, UV coordinates; output: displacement in mm, times
``max_displacement_mm`` after a tanh), trained on the synthetic world where every map is known
(``configs/facedet3d_regressor.yaml``, :mod:`facedet3d.module_regressor`). It is not FDS: it learns the synthetic
world's wrinkle appearance, so on real photos its maps are a rough substitute until you supply FDS maps.

Shapes: ``B`` batch, ``S_t`` texture side, ``S_d`` map side.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facedet3d.data import downsample_map
from facedet3d.networks import uv_grid
from facelab.io.weights import load_state_dict_strict, read_checkpoint
from facelab.nn import UNet

__all__ = ["DetailRegressor", "load_regressor"]


class DetailRegressor(nn.Module):
    """UNet ``T(I_x), visibility -> D(I_x)``.

    Args:
        channels: UNet encoder widths (depth = ``len(channels)``).
        max_displacement_mm: output scale (tanh times this).
        norm: UNet normalisation.

    Shapes:
        ``forward(texture (B, 3, S_t, S_t), visibility (B, 1, S_t, S_t)) -> (B, 1, S_t, S_t)`` mm.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256), max_displacement_mm: float = 3.0,
                 norm: str = "instance") -> None:
        super().__init__()
        self.max_displacement_mm = float(max_displacement_mm)
        self.net = UNet(in_channels=6, out_channels=1, channels=channels, norm=norm, upsample="bilinear",
                        out_activation="tanh")

    def forward(self, texture: Tensor, visibility: Tensor) -> Tensor:
        grid = uv_grid(texture.shape[-1], texture).expand(texture.shape[0], -1, -1, -1)
        x = torch.cat([texture * 2.0 - 1.0, visibility, grid], dim=1)
        return self.net(x) * self.max_displacement_mm

    @torch.no_grad()
    def predict(self, texture: Tensor, visibility: Tensor, map_size: int) -> Tensor:
        """The map at ``map_size`` (area-averaged / bilinearly resized): (B, 1, map_size, map_size) mm."""
        out = self(texture, visibility)
        if out.shape[-1] < map_size:
            return F.interpolate(out, size=(map_size, map_size), mode="bilinear", align_corners=False)
        return downsample_map(out, map_size)


def load_regressor(path: str | os.PathLike) -> DetailRegressor:
    """A trained :class:`DetailRegressor` from a ``RegressorModule`` Lightning checkpoint (``weights_only=True``)."""
    ckpt = read_checkpoint(path, what="detail regressor checkpoint (facedet3d_regressor.yaml)",
                           config_key="--regressor")
    hp = ckpt.get("hyper_parameters", {})
    net = DetailRegressor(channels=tuple(hp.get("channels", (32, 64, 128, 256))),
                          max_displacement_mm=float(hp.get("max_displacement_mm", 3.0)))
    state = {k[len("regressor."):]: v for k, v in ckpt.get("state_dict", ckpt).items() if k.startswith("regressor.")}
    load_state_dict_strict(net, state, path, hint="a RegressorModule checkpoint")
    return net
