"""``facelab bench NAME [options]``: run a benchmark module, print its table, write CSV.

A benchmark module exposes ``add_arguments(parser)`` (its options) and ``run(args) -> list[BenchRow]``
(``args`` also carries ``--device`` and ``--csv``), and optionally ``report(rows)``, called after the table (e.g.
to print goals with pass/fail). The core library's benchmarks live in ``facelab.bench``; a method's live beside it
(``models/<method>/bench.py``) and are named here by their import path, imported only when run.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: the module implementing it and a one-line description."""

    module: str
    description: str


#: Benchmarks available as ``facelab bench NAME``.
BENCHMARKS = {
    "flame": Benchmark("facelab.bench.flame",
                       "FLAME forward: facelab LBS vs an SMPL-X-style reference (B = 1, 32, 256)"),
    "raster": Benchmark("facelab.bench.raster",
                        "rasterize + interpolate + shade a full-size FLAME at 224^2, forward and backward"),
    "data": Benchmark("facelab.bench.data",
                      "synthetic face world throughput through a DataLoader (224^2, num_workers 0 and 2)"),
    "smirk": Benchmark("smirk.bench",
                       "SMIRK training-step time split (B = 8, 224^2) and inference images/s, encoders vs the whole "
                       "reconstruction (B = 1, 32)"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="speed/memory benchmarks (`facelab bench NAME --help`)",
                            description="\n".join(f"{k}: {v.description}" for k, v in BENCHMARKS.items()),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(BENCHMARKS), metavar="NAME", help=" | ".join(sorted(BENCHMARKS)))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of that benchmark")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from facelab.bench.common import print_table, write_csv

    bench = BENCHMARKS[args.name]
    module = importlib.import_module(bench.module)
    parser = argparse.ArgumentParser(prog=f"facelab bench {args.name}", description=bench.description)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--csv", type=Path, default=Path("bench_results") / f"{args.name}.csv", help="CSV output")
    module.add_arguments(parser)
    bench_args = parser.parse_args(args.options)
    rows = module.run(bench_args)
    print_table(rows, title=f"facelab bench {args.name}")
    if hasattr(module, "report"):
        module.report(rows)
    print(f"\nwrote {write_csv(rows, bench_args.csv)}")
    return 0
