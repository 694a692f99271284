"""``facelab bench [NAME] [options]``: run a benchmark module, print its table, write CSV.

A benchmark (:class:`facelab.methods.Benchmark`) names a module exposing ``add_arguments(parser)`` (its options)
and ``run(args) -> list[BenchRow]`` (``args`` also carries ``--device`` and ``--csv``), and optionally
``report(rows)``, called after the table (e.g. to print goals with pass/fail). The core library's benchmarks are
:data:`BENCHMARKS` (modules in ``facelab.bench``); each installed method adds its own
(:attr:`facelab.methods.Method.benchmarks`), imported only when run. ``facelab bench`` without a name lists them all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from facelab.methods import Benchmark, load_methods

__all__ = ["BENCHMARKS", "Benchmark", "add_parser", "all_benchmarks"]

#: The core library's benchmarks, available as ``facelab bench NAME``.
BENCHMARKS = {
    "flame": Benchmark("facelab.bench.flame",
                       "FLAME forward: facelab LBS vs an SMPL-X-style reference (B = 1, 32, 256)"),
    "raster": Benchmark("facelab.bench.raster",
                        "rasterize + interpolate + shade a full-size FLAME at 224^2, forward and backward"),
    "data": Benchmark("facelab.bench.data",
                      "synthetic face world throughput through a DataLoader (224^2, num_workers 0 and 2)"),
    "fit": Benchmark("facelab.bench.fit",
                     "3DMM fitting faces/s: one by one (B = 1) vs batched (B = 32), same iterations"),
}


def all_benchmarks() -> tuple[dict[str, tuple[str, Benchmark]], dict[str, str]]:
    """The core's benchmarks and every installed method's.

    Returns:
        ``(benchmarks, failures)``: name -> (``"core"`` or the method's name, :class:`Benchmark`), sorted by name,
        and method name -> why it did not load (its benchmarks are then missing).

    Raises:
        ValueError: two sources register one benchmark name.
    """
    found = {name: ("core", bench) for name, bench in BENCHMARKS.items()}
    methods, failures = load_methods()
    for method in methods.values():
        for name, bench in method.benchmarks.items():
            if name in found:
                raise ValueError(f"benchmark '{name}' is registered by both {found[name][0]} and {method.name}")
            found[name] = (method.name, bench)
    return dict(sorted(found.items())), failures


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="speed/memory benchmarks (`facelab bench` lists them)",
                            description="Run a benchmark: `facelab bench` lists the core's and the installed "
                                        "methods' benchmarks, `facelab bench NAME --help` shows its options.\n\n"
                                        + "\n".join(f"{k}: {v.description}" for k, v in BENCHMARKS.items()),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", default=None, metavar="NAME", help="the benchmark; omit to list them")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of that benchmark")
    parser.set_defaults(func=_run)


def format_listing(benchmarks: dict[str, tuple[str, Benchmark]], failures: dict[str, str]) -> str:
    """The ``facelab bench`` listing: name, source (core or method) and description of each benchmark."""
    width = max(map(len, benchmarks), default=4)
    lines = ["benchmarks (facelab bench NAME [--help]):"]
    lines += [f"  {name:<{width}}  [{source}] {bench.description}" for name, (source, bench) in benchmarks.items()]
    lines += [f"  (method {name} did not load: {why})" for name, why in failures.items()]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from facelab.bench.common import print_table, write_csv

    benchmarks, failures = all_benchmarks()
    if args.name is None:
        print(format_listing(benchmarks, failures))
        return 0
    if args.name not in benchmarks:
        broken = "".join(f"; method {name} did not load: {why}" for name, why in failures.items())
        raise ValueError(f"unknown benchmark '{args.name}'; available: {', '.join(benchmarks)}{broken}")
    bench = benchmarks[args.name][1]
    module = bench.load()
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
