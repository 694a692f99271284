"""``facelab assets``: generate the synthetic stand-ins and inspect asset files."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("assets", help="generate synthetic stand-ins, inspect model files")
    asub = parser.add_subparsers(dest="assets_command", required=True, metavar="ACTION")
    syn = asub.add_parser("synthetic", help="write a procedural stand-in in the official file formats")
    syn.add_argument("--family", required=True, choices=["flame", "bfm", "bilinear"])
    syn.add_argument("--out", required=True, type=Path, help="output folder")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--size", choices=["full", "tiny"], default="full")
    syn.set_defaults(func=_synthetic)
    info = asub.add_parser("info", help="load a model (flame|bfm|bilinear|ict) and print its counts")
    info.add_argument("family", choices=["flame", "bfm", "bilinear", "ict"])
    info.add_argument("path", help="model file or folder, or 'synthetic'")
    info.set_defaults(func=_info)


def _synthetic(args: argparse.Namespace) -> int:
    from facelab.morphable.synthetic import generate_synthetic

    out = generate_synthetic(args.family, args.out, seed=args.seed, size=args.size)
    for p in sorted(Path(out).iterdir()):
        print(f"{p}  ({p.stat().st_size / 2**20:.2f} MiB)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from facelab.morphable import load_model

    model = load_model(args.family, args.path)
    print(f"{type(model).__name__}: {model.num_verts} vertices, {model.num_faces} faces, "
          f"{len(model.uv)} uv coordinates, units {model.units}")
    for name, ids in model.regions.items():
        print(f"  region {name}: {len(ids)} vertices")
    return 0
