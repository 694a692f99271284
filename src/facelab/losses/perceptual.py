"""VGG feature losses: the tapped VGG16/VGG19 trunk and the perceptual (feature reconstruction) loss.

Johnson et al. 2016, "Perceptual losses for real-time style transfer and super-resolution": ``sum_l w_l
mean |phi_l(x) - phi_l(y)|^q`` over chosen ReLU activations ``phi_l`` of an ImageNet-trained VGG (Simonyan &
Zisserman 2015). Inputs are [0, 1] RGB images, ImageNet-normalised inside; one-channel maps are repeated to RGB.
Weights come from a local torchvision state dict (``vgg16-397923af.pth``, ``vgg19-dcbb9e9d.pth``); nothing is
downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from facelab.io.weights import load_state_dict_strict, read_state_dict
from facelab.losses.base import FrozenNetwork, Norm, as_rgb, elementwise_norm, require_weights_or_random

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PerceptualLoss", "VGGFeatures", "vgg_layer_names"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VGGArch = Literal["vgg16", "vgg19"]
#: torchvision's configuration letter of each architecture.
_CONFIG = {"vgg16": "D", "vgg19": "E"}


def vgg_layer_names(arch: VGGArch) -> dict[str, int]:
    """Name -> index in ``torchvision.models.<arch>().features``: ``conv{b}_{k}``, ``relu{b}_{k}``, ``pool{b}``
    (block ``b`` from 1, layer ``k`` from 1), e.g. VGG16 ``relu1_2 -> 3``, ``relu4_3 -> 22``, ``relu5_3 -> 29``."""
    if arch not in _CONFIG:
        raise ValueError(f"arch must be one of {sorted(_CONFIG)}, got {arch!r}")
    names: dict[str, int] = {}
    index, block, layer = 0, 1, 1
    for item in cfgs[_CONFIG[arch]]:
        if item == "M":
            names[f"pool{block}"] = index
            index, block, layer = index + 1, block + 1, 1
        else:
            names[f"conv{block}_{layer}"], names[f"relu{block}_{layer}"] = index, index + 1
            index, layer = index + 2, layer + 1
    return names


def _config_up_to(config: Sequence[int | str], last_index: int) -> list[int | str]:
    """The prefix of a torchvision VGG configuration whose layers reach index ``last_index`` (a conv item makes
    two layers, conv and ReLU; ``"M"`` one), so deeper layers are never built."""
    out, index = [], 0
    for item in config:
        if index > last_index:
            break
        out.append(item)
        index += 1 if item == "M" else 2
    return out


class VGGFeatures(nn.Sequential):
    """The tapped trunk of a torchvision VGG: ImageNet normalisation, then ``features[: deepest + 1]`` with
    torchvision's layer indices (so its ``features.<i>.*`` keys load), built without the 120 M-parameter classifier
    and with non-inplace ReLUs (tapped activations must not be overwritten).

    Call it on (B, 1|3, H, W) images in [0, 1] (one channel is repeated to RGB); it returns the activations of
    ``layers``, in the order given. It does not freeze itself: the loss that owns it does.

    Args:
        arch: ``"vgg16"`` or ``"vgg19"``.
        layers: tapped layers by name (:func:`vgg_layer_names`).
        weights_path: torchvision's ``vgg16`` / ``vgg19`` state dict (deeper layers and the classifier are
            ignored; the kept layers load strictly).
        allow_random: permit ``weights_path=None`` (random weights, with a console WARNING; tests only).
            Without either a ``ValueError`` leaves the decision (e.g. switch the loss off) to the caller.
        what: the owner, named in messages.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, arch: VGGArch = "vgg16", layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
                 weights_path: str | None = None, allow_random: bool = False, what: str = "VGG features") -> None:
        require_weights_or_random(weights_path, allow_random, f"{arch.upper()} ({what})", "weights_path")
        names = vgg_layer_names(arch)
        unknown = [name for name in layers if name not in names]
        if unknown or not layers:
            raise ValueError(f"unknown {arch} layers {unknown or list(layers)}; choose from {list(names)}")
        state = None
        if weights_path is not None:  # read first: a missing file fails before any network is built
            state = read_state_dict(weights_path, what=f"{arch.upper()} weights (torchvision state dict)",
                                    config_key="weights_path")
        indices = [names[name] for name in layers]
        trunk = [nn.ReLU(inplace=False) if isinstance(m, nn.ReLU) else m for m in make_layers(_config_up_to(
            cfgs[_CONFIG[arch]], max(indices)))]
        super().__init__(*trunk[: max(indices) + 1])
        self.arch, self.layers, self.indices = arch, tuple(layers), indices
        if state is not None:
            prefix = "features."
            sub = {k[len(prefix):]: v for k, v in state.items()
                   if k.startswith(prefix) and int(k[len(prefix):].split(".")[0]) < len(self)}
            load_state_dict_strict(self, sub, str(weights_path))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> list[Tensor]:
        """(B, 1|3, H, W) in [0, 1] -> the activations of ``layers`` (B, C_l, H_l, W_l), in the order given."""
        x = (as_rgb(image) - self.mean) / self.std
        by_index: dict[int, Tensor] = {}
        wanted = set(self.indices)
        for i, layer in enumerate(self):
            x = layer(x)
            if i in wanted:
                by_index[i] = x
        return [by_index[i] for i in self.indices]


class PerceptualLoss(FrozenNetwork):
    """``sum_l w_l mean |phi_l(x) - phi_l(y)|^q`` over VGG activations (Johnson et al. 2016).

    Args:
        weights_path: torchvision's ``vgg16`` / ``vgg19`` state dict (only ``features.*`` up to the deepest tapped
            layer is used).
        allow_random: permit ``weights_path=None`` (random weights, with a console WARNING; tests only).
            Without either a ``ValueError`` leaves the decision (e.g. switch the loss off) to the caller.
        arch: ``"vgg16"`` or ``"vgg19"``.
        layers: tapped layers by name (:func:`vgg_layer_names`: ``relu1_2``, ``relu2_2``, ``relu3_3``, ...).
        layer_weights: one weight per entry of ``layers`` (default 1 each).
        norm: ``"l1"`` (mean absolute) or ``"l2"`` (mean squared) feature difference.
        detach_target: the second argument's features carry no gradient (a data target).
    """

    def __init__(self, weights_path: str | None = None, allow_random: bool = False, arch: VGGArch = "vgg16",
                 layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
                 layer_weights: Sequence[float] | None = None, norm: Norm = "l1",
                 detach_target: bool = True) -> None:
        super().__init__()
        weights = list(layer_weights) if layer_weights is not None else [1.0] * len(layers)
        if len(weights) != len(layers):
            raise ValueError(f"{len(weights)} layer weights for {len(layers)} layers")
        elementwise_norm(torch.zeros(()), norm)  # validates the name before the network is built
        self.features = VGGFeatures(arch, layers, weights_path, allow_random, what=type(self).__name__)
        self.layer_weights = weights
        self.norm, self.detach_target = norm, detach_target
        self.freeze()

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Both (B, 1|3, H, W) in [0, 1]; returns a scalar."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_target):
            target_feats = self.features(target)
        pred_feats = self.features(pred)
        return sum(w * elementwise_norm(p - t, self.norm).mean()
                   for w, p, t in zip(self.layer_weights, pred_feats, target_feats))
