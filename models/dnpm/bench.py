"""Speed of DNPM's StyleGAN2 (``facelab.nn.stylegan2``): generator and discriminator training throughput, and the
grouped-convolution modulated convolution against a per-sample reference loop.

Run it with ``facelab bench dnpm [options]`` or ``python -m dnpm.bench [options]`` (same options; ``--help``).

**Networks** (``--resolutions``, default 32 (``configs/dnpm.yaml``, the CPU default) and 256; ``--batch`` B = 16,
the config's): one forward and backward of the generator (``G(z)`` with mapping, random noise, loss
``mean(G(z)^2)``) and of the discriminator (``D(x).sum()`` on a (B, C, R, R) batch), with the config's widths
(``--channel-base`` / ``--channel-max`` 2048 / 64, ``--z-dim`` 128; the paper's 1024^2 model uses 32768 / 512 /
512). The generator is timed with both forms of the modulated convolution (``G/grouped``: one grouped conv per
layer; ``G/nonfused``: activation scaling around one shared conv, StyleGAN2's training path and the Generator's
default in training mode). ``kimg_per_s`` = thousands of images per second of that pass (a training step runs G
forward+backward on about 1.5 B and D forward+backward on 2 B).

**Modulated convolution** (``--modconv-shapes`` CHANNELSxSIDE, default the CPU default's layers 64x4 .. 64x32 and
two of the 256^2 network's, 128x16 and 32x64: I = O channels, 3x3, demodulated; ``--modconv-batch`` 32, the paper's
minibatch): forward + backward of :func:`facelab.nn.modulated_conv2d` (grouped, and ``fused=False``) against
:func:`facelab.nn.modulated_conv2d_reference` (Eq. 1 and 3 one sample at a time, a Python loop of convolutions).
``speedup_vs_reference`` = reference ms / this ms. Goal: the grouped convolution >= 3x the reference; the report
also states the non-fused form against the same goal. On CPUs the grouped form does *not* reach it (measured
0.8-2x on one core: oneDNN's grouped convolution, and its backward, cost about as much as the B small convolutions
of the loop, which are compute-bound there); the loop's cost on GPUs is B kernel launches per layer, which the one
grouped launch removes. On CPUs the non-fused form is the fast one (4-7x at the CPU default's small layers).

Every group of rows is timed interleaved (one call of each per repetition, ``--warmup`` untimed rounds, medians of
at least ``--repeat`` rounds and ``--min-time`` seconds), so load from other processes hits all alike. On a shared
CPU pass ``--threads 1`` (intra-op threads spin-wait on a loaded machine); compare numbers within one run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch

from facelab.bench.common import (
    BenchRow,
    available_devices,
    bench_main,
    interleaved_medians,
    peak_memory_mb,
    print_goals,
)
from facelab.nn import Discriminator, Generator, modulated_conv2d, modulated_conv2d_reference

MIN_MODCONV_SPEEDUP = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 256],
                        help="G/D resolutions (32: configs/dnpm.yaml, the CPU default)")
    parser.add_argument("--batch", type=int, default=16,
                        help="batch size (a multiple of the mbstd group, 4; 16: configs/dnpm.yaml)")
    parser.add_argument("--channels", type=int, default=1, help="map channels (1: displacement)")
    parser.add_argument("--channel-base", type=int, default=2048, help="network width numerator (configs/dnpm.yaml)")
    parser.add_argument("--channel-max", type=int, default=64, help="widest block (configs/dnpm.yaml)")
    parser.add_argument("--z-dim", type=int, default=128, help="latent/style size (z = w; configs/dnpm.yaml)")
    parser.add_argument("--modconv-shapes", nargs="+", default=["64x4", "64x8", "64x16", "64x32", "128x16", "32x64"],
                        help="modulated conv layers as CHANNELSxSIDE (in = out channels, 3x3, demodulated)")
    parser.add_argument("--modconv-batch", type=int, default=32, help="modulated conv batch (paper minibatch: 32)")
    parser.add_argument("--skip-networks", action="store_true", help="only the modulated convolution")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (medians)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--min-time", type=float, default=0.0, help="keep repeating for at least this many seconds")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)




def _generator_pass(g: Generator, z: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        g.zero_grad(set_to_none=True)
        g(z).square().mean().backward()
    return step


def _discriminator_pass(d: Discriminator, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        d.zero_grad(set_to_none=True)
        d(x).sum().backward()
    return step


def network_rows(resolution: int, device: str, args: argparse.Namespace) -> list[BenchRow]:
    """G (grouped and non-fused modulated convs) and D forward+backward at one resolution."""
    torch.manual_seed(args.seed)
    widths = dict(channel_base=args.channel_base, channel_max=args.channel_max)
    g = Generator(resolution, args.channels, z_dim=args.z_dim, w_dim=args.z_dim, fused_modconv=True,
                  **widths).to(device)
    g_nonfused = Generator(resolution, args.channels, z_dim=args.z_dim, w_dim=args.z_dim, fused_modconv=False,
                           **widths).to(device)
    g_nonfused.load_state_dict(g.state_dict())
    d = Discriminator(resolution, args.channels, **widths).to(device)
    z = torch.randn(args.batch, args.z_dim, device=device)
    x = torch.randn(args.batch, args.channels, resolution, resolution, device=device)
    fns = {"G/grouped": (_generator_pass(g, z), g), "G/nonfused": (_generator_pass(g_nonfused, z), g_nonfused),
           "D": (_discriminator_pass(d, x), d)}
    medians = interleaved_medians([fn for fn, _ in fns.values()], device, args.warmup, args.repeat, args.min_time)
    rows = []
    for (name, (fn, net)), ms in zip(fns.items(), medians):
        params = sum(p.numel() for p in net.parameters()) / 1e6
        rows.append(BenchRow(bench="dnpm", impl=f"{name}@{resolution}", device=device, batch=args.batch, ms=ms,
                             items_per_s=args.batch * 1e3 / ms, peak_mem_mb=peak_memory_mb(fn, device),
                             extra={"kimg_per_s": args.batch / ms, "params_m": params}))
    return rows


def parse_shape(text: str) -> tuple[int, int]:
    """``"128x16"`` -> (128, 16)."""
    try:
        c, s = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--modconv-shapes entries are CHANNELSxSIDE, e.g. 128x16; got {text!r}") from None
    return c, s


def modconv_rows(shape: str, device: str, args: argparse.Namespace) -> list[BenchRow]:
    """Grouped / non-fused modulated convolution vs the per-sample reference, forward + backward, one layer shape."""
    gen = torch.Generator(device).manual_seed(args.seed)
    (c, s), b = parse_shape(shape), args.modconv_batch
    x = torch.randn(b, c, s, s, device=device, generator=gen, requires_grad=True)
    weight = torch.randn(c, c, 3, 3, device=device, generator=gen, requires_grad=True)
    styles = torch.randn(b, c, device=device, generator=gen, requires_grad=True)

    def timed(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def call() -> None:
            fn(x, weight, styles).square().mean().backward()
        return call

    impls = {f"modconv/grouped@{shape}": timed(modulated_conv2d),
             f"modconv/nonfused@{shape}": timed(lambda *a: modulated_conv2d(*a, fused=False)),
             f"modconv/reference@{shape}": timed(modulated_conv2d_reference)}
    medians = interleaved_medians(list(impls.values()), device, args.warmup, args.repeat, args.min_time)
    ref_ms = medians[-1]
    return [BenchRow(bench="dnpm", impl=name, device=device, batch=b, ms=ms, items_per_s=b * 1e3 / ms,
                     peak_mem_mb=peak_memory_mb(fn, device), extra={"speedup_vs_reference": ref_ms / ms})
            for (name, fn), ms in zip(impls.items(), medians)]


def run(args: argparse.Namespace) -> list[BenchRow]:
    if args.batch % 4 and args.batch > 4:
        raise ValueError(f"--batch must be a multiple of the minibatch-stddev group (4) or <= 4, got {args.batch}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows: list[BenchRow] = []
    for device in available_devices(getattr(args, "device", "auto")):
        for shape in args.modconv_shapes:
            rows += modconv_rows(shape, device, args)
        if not args.skip_networks:
            for resolution in args.resolutions:
                rows += network_rows(resolution, device, args)
    columns = list(dict.fromkeys(key for row in rows for key in row.extra))
    for row in rows:  # every row gets every column (the table prints the first row's)
        row.extra = {key: row.extra.get(key, float("nan")) for key in columns}
    return rows


def report(rows: Sequence[BenchRow]) -> bool:
    """Print the goal (grouped modulated conv >= 3x the per-sample reference) with pass/fail, and the non-fused form
    beside it; True when the grouped form passes wherever it was measured."""
    checks, informative = [], []
    for row in rows:
        for form, into in (("grouped", checks), ("nonfused", informative)):
            if row.impl.startswith(f"modconv/{form}@"):
                speedup = row.extra["speedup_vs_reference"]
                into.append((f"[{row.device}] {form} modulated conv {row.impl.split('@')[1]} (B={row.batch}) "
                             f"{speedup:.1f}x the per-sample reference >= {MIN_MODCONV_SPEEDUP:.0f}x",
                             speedup >= MIN_MODCONV_SPEEDUP))
    passed = print_goals(checks)
    if informative:
        print("the non-fused form (StyleGAN2's training path) against the same goal, for comparison:")
        print_goals(informative)
    return passed


def main(argv: list[str] | None = None) -> int:
    title = "dnpm: StyleGAN2 training passes and the modulated convolution"
    return bench_main(argv, "dnpm.bench", __doc__, "dnpm", title, add_arguments, run, report)


if __name__ == "__main__":
    raise SystemExit(main())
