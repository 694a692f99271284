"""Reading network weights from local files (nothing is downloaded) and loading them strictly."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from facelab.errors import AssetFormatError
from facelab.io.assets import require_file


def constructor_arguments(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``hyper_parameters`` as the module's constructor keyword arguments: without the bookkeeping
    keys ``lightning-cli`` adds (``_class_path``, ``_instantiator``: every top-level key with a leading ``_``)."""
    return {k: v for k, v in hparams.items() if not str(k).startswith("_")}


def read_checkpoint(path: str | os.PathLike, *, what: str, config_key: str | None = None) -> dict:
    """The whole object of a local ``torch.save`` file, read with ``torch.load(weights_only=True)``.

    Zip-format files are memory-mapped (tensors are read when touched); legacy files are read whole. Use it for
    Lightning checkpoints whose ``hyper_parameters`` matter; :func:`read_state_dict` for the weights alone.

    Raises:
        MissingAssetError: no such file (the message names ``config_key``).
        AssetFormatError: not loadable with ``weights_only=True``, or not a dict.
    """
    file = require_file(path, what=what, config_key=config_key, family="weights")
    source = f"{file} (set by {config_key})" if config_key else str(file)
    try:
        try:
            raw = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # torch's legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            raw = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise AssetFormatError(f"{source}: not a weights file torch can load with weights_only=True ({err})") from err
    if not isinstance(raw, dict):
        raise AssetFormatError(f"{source}: expected a checkpoint or state dict, got {type(raw).__name__}")
    return raw


def read_state_dict(path: str | os.PathLike, *, what: str, config_key: str | None = None) -> dict[str, Tensor]:
    """A state dict from a local ``.pt/.pth/.ckpt`` (``torch.load(weights_only=True)``) or ``.safetensors`` file.

    Checkpoints that nest the weights one level down (``state_dict`` of Lightning, ``model``) are unwrapped.

    Args:
        path: the weights file. what: a human description for errors. config_key: the argument holding ``path``.

    Raises:
        MissingAssetError: no such file (the message names ``config_key``).
        AssetFormatError: not a readable weights file, or not a name -> tensor mapping.
    """
    file = require_file(path, what=what, config_key=config_key, family="weights")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    state = read_checkpoint(file, what=what, config_key=config_key)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise AssetFormatError(f"{file}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return state


def load_state_dict_strict(module: nn.Module, state: dict[str, Tensor], source: str | Path, hint: str = "") -> None:
    """``module.load_state_dict(state, strict=True)`` after checking names and shapes, with an error that lists
    the missing, unexpected and mis-shaped keys (and ``hint``, e.g. which config key set the file)."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise AssetFormatError(f"{source} does not fit {type(module).__name__}: {len(missing)} missing keys "
                               f"{missing[:8]}, {len(unexpected)} unexpected keys {unexpected[:8]}, "
                               f"{len(wrong)} shape mismatches {wrong[:8]}" + (f" ({hint})" if hint else ""))
    module.load_state_dict(state, strict=True)
