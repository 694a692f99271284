"""Synthetic face world throughput: samples per second through a real DataLoader (goal: >= 50/s at 224² with
2 workers on a 2-core machine, so that training is not data-bound).

Displacement maps of the synthetic bilinear world (:mod:`facelab.data.detail_maps`, generated in UV without
rendering): maps per second at ``--detail-resolutions`` (default 64² and 256²; goal: >= 500/s at 256² with 2
workers), rows ``detail_maps_<R>``.

Generation runs on the CPU inside the loader (workers when ``num_workers > 0``), so ``--device`` does not change
what is measured; rows are labelled ``cpu``. The clock starts once the first batch has arrived (worker start-up
and model loading excluded) and stops after ``--batches`` more batches.
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial

import torch
from torch.utils.data import DataLoader

from facelab.bench.common import BenchRow, peak_memory_mb
from facelab.data.detail_maps import DisplacementSample, SyntheticDisplacementDataset
from facelab.data.synthetic import SyntheticFaceDataset, SyntheticFaceSample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers values")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per configuration")
    parser.add_argument("--family", default="flame", help="flame | bfm | bilinear | ict")
    parser.add_argument("--model", default="synthetic", help="model path or 'synthetic'")
    parser.add_argument("--camera", default="weak", choices=["weak", "perspective"])
    parser.add_argument("--sequence-length", type=int, default=0, help="0: single frames; T: sequences")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of the in-process (num_workers=0) measurement; workers use 1")
    parser.add_argument("--detail-resolutions", type=int, nargs="*", default=[64, 256],
                        help="displacement-map sides to measure (none: skip the displacement-map rows)")
    parser.add_argument("--detail-batch-size", type=int, default=32, help="maps per batch of the displacement rows")
    parser.add_argument("--detail-batches", type=int, default=30, help="timed batches per displacement row")
    parser.add_argument("--skip-images", action="store_true", help="only the displacement-map rows")


def _throughput(dataset, workers: int, batch_size: int, batches: int, collate=SyntheticFaceSample.collate,
                shuffle: bool = False) -> float:
    """Seconds for ``batches`` batches after the first one."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate)
    it = iter(loader)
    next(it)  # start-up: workers forked, first batch rendered
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    del it
    return elapsed


def _measured(workers: int, threads: int, fn) -> float:
    """``fn()`` with ``threads`` intra-op threads when it runs in-process (``workers == 0``), like a worker."""
    saved = torch.get_num_threads()
    if workers == 0:
        torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(saved)


def _detail_rows(args: argparse.Namespace) -> list[BenchRow]:
    """Displacement maps per second (shuffled identities, as in training: the per-identity terms are recomputed)."""
    rows = []
    b, n = args.detail_batch_size, args.detail_batches
    for resolution in args.detail_resolutions:
        dataset = SyntheticDisplacementDataset(num_identities=(n + 2) * b, expressions_per_identity=20,
                                               resolution=resolution)
        for workers in args.workers:
            cpu = time.process_time()
            elapsed = _measured(workers, args.threads, partial(_throughput, dataset, workers, b, n,
                                                               DisplacementSample.collate, shuffle=True))
            cpu = time.process_time() - cpu
            peak, per_cpu_s = math.nan, math.nan
            if workers == 0:
                # maps per CPU-second of the one generating thread (first batch included): what one worker on an
                # otherwise idle core delivers, whatever else loads the machine
                per_cpu_s = (n + 1) * b / cpu if args.threads == 1 else math.nan
                peak = peak_memory_mb(partial(_throughput, dataset, 0, b, 1, DisplacementSample.collate), "cpu")
            rows.append(BenchRow("data", f"detail_maps_{resolution}", "cpu", b, elapsed / n * 1e3, n * b / elapsed,
                                 peak, extra={"num_workers": workers, "threads": args.threads if workers == 0 else 1,
                                              "image_size": resolution, "sequence_length": 0,
                                              "items_per_cpu_s": per_cpu_s}))
    return rows


def run(args: argparse.Namespace) -> list[BenchRow]:
    rows: list[BenchRow] = []
    if getattr(args, "skip_images", False):
        return _detail_rows(args)
    count = (args.batches + 2) * args.batch_size
    dataset = SyntheticFaceDataset(family=args.family, model_path=args.model, num_samples=count,
                                   image_size=args.image_size, camera=args.camera,
                                   sequence_length=args.sequence_length)
    for workers in args.workers:
        threads = torch.get_num_threads()
        if workers == 0:  # like a worker process: small ops do not gain from intra-op threads
            torch.set_num_threads(args.threads)
        try:
            elapsed = _throughput(dataset, workers, args.batch_size, args.batches)
        finally:
            torch.set_num_threads(threads)
        ms = elapsed / args.batches * 1e3
        peak = math.nan
        if workers == 0:  # in-process: the loader's memory is this process's
            peak = peak_memory_mb(lambda: _throughput(dataset, 0, args.batch_size, 1), "cpu")
        rows.append(BenchRow("data", f"synthetic_{args.family}_{args.camera}", "cpu", args.batch_size, ms,
                             args.batches * args.batch_size / elapsed, peak,
                             extra={"num_workers": workers, "threads": args.threads if workers == 0 else 1,
                                    "image_size": args.image_size,
                                    "sequence_length": args.sequence_length}))
    return rows + _detail_rows(args) if getattr(args, "detail_resolutions", None) else rows
