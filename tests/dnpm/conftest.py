"""Shared pieces of the DNPM tests: one intra-op thread for tiny networks (``pytestmark =
pytest.mark.usefixtures("one_thread")``, or ``"one_thread_module"`` to cover module-scoped fixtures too) and tiny
checkpoints (the DNPM generator, the regressor's settings)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

#: The tiny DNPM generator of the restoration / reconstruction tests (32^2 maps).
TINY_GENERATOR = dict(resolution=32, z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=16)


@contextlib.contextmanager
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """Tiny networks: one intra-op thread (two threads on a shared 2-core machine run ~20x slower)."""
    with _single_thread():
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """:func:`one_thread` for a whole module, its module-scoped fixtures included."""
    with _single_thread():
        yield


def _save(module, path: str | Path) -> str:
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return str(path)


def _gan_checkpoint(path: str | Path, resolution: int = 32) -> str:
    from dnpm.module import DnpmModule

    torch.manual_seed(0)
    module = DnpmModule(**{**TINY_GENERATOR, "resolution": resolution}, render_size=0)
    module.map_scale_mm.fill_(0.08)
    return _save(module, path)


@pytest.fixture(scope="session")
def save_checkpoint():
    """``save(module, path) -> str``: a Lightning-style checkpoint (``state_dict`` + ``hyper_parameters``)."""
    return _save


@pytest.fixture(scope="session")
def gan_checkpoint():
    """``make(path, resolution=32) -> str``: a tiny random DnpmModule checkpoint (0.08 mm per unit)."""
    return _gan_checkpoint


@pytest.fixture(scope="session")
def tiny_regressor_args() -> dict:
    """RegressorModule arguments of a tiny image -> UV regressor (64^2 renders, 32^2 maps, 16^2 + blur photos)."""
    from dnpm.restore_data import Degradation

    return dict(
        resolution=32,
        image_size=64,
        bump_gain=8.0,
        ngf=8,
        n_downsampling=2,
        n_blocks=1,
        max_channels=16,
        degradation=Degradation(size=16, blur_sigma=1.0),
        log_images_every_n_steps=0,
    )
