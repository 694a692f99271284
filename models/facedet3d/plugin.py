"""facedet3d in the ``facelab`` commands: the :class:`facelab.methods.Method` its entry point names.

``pyproject.toml`` declares ``facedet3d = "facedet3d:method"`` in the ``facelab.methods`` entry-point group.
This module only describes: networks and checkpoints are imported by the functions it names when a command runs them.

* ``facelab animate --method facedet3d --deth CKPT --render CKPT [--rcan CKPT] --input PHOTO_OR_DIR --au happy``:
  :mod:`facedet3d.animate` (hallucinated detail maps, detailed meshes, shading, neural renders, Fig. 4/5 grids).
* ``facelab prepare --method facedet3d ...``: :mod:`facedet3d.prepare` (the Eq. 1 inputs cache of photos / FDS maps).
* ``facelab evaluate --method facedet3d --ckpt RENDER_CKPT [--deth CKPT]``: :mod:`facedet3d.evaluate` (FID and FaceID
  distance across expression edits, Tables 1-2; the AugW detail probe, Fig. 8), each beside its baselines.
* ``facelab bench facedet3d``: :mod:`facedet3d.bench` (DetH and R training-step splits, RCAN tiles/s).
"""

from __future__ import annotations

import argparse

from facelab.methods import ActionEntry, Benchmark, EvaluateEntry, EvaluateRequest, Method

__all__ = ["method"]


def _animate_arguments(parser: argparse.ArgumentParser) -> None:
    from facedet3d.animate import add_arguments

    add_arguments(parser)


def _animate(options: argparse.Namespace) -> int | None:
    from facedet3d.animate import run

    return run(options)


def _prepare_arguments(parser: argparse.ArgumentParser) -> None:
    from facedet3d.prepare import add_arguments

    add_arguments(parser)


def _prepare(options: argparse.Namespace) -> int | None:
    from facedet3d.prepare import run

    return run(options)


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from facedet3d.evaluate import add_arguments

    add_arguments(parser)


def _evaluate(request: EvaluateRequest, options: argparse.Namespace):
    from facedet3d.evaluate import evaluate

    return evaluate(request, options)


#: FaceDet3D as the ``facelab`` commands see it.
method = Method(
    name="facedet3d",
    description=("FaceDet3D (Ling et al. 2022): AU-conditioned wrinkle hallucination, RCAN and a two-branch neural "
                 "renderer"),
    family="bfm",
    evaluate=EvaluateEntry(run=_evaluate, add_arguments=_evaluate_arguments, data=("synthetic", "folder"),
                           supports_init=True),
    benchmarks={"facedet3d": Benchmark("facedet3d.bench", "FaceDet3D DetH and R training-step splits (encoders / "
                                                          "decoder / discriminators / UV raster x2 / NTex / Tex2Im "
                                                          "/ losses / backward) and RCAN tiles/s with peak memory")},
    configs={"deth": "configs/facedet3d_deth.yaml", "rcan": "configs/facedet3d_rcan.yaml",
             "regressor": "configs/facedet3d_regressor.yaml", "render": "configs/facedet3d_render.yaml"},
    actions={"animate": ActionEntry(run=_animate, add_arguments=_animate_arguments,
                                    help="hallucinate detail for target expressions (emotion presets or AU vectors) "
                                         "and render them: maps, detailed meshes, shading, renders, grids"),
             "prepare": ActionEntry(run=_prepare, add_arguments=_prepare_arguments,
                                    help="build FaceDet3D's training inputs (Eq. 1) from photos and optional FDS "
                                         "detail maps: resumable cache with a report of skipped files")},
)
