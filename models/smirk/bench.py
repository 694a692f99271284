"""Speed of SMIRK's building blocks at 224²: encoder stack inference, translator forward, masking.

Same protocol as :mod:`facelab.bench` (``add_arguments`` / ``run`` returning :class:`facelab.bench.common.BenchRow`);
run it with ``python -m smirk.bench [--device cpu|cuda|auto] [--batch 1 32] [--csv PATH]``. The public SMIRK
reports ~55 images/s for the encoder stack on CPU (machine unspecified).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch

from facelab.bench.common import BenchRow, available_devices, peak_memory_mb, print_table, time_fn, write_csv
from facelab.morphable import Flame
from smirk.masking import SmirkMasker
from smirk.networks import SmirkEncoder, SmirkGenerator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions (median reported)")


def _row(name: str, fn, device: str, batch: int, repeat: int) -> BenchRow:
    ms = time_fn(fn, device, warmup=1, repeat=repeat)
    return BenchRow(bench="smirk", impl=name, device=device, batch=batch, ms=ms, items_per_s=batch * 1e3 / ms,
                    peak_mem_mb=peak_memory_mb(fn, device))


@torch.inference_mode()
def run(args: argparse.Namespace) -> list[BenchRow]:
    rows = []
    for device in available_devices(args.device):
        encoder = SmirkEncoder().eval().to(device)
        generator = SmirkGenerator().eval().to(device)
        flame = Flame("synthetic", n_expression=50).to(device)
        masker = SmirkMasker().to(device)
        masker.set_topology(flame.faces, flame.regions)
        for batch in args.batch:
            image = torch.rand(batch, 3, args.size, args.size, device=device)
            rows.append(_row("encoder_stack", partial(encoder, image), device, batch, args.repeat))
            rows.append(_row("generator", partial(generator, image, image), device, batch, args.repeat))
            verts = flame.v_template[None].expand(batch, -1, -1)
            verts_px = (verts[..., :2] * torch.tensor([7.0, -7.0], device=device) + 1) * (args.size / 2)
            lmk = verts_px[:, :478]
            rows.append(_row("masker", partial(masker, image, lmk, None, verts_px, flame.faces), device, batch,
                             args.repeat))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smirk.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--csv", type=Path, default=Path("bench_results") / "smirk.csv", help="CSV output")
    add_arguments(parser)
    args = parser.parse_args(argv)
    rows = run(args)
    print_table(rows, title="smirk building blocks")
    print(f"\nwrote {write_csv(rows, args.csv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
