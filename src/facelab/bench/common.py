"""Timing, memory and reporting helpers shared by every benchmark."""

from __future__ import annotations

import csv
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass
class BenchRow:
    """One measured configuration. ``extra`` holds benchmark-specific columns (e.g. a speed-up)."""

    bench: str
    impl: str
    device: str
    batch: int
    ms: float
    items_per_s: float
    peak_mem_mb: float
    torch: str = torch.__version__
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device | str, warmup: int = 2, repeat: int = 10,
            min_time_s: float = 0.0) -> float:
    """Median wall time of ``fn()`` in milliseconds (after ``warmup`` calls), synchronizing CUDA around each call.

    Runs at least ``repeat`` times and, if ``min_time_s`` > 0, until that much time has been spent.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start) < min_time_s:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)



def interleaved_medians(fns: Sequence[Callable[[], object]], device: torch.device | str, warmup: int, repeat: int,
                        min_time_s: float = 0.0) -> list[float]:
    """Median ms of each function, timed round-robin (one call of each per repetition, so machine noise hits all
    sides alike), over at least ``repeat`` repetitions and at least ``min_time_s`` seconds."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < repeat or time.perf_counter() - start < min_time_s:
        for fn, record in zip(fns, times):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            record.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def print_goals(checks: Sequence[tuple[str, bool]]) -> bool:
    """Print ``(text, passed)`` goal lines as PASS/FAIL; True when all pass (or there are none)."""
    if checks:
        print("\ngoals")
    for text, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    return all(ok for _, ok in checks)

def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_mb(fn: Callable[[], object], device: torch.device | str) -> float:
    """Peak extra memory of one ``fn()`` call in MiB.

    CUDA: the caching allocator's peak above what was allocated before. CPU: the peak resident set size above
    the size before the call, sampled every 0.5 ms by a thread (Linux; large tensors are mmapped and returned
    to the system when freed, so RSS follows the allocator closely).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if not os.path.exists("/proc/self/statm"):
        return float("nan")
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], _rss_bytes()) / 2**20 - base / 2**20


def available_devices(requested: str = "auto") -> list[str]:
    """``["cpu"]`` plus ``"cuda"`` when a GPU is present (``requested``: auto | cpu | cuda)."""
    if requested == "auto":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return [requested]


def print_table(rows: Sequence[BenchRow], title: str = "") -> None:
    """Print rows as an aligned text table."""
    dicts = [r.as_dict() for r in rows]
    if not dicts:
        return
    cols = [c for c in dicts[0] if c != "torch"]
    cells = [[_fmt(d.get(c)) for c in cols] for d in dicts]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    if title:
        print(f"\n{title}  (torch {torch.__version__}, {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads)")
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def write_csv(rows: Sequence[BenchRow], path: str | os.PathLike) -> Path:
    """Write rows to a CSV file (replacing it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dicts = [r.as_dict() for r in rows]
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(dicts)
    return path


def proc_status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``: resident now, ``VmHWM``: peak resident).

    Raises:
        OSError: no such file or field (not Linux).
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def bench_main(argv: Sequence[str] | None, module: str, doc: str, name: str, title: str,
               add_arguments: Callable, run: Callable, report: Callable) -> int:
    """The ``python -m <module>`` entry of a method's benchmark: parse ``--device``, ``--csv`` and the bench's own
    options, run it, print the table and its goals, write the CSV (``bench_results/<name>.csv`` by default).

    Args:
        argv: command-line arguments (None: ``sys.argv``).
        module: the module run with ``python -m`` (the program name).
        doc: the module docstring (its first line is the description).
        name: the CSV's default stem.
        title: the table's title.
        add_arguments, run, report: the bench's ``add_arguments(parser)``, ``run(args) -> rows``, ``report(rows)``.
    """
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--csv", type=Path, default=Path("bench_results") / f"{name}.csv", help="CSV output")
    add_arguments(parser)
    args = parser.parse_args(argv)
    rows = run(args)
    print_table(rows, title=title)
    report(rows)
    print(f"\nwrote {write_csv(rows, args.csv)}")
    return 0
