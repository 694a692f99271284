"""``facelab bench NAME [options]``: run benchmark module ``facelab.bench.NAME``, print its table, write CSV."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

#: Benchmarks available as ``facelab bench NAME``: module ``facelab.bench.NAME`` with add_arguments/run.
BENCHMARKS = {
    "flame": "FLAME forward: facelab LBS vs an SMPL-X-style reference (B = 1, 32, 256)",
    "raster": "rasterize + interpolate + shade a full-size FLAME at 224^2, forward and backward",
    "data": "synthetic face world throughput through a DataLoader (224^2, num_workers 0 and 2)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="speed/memory benchmarks (`facelab bench NAME --help`)",
                            description="\n".join(f"{k}: {v}" for k, v in BENCHMARKS.items()),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(BENCHMARKS), metavar="NAME", help=" | ".join(sorted(BENCHMARKS)))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of that benchmark")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from facelab.bench.common import print_table, write_csv

    module = importlib.import_module(f"facelab.bench.{args.name}")
    parser = argparse.ArgumentParser(prog=f"facelab bench {args.name}", description=BENCHMARKS[args.name])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--csv", type=Path, default=Path("bench_results") / f"{args.name}.csv", help="CSV output")
    module.add_arguments(parser)
    bench_args = parser.parse_args(args.options)
    rows = module.run(bench_args)
    print_table(rows, title=f"facelab bench {args.name}")
    print(f"\nwrote {write_csv(rows, bench_args.csv)}")
    return 0
