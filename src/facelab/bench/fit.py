"""3DMM fitting throughput: faces per second fitted one by one (B = 1) and in a batch (B = 32), same iterations.

Targets are held-out synthetic faces (``facelab.data.synthetic``, the chosen family): their 68 ground-truth
landmarks, and with ``--photometric`` their images for the photometric stage too. Convergence freezing is off
(tolerance 0), so every face runs exactly the stage budgets in both modes and the comparison is per iteration.
The goal (issue: core v2): batched fitting gives at least 8x the per-face throughput of one-by-one fitting.
"""

from __future__ import annotations

import argparse
import time

from facelab.bench.common import BenchRow, available_devices, peak_memory_mb, synchronize
from facelab.data.synthetic import SyntheticFaceDataset, SyntheticFaceSample
from facelab.fitting import FitSchedule, FitTargets, MorphableFitter

#: Batched per-face throughput over one-by-one, at least.
GOAL_SPEEDUP = 8.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", default="bfm", help="bfm | bilinear | flame (synthetic stand-ins)")
    parser.add_argument("--batch", type=int, default=32, help="faces of the batched fit")
    parser.add_argument("--single", type=int, default=4, help="faces fitted one by one (their mean time is used)")
    parser.add_argument("--iterations", type=int, nargs=3, default=[20, 80, 20], metavar=("RIGID", "LMK", "PHOTO"))
    parser.add_argument("--photometric", action="store_true", help="include the photometric stage (images)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--render-size", type=int, default=112)


def _targets(batch: SyntheticFaceSample, rows: slice, photometric: bool, device: str) -> FitTargets:
    image = batch.image[rows].to(device) if photometric else None
    return FitTargets(image_size=tuple(batch.image.shape[-2:]), landmarks68=batch.landmarks68_pix[rows].to(device),
                      image=image)


def _time(fitter: MorphableFitter, targets: FitTargets, device: str) -> tuple[float, float]:
    """(seconds, peak extra memory in MiB) of one fit."""
    seconds = []

    def fit() -> None:
        synchronize(device)
        start = time.perf_counter()
        fitter.fit(targets, outputs=False)
        synchronize(device)
        seconds.append(time.perf_counter() - start)

    peak = peak_memory_mb(fit, device)
    return seconds[0], peak


def run(args: argparse.Namespace) -> list[BenchRow]:
    n = max(args.batch, args.single)
    dataset = SyntheticFaceDataset(family=args.family, num_samples=n, split="test", image_size=args.image_size)
    batch = SyntheticFaceSample.collate(dataset.generate(list(range(n))))
    rigid, lmk, photo = args.iterations
    schedule = FitSchedule(rigid_iterations=rigid, landmark_iterations=lmk,
                           photometric_iterations=photo if args.photometric else 0, tolerance=0.0)
    iterations = rigid + lmk + (photo if args.photometric else 0)
    rows = []
    for device in available_devices(args.device):
        model = dataset.model.to(device)
        fitter = MorphableFitter(model, render_size=args.render_size, schedule=schedule)
        warm = FitSchedule(rigid_iterations=2, landmark_iterations=2, photometric_iterations=2 if photo else 0)
        fitter.fit(_targets(batch, slice(0, 2), args.photometric, device), schedule=warm, outputs=False)
        single = [_time(fitter, _targets(batch, slice(i, i + 1), args.photometric, device), device)[0]
                  for i in range(args.single)]
        per_face_single = sum(single) / len(single)
        many = _targets(batch, slice(0, args.batch), args.photometric, device)
        batched, peak = _time(fitter, many, device)
        extra = {"family": args.family, "iterations": iterations, "photometric": args.photometric}
        rows.append(BenchRow("fit", "one_by_one", device, 1, per_face_single * 1e3, 1.0 / per_face_single, float("nan"),
                             extra=dict(extra, speedup=1.0)))
        speedup = (args.batch / batched) * per_face_single
        rows.append(BenchRow("fit", "batched", device, args.batch, batched * 1e3, args.batch / batched, peak,
                             extra=dict(extra, speedup=speedup)))
        dataset.model.to("cpu")
    return rows


def report(rows: list[BenchRow]) -> None:
    for row in rows:
        if row.impl == "batched":
            ok = row.extra["speedup"] >= GOAL_SPEEDUP
            print(f"{row.device}: batched B={row.batch} fits {row.items_per_s:.2f} faces/s, "
                  f"{row.extra['speedup']:.1f}x one by one (goal >= {GOAL_SPEEDUP:.0f}x): {'PASS' if ok else 'FAIL'}")
