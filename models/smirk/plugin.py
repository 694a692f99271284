"""SMIRK in the ``facelab`` commands: the :class:`facelab.methods.Method` its entry point names.

``pyproject.toml`` declares ``smirk = "smirk:method"`` in the ``facelab.methods`` entry-point group. This module
only describes: the networks, FLAME and checkpoints are imported by the functions below when a command runs them.

* ``facelab reconstruct --method smirk --ckpt CKPT ... [--translator]``: :class:`smirk.inference.SmirkReconstructor`
  from a checkpoint of either phase (or a bare encoder state dict); ``--translator`` also writes the translator's
  reconstruction (core-phase checkpoints).
* ``facelab evaluate --method smirk --ckpt CKPT [--probe-faces N] [--probe-copies K]``: :mod:`smirk.evaluate`
  (landmark NME, expression errors, supplementary Table 2 vertex errors, the Table 4 expression-change probe), each
  beside its trivial baselines (zero expression, train-set mean expression, mean landmarks); with ``--data DIR``
  (photos or a preprocess cache) :mod:`smirk.evaluate_real` (NME vs mediapipe, the translator's L1/VGG).
* ``facelab bench smirk``: :mod:`smirk.bench`.
* ``facelab prepare --method smirk --fits DIR --out templates.npz``: :mod:`smirk.prepare`, expression templates
  from real FLAME fits.
"""

from __future__ import annotations

import argparse

from facelab.methods import ActionEntry, Benchmark, EvaluateEntry, EvaluateRequest, Method, ReconstructEntry

__all__ = ["method"]


def _reconstruct_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--translator", action="store_true",
                        help="also write the translator's reconstruction of each crop (core-phase checkpoints)")


def _reconstructor(ckpt: str, *, model_path: str | None = None, device: str = "cpu",
                   options: argparse.Namespace | None = None, config_key: str = "--ckpt"):
    from smirk.inference import SmirkReconstructor

    translate = bool(getattr(options, "translator", False))
    return SmirkReconstructor.from_checkpoint(ckpt, flame_path=model_path, translate=translate, device=device,
                                              config_key=config_key)


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probe-faces", type=int, default=32,
                        help="faces in the expression-change probe, supplementary Table 4 (0 skips it)")
    parser.add_argument("--probe-copies", type=int, default=8, help="tweaked copies per probed face (>= 2)")
    parser.add_argument("--baseline-samples", type=int, default=256,
                        help="train faces the trivial baselines (mean expression, mean landmarks) average (0: none)")
    parser.add_argument("--vgg-weights", default=None,
                        help="--data DIR: torchvision VGG16 state dict for the translator's VGG column")
    parser.add_argument("--cache", default=None,
                        help="--data DIR of photos: where to keep their facelab preprocess cache (default: temporary)")


def _evaluate(request: EvaluateRequest, options: argparse.Namespace):
    from smirk.evaluate import ExpressionTweak, evaluate_checkpoint

    if request.data != "synthetic":  # a folder of the user's photos (or a preprocess cache)
        from smirk.evaluate_real import evaluate_folder

        if request.ckpt is None:
            raise ValueError("--data DIR evaluates a trained checkpoint: give --ckpt (--init is a synthetic baseline)")
        return evaluate_folder(request.ckpt, request.data, num_images=request.num_images,
                               batch_size=request.batch_size, device=request.device, vgg_weights=options.vgg_weights,
                               cache=options.cache)
    if options.probe_faces < 0:
        raise ValueError(f"--probe-faces must be >= 0, got {options.probe_faces}")
    if options.probe_copies < 2:
        raise ValueError(f"--probe-copies must be >= 2, got {options.probe_copies}")
    return evaluate_checkpoint(request.ckpt, num_images=request.num_images, image_size=request.image_size,
                               batch_size=request.batch_size, device=request.device, probe_faces=options.probe_faces,
                               tweak=ExpressionTweak(num_copies=options.probe_copies), seed=request.seed,
                               baseline_samples=options.baseline_samples)


def _prepare_arguments(parser: argparse.ArgumentParser) -> None:
    from smirk.prepare import add_arguments

    add_arguments(parser)


def _prepare(options: argparse.Namespace) -> int:
    from smirk.prepare import run

    return run(options)


#: SMIRK as the ``facelab`` commands see it.
method = Method(
    name="smirk",
    description="SMIRK (Retsinas et al., CVPR 2024): FLAME expressions by analysis-by-neural-synthesis",
    family="flame",
    reconstruct=ReconstructEntry(
        from_checkpoint=_reconstructor, add_arguments=_reconstruct_arguments, crop_scale=1.6, crop="landmarks",
        checkpoint_help="a SmirkModule checkpoint of either phase (pretraining or core), or a bare SmirkEncoder "
                        "state dict; FLAME defaults to the checkpoint's flame_path"),
    evaluate=EvaluateEntry(run=_evaluate, add_arguments=_evaluate_arguments, data=("synthetic", "folder"),
                           supports_init=True),
    benchmarks={"smirk": Benchmark("smirk.bench", "SMIRK training-step time split (B = 8, 224^2) and inference "
                                                  "images/s, encoders vs the whole reconstruction (B = 1, 32)")},
    configs={"pretrain": "configs/smirk_pretrain.yaml", "core": "configs/smirk.yaml",
             "quickstart": "configs/smirk_quickstart.yaml", "synthetic": "configs/smirk_synthetic.yaml",
             "learning": "configs/smirk_learning.yaml", "gpu": "configs/smirk_gpu.yaml"},
    actions={"prepare": ActionEntry(run=_prepare, add_arguments=_prepare_arguments,
                                    help="build the expression-template file (templates_path) from real FLAME fits "
                                         "(`facelab fit --model flame` output folders, one per class)")},
)
