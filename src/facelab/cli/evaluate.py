"""``facelab evaluate``: evaluate a trained method on held-out data, print a table, optionally write JSON.

    facelab evaluate --method NAME --ckpt CKPT --data synthetic [--num 256] [--json OUT] [method options]
    facelab evaluate --method NAME --init --data synthetic --image-size 64     # the "from initialization" baseline

Methods plug in through :mod:`facelab.methods` (the core never imports ``models/``): the method's
:class:`~facelab.methods.EvaluateEntry` receives the common settings as an :class:`~facelab.methods.EvaluateRequest`
and its own options (``facelab methods NAME`` lists them), and returns an object with ``format_table()`` and
``write_json(path)`` (such as SMIRK's Table 2 / Table 4 evaluation).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from facelab.methods import EvaluateRequest, parse_method_options, resolve_method


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="evaluate a checkpoint (or an initialization) on held-out data",
                            description="Evaluate a trained method (or an initialization) on held-out data: "
                                        "print a table, optionally write JSON.",
                            epilog="A method's own options follow these (`facelab methods NAME` lists them).",
                            allow_abbrev=False)
    parser.add_argument("--method", default=None,
                        help="an installed method (`facelab methods` lists them); default: the only one installed")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=str, help="a checkpoint of the method")
    source.add_argument("--init", action="store_true", help="the method's random initialization (a baseline)")
    parser.add_argument("--data", default="synthetic",
                        help="held-out data: synthetic (the synthetic face world's test split, ground truth known; "
                             "the default) or, for methods that evaluate folders, a folder of photos / a facelab "
                             "preprocess cache")
    parser.add_argument("--num", type=int, default=256, help="held-out images (default: 256)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="crop side; default: the checkpoint's (the method's for --init)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    parser.add_argument("--seed", type=int, default=None,
                        help="data seed (default: the checkpoint's datamodule seed, else 0); also seeds --init")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON to this file")
    parser.set_defaults(func=_run, takes_method_options=True)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return name


def _run(args: argparse.Namespace) -> int:
    method = resolve_method(args.method, "evaluate")
    entry = method.evaluate
    options = parse_method_options(method, "evaluate", entry.add_arguments, list(getattr(args, "method_options", [])))
    for flag, value in (("--num", args.num), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    folder = args.data not in entry.data and "folder" in entry.data
    if folder and not Path(args.data).expanduser().is_dir():
        named = ", ".join(d for d in entry.data if d != "folder")
        raise ValueError(f"--data {args.data}: not a folder, nor one of {named}")
    if args.data not in entry.data and not folder:
        raise ValueError(f"--data {args.data}: {method.name} evaluates on {', '.join(entry.data)}")
    if args.init and not entry.supports_init:
        raise ValueError(f"--init: {method.name} has no random-initialization baseline; give --ckpt")
    request = EvaluateRequest(ckpt=None if args.init else args.ckpt, data=args.data, num_images=args.num,
                              image_size=args.image_size, batch_size=args.batch_size, device=_device(args.device),
                              seed=args.seed)
    result = entry.run(request, options)
    print(result.format_table())
    if args.json is not None:
        print(f"\nwrote {result.write_json(args.json)}")
    return 0
