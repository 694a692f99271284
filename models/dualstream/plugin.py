"""dualstream in the ``facelab`` commands: the :class:`facelab.methods.Method` its entry point names.

``pyproject.toml`` declares ``dualstream = "dualstream:method"`` in the ``facelab.methods`` entry-point group.
This module only describes: the networks, the BFM and checkpoints are imported by the functions below when a
command runs them.

* Training, three stages (paper §IV-B), each a ``lightning-cli fit`` config; a later stage starts from the previous
  stage's checkpoint (``--model.init_args.init_ckpt PATH``): ``geometry`` -> ``texture`` -> ``end_to_end``.
* ``facelab reconstruct --method dualstream --ckpt CKPT --input PHOTOS --out DIR``:
  :class:`dualstream.inference.DualStreamReconstructor` from a texture- or end-to-end-stage checkpoint (textured
  full and identity-only meshes, both ASMs as ``.npy`` and images, parameters, overlay).
* ``facelab evaluate --method dualstream``: :mod:`dualstream.evaluate` (AFLW2000-3D NME, MICC-style
  point-to-plane, texture MAE, each beside its baselines).
* ``facelab bench dualstream``: :mod:`dualstream.bench`.
"""

from __future__ import annotations

import argparse

from facelab.methods import Benchmark, EvaluateEntry, EvaluateRequest, Method, ReconstructEntry

__all__ = ["method"]


def _reconstructor(ckpt: str, *, model_path: str | None = None, device: str = "cpu",
                   options: argparse.Namespace | None = None, config_key: str = "--ckpt"):
    from dualstream.inference import DualStreamReconstructor

    return DualStreamReconstructor.from_checkpoint(ckpt, model_path=model_path, device=device, config_key=config_key)


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from dualstream.evaluate import evaluate_entry

    if evaluate_entry.add_arguments is not None:
        evaluate_entry.add_arguments(parser)


def _evaluate(request: EvaluateRequest, options: argparse.Namespace):
    from dualstream.evaluate import evaluate_entry

    return evaluate_entry.run(request, options)


#: DualStream as the ``facelab`` commands see it.
method = Method(
    name="dualstream",
    description=("Dual-Stream (IEEE TMM 2021): expression-aware identity/expression attribute maps in UV + "
                 "region-adaptive texture stylization (SSRPM + SRSM), fused through the renderer"),
    family="bfm",
    reconstruct=ReconstructEntry(
        from_checkpoint=_reconstructor, crop_scale=1.6, crop="landmarks",
        checkpoint_help="a DualStream checkpoint of the texture stage (it carries the geometry stream) or of the "
                        "end-to-end stage; the BFM defaults to the checkpoint's model_path"),
    evaluate=EvaluateEntry(run=_evaluate, add_arguments=_evaluate_arguments, data=("synthetic", "aflw2000", "micc"),
                           supports_init=True),
    benchmarks={"dualstream": Benchmark("dualstream.bench", "DualStream training-step split per stage (B = 8, "
                                                            "256^2) and inference images/s, bare encoder vs the "
                                                            "whole reconstruction (B = 1, 32)")},
    configs={"geometry": "configs/dualstream_geometry.yaml", "texture": "configs/dualstream_texture.yaml",
             "end_to_end": "configs/dualstream.yaml"},
)
