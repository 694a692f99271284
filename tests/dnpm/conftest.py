"""Shared pieces of the DNPM tests: one intra-op thread for tiny networks (``pytestmark =
pytest.mark.usefixtures("one_thread")``, or ``"one_thread_module"`` to cover module-scoped fixtures too), tiny
checkpoints (the DNPM generator, the regressor's settings) and ``lightning-cli fit`` in a subprocess
(:func:`lightning_fit`, with the one-run-folder check of the DDP tests)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
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
        d_channels=8,
        d_layers=2,
        num_d=2,
    )


REPO = Path(__file__).resolve().parents[2]


def _lightning_fit(*args: str, cwd: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).parent / "lightning-cli"
    env = {k: v for k, v in os.environ.items() if k != "FACELAB_LOG_LEVEL"} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([str(cli), "fit", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _single_run(proc: subprocess.CompletedProcess, logs: Path) -> Path:
    """Assert the run succeeded and wrote one run folder with one event file (rank 0 alone writes under DDP);
    returns its ``last.ckpt``."""
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    runs = list(logs.glob("version_*"))
    assert len(runs) == 1, runs
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1, list(runs[0].iterdir())
    ckpts = list(runs[0].rglob("last.ckpt"))
    assert len(ckpts) == 1, ckpts
    return ckpts[0]


@pytest.fixture(scope="session")
def lightning_fit():
    """``fit(*args, cwd, timeout=1200) -> CompletedProcess``: ``lightning-cli fit ARGS`` in a subprocess (one
    intra-op thread per process, the user's log level)."""
    return _lightning_fit


@pytest.fixture(scope="session")
def single_run():
    """``check(proc, logs_dir) -> last.ckpt``: the run succeeded and wrote one run folder with one event file and
    one ``last.ckpt`` (no per-rank duplicates under DDP)."""
    return _single_run
