"""LPIPS (Zhang et al. 2018, "The unreasonable effectiveness of deep features as a perceptual metric", Eq. 1)
through the ``lpips`` package, with the trunk from a local file.

``d(x, y) = sum_l 1/(H_l W_l) sum_hw || w_l * (phi^_l(x)_hw - phi^_l(y)_hw) ||^2`` over unit-normalised trunk
activations ``phi^_l``. The calibrated linear heads ``w_l`` ship inside the ``lpips`` package (``weights/v0.1``);
the AlexNet / VGG16 / SqueezeNet trunk's ImageNet weights would be downloaded by torchvision, which cannot happen
here: ``lpips.LPIPS`` is built with a random trunk (``pnet_rand=True``) and the trunk is loaded from the local
torchvision state dict (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``, ``squeezenet1_1-b8a52dc0.pth``).
"""

from __future__ import annotations

import warnings
from typing import Literal

from torch import Tensor

from facelab.io.assets import require_file
from facelab.io.weights import load_state_dict_strict, read_state_dict
from facelab.losses.base import FrozenNetwork, as_rgb, require_weights_or_random

__all__ = ["LPIPS"]

LpipsNet = Literal["alex", "vgg", "squeeze"]
_TORCHVISION_NAME = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}


def trunk_state_from_torchvision(trunk_keys: list[str], state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``features.<i>.<param>`` -> lpips' ``slice<k>.<i>.<param>`` (lpips keeps torchvision's layer
    index ``i`` as the module name inside each slice). Keys absent from ``state`` are left out (the strict load
    names them)."""
    out = {}
    for key in trunk_keys:
        _, rest = key.split(".", 1)  # drop "slice<k>"
        source = f"features.{rest}"
        if source in state:
            out[key] = state[source]
    return out


class LPIPS(FrozenNetwork):
    """The LPIPS distance as a frozen loss module.

    Args:
        net: trunk, ``"alex"`` (LPIPS' default, and DNPM's), ``"vgg"`` (VGG16) or ``"squeeze"``.
        trunk_weights_path: torchvision's ImageNet state dict of that trunk (``features.*`` used).
        allow_random: permit ``trunk_weights_path=None`` (random trunk, with a console WARNING; tests only).
            Without either a ``ValueError`` leaves the decision to the caller.
        version: the linear heads' version (``"0.1"``; ``"0.0"`` has the unscaled-input bug of the first release).
        linear_weights_path: the linear heads; None: the ones shipped in the ``lpips`` package.
        spatial: keep the per-pixel distance map (B, 1, H, W) instead of its spatial mean.
        reduction: ``"mean"`` (a scalar loss) or ``"none"`` (per sample: (B,), or (B, 1, H, W) when spatial).
        input_range: ``"unit"`` for [0, 1] images (rescaled to [-1, 1] inside), ``"signed"`` for [-1, 1].
    """

    def __init__(self, net: LpipsNet = "alex", trunk_weights_path: str | None = None, allow_random: bool = False,
                 version: Literal["0.1", "0.0"] = "0.1", linear_weights_path: str | None = None,
                 spatial: bool = False, reduction: Literal["mean", "none"] = "mean",
                 input_range: Literal["unit", "signed"] = "unit") -> None:
        super().__init__()
        if net not in _TORCHVISION_NAME:
            raise ValueError(f"net must be one of {sorted(_TORCHVISION_NAME)}, got {net!r}")
        if reduction not in ("mean", "none") or input_range not in ("unit", "signed"):
            raise ValueError(f"reduction must be 'mean' or 'none' and input_range 'unit' or 'signed', got "
                             f"{reduction!r}, {input_range!r}")
        import lpips  # imported when used: it pulls scipy and its trainer

        tv_name = _TORCHVISION_NAME[net]
        require_weights_or_random(trunk_weights_path, allow_random, f"LPIPS {tv_name} trunk", "trunk_weights_path")
        state = None
        if trunk_weights_path is not None:  # read first: a missing file fails before any network is built
            state = read_state_dict(trunk_weights_path, what=f"LPIPS trunk ({tv_name} torchvision state dict)",
                                    config_key="trunk_weights_path")
        heads = None if linear_weights_path is None else str(require_file(
            linear_weights_path, what="LPIPS linear heads", config_key="linear_weights_path", family="weights"))
        with warnings.catch_warnings():  # torchvision's deprecation of `pretrained=False` inside lpips
            warnings.filterwarnings("ignore", message=".*(pretrained|weights).*", category=UserWarning)
            self.lpips = lpips.LPIPS(pretrained=True, net=net, version=version, lpips=True, spatial=spatial,
                                     pnet_rand=True, model_path=heads, verbose=False)
        if state is not None:
            trunk = self.lpips.net
            load_state_dict_strict(trunk, trunk_state_from_torchvision(list(trunk.state_dict()), state),
                                   str(trunk_weights_path), hint="expected torchvision `features.<i>.*` keys")
        self.reduction, self.input_range = reduction, input_range
        self.freeze()

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Both (B, 1|3, H, W) in ``input_range``; returns the reduced distance."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        dist = self.lpips(as_rgb(pred), as_rgb(target), normalize=self.input_range == "unit")  # (B, 1, 1|H, 1|W)
        if self.reduction == "mean":
            return dist.mean()
        return dist if self.lpips.spatial else dist.flatten()
