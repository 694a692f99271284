"""dnpm in the ``facelab`` commands: the :class:`facelab.methods.Method` its entry point names.

``pyproject.toml`` declares ``dnpm = "dnpm:method"`` in the ``facelab.methods`` entry-point group.
This module only describes: networks and checkpoints are imported by the functions it names when a command runs them.

* ``facelab detail --method dnpm --ckpt CKPT --id ID.npy|random --exp EXP.npy|PRESET|random --out DIR``:
  :mod:`dnpm.detail` (displacement map as 16-bit PNG + float .npy, detailed and proxy OBJ, side-by-side render).
* ``facelab prepare --method dnpm ...``: :mod:`dnpm.prepare` (the FaceScape displacement-map cache).
* ``facelab bench dnpm``: :mod:`dnpm.bench` (G / D training throughput, grouped vs per-sample modulated conv).
* ``facelab animate --method dnpm --ckpt SPEECH_CKPT [--detail-ckpt D3_CKPT] --audio WAV --id ID.npy|random --out DIR``:
  :mod:`dnpm.animate` (speech-driven animation); ``facelab bench dnpm-speech``: :mod:`dnpm.bench_speech`.
"""

from __future__ import annotations

import argparse

from facelab.methods import ActionEntry, Benchmark, Method

__all__ = ["method"]


def _detail_arguments(parser: argparse.ArgumentParser) -> None:
    from dnpm.detail import add_arguments

    add_arguments(parser)


def _detail(options: argparse.Namespace) -> int:
    from dnpm.detail import run

    return run(options)


def _prepare_arguments(parser: argparse.ArgumentParser) -> None:
    from dnpm.prepare import add_arguments

    add_arguments(parser)


def _prepare(options: argparse.Namespace) -> int:
    from dnpm.prepare import run

    return run(options)


def _animate_arguments(parser: argparse.ArgumentParser) -> None:
    from dnpm.animate import add_arguments

    add_arguments(parser)


def _animate(options: argparse.Namespace) -> int:
    from dnpm.animate import run

    return run(options)


#: DNPM as the ``facelab`` commands see it.
method = Method(
    name="dnpm",
    description="DNPM / Detailed3DMM: StyleGAN2 over displacement maps, (identity, expression) -> detail",
    family="bilinear",
    benchmarks={"dnpm": Benchmark("dnpm.bench", "DNPM G / D forward+backward kimg/s at the CPU default resolution "
                                                "and 256^2; grouped-conv vs per-sample modulated convolution"),
                "dnpm-speech": Benchmark("dnpm.bench_speech", "speech -> ARKit inference real-time factor (goal >= 20x "
                                                              "on CPU at 30 fps) and peak memory of a 10-min clip")},
    configs={"gan": "configs/dnpm.yaml", "gan_1024": "configs/dnpm_1024.yaml",
             "detailed3dmm": "configs/dnpm_detailed3dmm.yaml", "speech": "configs/dnpm_speech.yaml",
             "restore": "configs/dnpm_restore.yaml", "regressor": "configs/dnpm_regressor.yaml"},
    actions={
        "detail": ActionEntry(run=_detail, add_arguments=_detail_arguments,
                              help="displacement map + detailed mesh from (identity, expression) with a Detailed3DMM "
                                   "checkpoint"),
        "animate": ActionEntry(run=_animate, add_arguments=_animate_arguments,
                               help="speech WAV -> per-frame ARKit (Live Link CSV + .npy), proxy / detailed meshes and "
                                    "an MP4 with the audio, with a speech checkpoint (+ a Detailed3DMM one)"),
        "prepare": ActionEntry(run=_prepare, add_arguments=_prepare_arguments,
                               help="FaceScape displacement maps -> a float training cache (resumable, report of "
                                    "skipped files)"),
    },
)
