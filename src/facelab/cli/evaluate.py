"""``facelab evaluate``: evaluate a trained method on held-out data, print a table, optionally write JSON.

    facelab evaluate --method smirk --ckpt CKPT --data synthetic [--num 256] [--json OUT]
    facelab evaluate --method smirk --init --data synthetic --image-size 64     # the "from initialization" baseline

Methods are looked up lazily by name (the core library never imports ``models/``): ``METHODS[name]`` is a module
with ``evaluate_checkpoint(ckpt, *, num_images, image_size, batch_size, device, probe_faces, tweak, seed)``
returning an object with ``format_table()`` and ``write_json(path)`` (e.g. :mod:`smirk.evaluate`).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

#: ``--method`` name -> module providing ``evaluate_checkpoint`` (and the probe settings class ``ExpressionTweak``).
METHODS = {"smirk": "smirk.evaluate"}
#: ``--data`` choices: the held-out split of the synthetic face world (ground truth known).
DATA = ("synthetic",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="evaluate a checkpoint (or an initialization) on held-out data",
                            description="Evaluate a trained method (or an initialization) on held-out data: "
                                        "print a table, optionally write JSON.")
    parser.add_argument("--method", choices=sorted(METHODS), default="smirk", help="the method (default: smirk)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=str, help="a Lightning checkpoint of the method (either SMIRK phase)")
    source.add_argument("--init", action="store_true", help="randomly initialized encoders (baseline)")
    parser.add_argument("--data", choices=DATA, default="synthetic", help="held-out data (default: synthetic)")
    parser.add_argument("--num", type=int, default=256, help="held-out images (default: 256)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="crop side; default: the checkpoint's (224 for --init)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    parser.add_argument("--seed", type=int, default=None,
                        help="data seed (default: the checkpoint's datamodule seed, else 0); also seeds --init")
    parser.add_argument("--probe-faces", type=int, default=32,
                        help="faces in the expression-change probe, supplementary Table 4 (0 skips it; default 32)")
    parser.add_argument("--probe-copies", type=int, default=8, help="tweaked copies per probed face (default: 8)")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON to this file")
    parser.set_defaults(func=_run)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return name


def _run(args: argparse.Namespace) -> int:
    for flag, value in (("--num", args.num), ("--batch-size", args.batch_size), ("--probe-copies", args.probe_copies)):
        if value < 1 or (flag == "--probe-copies" and value < 2):
            raise ValueError(f"{flag} must be >= {2 if flag == '--probe-copies' else 1}, got {value}")
    if args.probe_faces < 0:
        raise ValueError(f"--probe-faces must be >= 0, got {args.probe_faces}")
    method = importlib.import_module(METHODS[args.method])
    result = method.evaluate_checkpoint(
        None if args.init else args.ckpt, num_images=args.num, image_size=args.image_size,
        batch_size=args.batch_size, device=_device(args.device), probe_faces=args.probe_faces,
        tweak=method.ExpressionTweak(num_copies=args.probe_copies), seed=args.seed)
    print(result.format_table())
    if args.json is not None:
        print(f"\nwrote {result.write_json(args.json)}")
    return 0
