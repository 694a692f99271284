"""dnpm in the ``facelab`` commands: the :class:`facelab.methods.Method` its entry point names.

``pyproject.toml`` declares ``dnpm = "dnpm:method"`` in the ``facelab.methods`` entry-point group.
This module only describes: networks and checkpoints are imported by the functions it names when a command runs them.

* ``facelab reconstruct --method dnpm --ckpt RESTORE_CKPT --input PHOTOS --out DIR [--regressor-ckpt REG_CKPT]
  [--restore encoder|projector] [--degrade]``: :mod:`dnpm.reconstruct` (§IV-B: bilinear landmark fit, the regressor's
  ``I_low``, E_deg's ``I_gen`` or the projector baseline; proxy / detailed OBJ, 16-bit PNG + .npy maps, overlay).
* ``facelab detail --method dnpm --ckpt CKPT --id ID.npy|random --exp EXP.npy|PRESET|random --out DIR``:
  :mod:`dnpm.detail` (displacement map as 16-bit PNG + float .npy, detailed and proxy OBJ, side-by-side render).
* ``facelab prepare --method dnpm ...``: :mod:`dnpm.prepare` (the FaceScape displacement-map cache).
* ``facelab bench dnpm``: :mod:`dnpm.bench` (G / D training throughput, grouped vs per-sample modulated conv).
* ``facelab animate --method dnpm --ckpt SPEECH_CKPT [--detail-ckpt D3_CKPT] --audio WAV --id ID.npy|random --out DIR``:
  :mod:`dnpm.animate` (speech-driven animation); ``facelab bench dnpm-speech``: :mod:`dnpm.bench_speech`.
"""

from __future__ import annotations

import argparse

from facelab.methods import ActionEntry, Benchmark, Method, ReconstructEntry

__all__ = ["method"]


def _reconstruct_arguments(parser: argparse.ArgumentParser) -> None:
    from dnpm.reconstruct import add_arguments

    add_arguments(parser)


def _reconstructor(ckpt: str, *, model_path: str | None = None, device: str = "cpu",
                   options: argparse.Namespace | None = None, config_key: str = "--ckpt"):
    from dnpm.reconstruct import DnpmReconstructor

    return DnpmReconstructor.from_checkpoint(ckpt, model_path=model_path, device=device, options=options,
                                             config_key=config_key)


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
    reconstruct=ReconstructEntry(
        # crop_scale 2: the regressor's renders frame the whole bilinear head, about twice its landmark box
        from_checkpoint=_reconstructor, add_arguments=_reconstruct_arguments, crop_scale=2.0, crop="landmarks",
        checkpoint_help="a RestoreModule checkpoint (configs/dnpm_restore.yaml; one trained with input: photos "
                        "carries its regressor, one trained on maps needs --regressor-ckpt); the bilinear model "
                        "defaults to the regressor's model_path"),
    benchmarks={"dnpm": Benchmark("dnpm.bench", "DNPM G / D forward+backward kimg/s at the CPU default resolution "
                                                "and 256^2; grouped-conv vs per-sample modulated convolution"),
                "dnpm-speech": Benchmark("dnpm.bench_speech", "speech -> ARKit inference real-time factor (goal >= 20x "
                                                              "on CPU at 30 fps) and peak memory of a 10-min clip")},
    configs={"gan": "configs/dnpm.yaml", "gan_1024": "configs/dnpm_1024.yaml",
             "detailed3dmm": "configs/dnpm_detailed3dmm.yaml", "speech": "configs/dnpm_speech.yaml",
             "restore": "configs/dnpm_restore.yaml", "restore_psp": "configs/dnpm_restore_psp.yaml",
             "regressor": "configs/dnpm_regressor.yaml"},
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
