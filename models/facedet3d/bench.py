"""Speed of FaceDet3D on one machine: where the DetH and R training steps spend their time, and RCAN throughput.

Run it with ``facelab bench facedet3d [options]`` or ``python -m facedet3d.bench [options]``.

**Training steps.** The real :class:`facedet3d.module_render.RenderModule` and
:class:`facedet3d.module_deth.DetHModule` (their constructor defaults = ``configs/facedet3d_render.yaml`` /
``configs/facedet3d_deth.yaml``; ``--small`` uses CPU-test widths) train through a real ``lightning.Trainer`` on one
synthetic batch (:class:`facedet3d.data.SyntheticDetailDataset`, generated once, fed again every step), so what is
timed is ``training_step`` exactly as training runs it: ``--warmup`` untimed batches, then ``--repeat`` timed ones.
Stages are charged *exclusively* (a section nested in another is taken out of the outer one) by forward hooks on
sub-modules and wrappers of the module's methods, for the duration of the run only:

* R: ``prepare`` -> *inputs* (Eq. 1 batch to R's inputs: the proxy mesh), ``rasterizer`` -> *uv_raster* (the G_P
  raster and the two G_D rasters, true and fake details: "UV raster x2" plus AugW's), ``network.ntex`` -> *ntex*,
  ``network.g_theta`` / ``g_omega`` -> *tex2im*, ``discriminator`` -> *discriminators*, ``render_losses`` /
  ``discriminator_losses`` / ``shading_predictor`` -> *losses*, ``guarded_step`` (backward of every stage, clipping,
  finiteness checks, optimizer step) -> *backward_step*;
* DetH: the map/AU/shape/FaceID/age encoders, the fusion and the identity networks (FaceNet, age) -> *encoders*, the
  AdaIN blocks and heads -> *decoder*, ``discriminator`` -> *discriminators*, ``generator_losses`` /
  ``discriminator_losses`` -> *losses*, both guarded steps -> *backward_step*;
* *other*: the batch time (``on_train_batch_start`` to ``_end``) minus every stage (Lightning's loop, logging).

**RCAN** (``--rcan-size``): maps/s and tiles/s of the tiled x4 upscaling (``facedet3d.rcan.upscale_tiled``) and the
peak memory of one call (CUDA: allocator peak; CPU: resident-set growth).

**Goal** (printed with pass/fail): the UV rasterizations together take <= 20% of the R training step.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from facelab.bench.common import BenchRow, peak_memory_mb, print_table, synchronize, time_fn, write_csv

__all__ = ["ExclusiveTimer", "add_arguments", "main", "run"]

UV_RASTER_GOAL = 0.20


class ExclusiveTimer:
    """Wall time per named section, exclusive of nested sections (a stack; CUDA synchronised at boundaries)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[str] = []
        self.mark = 0.0
        self.enabled = False
        self._undo: list[Callable[[], None]] = []

    def _switch(self) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        if self.enabled and self.stack:
            self.totals[self.stack[-1]] += now - self.mark
        self.mark = now

    def push(self, name: str) -> None:
        self._switch()
        self.stack.append(name)

    def pop(self) -> None:
        self._switch()
        self.stack.pop()

    def hook_module(self, module: nn.Module | None, name: str) -> None:
        """Charge ``module``'s forward passes to ``name``."""
        if module is None:
            return
        pre = module.register_forward_pre_hook(lambda *_: self.push(name))
        post = module.register_forward_hook(lambda *_: self.pop())
        self._undo += [pre.remove, post.remove]

    def wrap_method(self, obj, attr: str, name: str) -> None:
        """Charge calls of ``obj.attr`` (a method, or a callable object such as a GuardedStep) to ``name``."""
        original = getattr(obj, attr)
        timer = self

        class Timed:
            def __call__(self, *args, **kwargs):
                timer.push(name)
                try:
                    return original(*args, **kwargs)
                finally:
                    timer.pop()

            def __getattr__(self, item):  # a wrapped object's attributes (e.g. ``skipped``) read through
                return getattr(original, item)

        own = attr in vars(obj)  # an instance attribute is restored, a method un-shadowed
        object.__setattr__(obj, attr, Timed())
        self._undo.append((lambda: object.__setattr__(obj, attr, original)) if own else (lambda: delattr(obj, attr)))

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


class _BatchClock(Callback):
    """Batch wall times, and switches the timer on for the timed batches."""

    def __init__(self, timer: ExclusiveTimer, warmup: int) -> None:
        self.timer, self.warmup, self.times = timer, warmup, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.timer.enabled = batch_idx >= self.warmup
        synchronize(self.timer.device)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(self.timer.device)
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self.start)


def _fit(module, batch, device: str, warmup: int, repeat: int, timer: ExclusiveTimer) -> list[float]:
    import lightning as L
    from torch.utils.data import DataLoader

    clock = _BatchClock(timer, warmup)
    steps_per_batch = len(module.configure_optimizers())
    trainer = L.Trainer(accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        max_steps=(warmup + repeat) * steps_per_batch, callbacks=[clock], num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(module, DataLoader([batch] * (warmup + repeat), batch_size=None))
    return clock.times


def _rows(bench: str, timer: ExclusiveTimer, times: list[float], batch: int, device: str, order: list[str]
          ) -> list[BenchRow]:
    n = max(len(times), 1)
    step = sum(times) / n
    totals = {k: v / n for k, v in timer.totals.items()}
    totals["other"] = max(step - sum(totals.values()), 0.0)
    rows = [BenchRow(bench, name, device, batch, 1e3 * totals.get(name, 0.0), batch / step,
                     float("nan"), extra={"pct": round(100 * totals.get(name, 0.0) / step, 1), "tiles_per_s": ""})
            for name in [*order, "other"]]
    rows.append(BenchRow(bench, "step", device, batch, 1e3 * step, batch / step, float("nan"),
                         extra={"pct": 100.0, "tiles_per_s": ""}))
    return rows


def _render_module(small: bool, size: int):
    from facedet3d.module_render import RenderModule
    from facedet3d.render_losses import ShadingPredictor
    from facedet3d.renderer import RenderingNetwork
    from facelab.nn import UNetDiscriminator

    if not small:
        return RenderModule(image_size=size, texture_size=size, log_images_every_n_steps=0)
    return RenderModule(network=RenderingNetwork(8, (16, 32, 64), (16, 32, 64)),
                        discriminator=UNetDiscriminator(3, (16, 32, 64, 64), heads={"au": 17}),
                        shading_predictor=ShadingPredictor(), image_size=size, texture_size=size,
                        log_images_every_n_steps=0)


def bench_render(args) -> list[BenchRow]:
    """The R training step's split."""
    from facedet3d.data import FaceDetailBatch, SyntheticDetailDataset

    data = SyntheticDetailDataset(num_samples=args.batch, split="train", pairs=False, image_size=args.size,
                                  texture_size=args.size, map_size=args.map_size)
    batch = FaceDetailBatch.collate(data.__getitems__(list(range(args.batch)))).to(args.device)
    module = _render_module(args.small, args.size)
    timer = ExclusiveTimer(args.device)
    timer.wrap_method(module, "prepare", "inputs")
    timer.hook_module(module.rasterizer, "uv_raster")
    timer.hook_module(module.network.ntex, "ntex")
    timer.hook_module(module.network.g_theta, "tex2im")
    timer.hook_module(module.network.g_omega, "tex2im")
    timer.hook_module(module.discriminator, "discriminators")
    timer.hook_module(module.shading_predictor, "losses")
    timer.wrap_method(module, "render_losses", "losses")
    timer.wrap_method(module, "discriminator_losses", "losses")
    timer.wrap_method(module, "guarded_step", "backward_step")
    try:
        times = _fit(module, batch, args.device, args.warmup, args.repeat, timer)
    finally:
        timer.remove()
    order = ["inputs", "uv_raster", "ntex", "tex2im", "discriminators", "losses", "backward_step"]
    return _rows("facedet3d_render_step", timer, times, args.batch, args.device, order)


def bench_deth(args) -> list[BenchRow]:
    """The DetH training step's split."""
    from facedet3d.data import DetailPairBatch, SyntheticDetailDataset
    from facedet3d.module_deth import DetHModule

    data = SyntheticDetailDataset(num_samples=args.batch, split="train", pairs=True, image_size=args.size,
                                  texture_size=args.size, map_size=args.map_size)
    batch = DetailPairBatch.collate(data.__getitems__(list(range(args.batch)))).to(args.device)
    module = DetHModule(**({"base_channels": 16, "max_channels": 64} if args.small else {}))
    timer = ExclusiveTimer(args.device)
    deth = module.deth
    for name in ("map_stem", "map_encoder", "au_encoder", "shape_encoder", "face_id_encoder", "age_encoder", "fuse"):
        timer.hook_module(getattr(deth, name, None), "encoders")
    for name in ("bottleneck", "up", "out_norm", "hallucination_head", "mask_head"):
        module_or_list = getattr(deth, name, None)
        for sub in (module_or_list if isinstance(module_or_list, nn.ModuleList) else [module_or_list]):
            timer.hook_module(sub, "decoder")
    timer.wrap_method(module, "identity_features", "encoders")
    timer.hook_module(module.discriminator, "discriminators")
    timer.wrap_method(module, "generator_losses", "losses")
    timer.wrap_method(module, "discriminator_losses", "losses")
    timer.wrap_method(module, "guard_g", "backward_step")
    timer.wrap_method(module, "guard_d", "backward_step")
    try:
        times = _fit(module, batch, args.device, args.warmup, args.repeat, timer)
    finally:
        timer.remove()
    order = ["encoders", "decoder", "discriminators", "losses", "backward_step"]
    return _rows("facedet3d_deth_step", timer, times, args.batch, args.device, order)


def bench_rcan(args) -> list[BenchRow]:
    """RCAN x4 tiled upscaling: maps/s, tiles/s, peak memory."""
    from facedet3d.rcan import RCAN, upscale_tiled

    net = (RCAN(features=16, n_groups=2, n_blocks=2) if args.small else RCAN()).to(args.device).eval()
    x = torch.randn(1, 1, args.rcan_size, args.rcan_size, device=args.device) * 0.3
    tile, overlap = args.rcan_tile, args.rcan_overlap
    per_side = 1 if args.rcan_size <= tile else math.ceil((args.rcan_size - tile) / (tile - overlap)) + 1
    tiles = per_side ** 2

    def call():
        with torch.inference_mode():
            return upscale_tiled(net, x, tile=tile, overlap=overlap)

    ms = time_fn(call, args.device, warmup=1, repeat=args.repeat)
    mem = peak_memory_mb(call, args.device)
    return [BenchRow("facedet3d_rcan", f"x4 {args.rcan_size}->{4 * args.rcan_size} tile {tile}/{overlap}",
                     args.device, 1, ms, 1e3 / ms, mem, extra={"pct": "", "tiles_per_s": round(tiles * 1e3 / ms, 2)})]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parts", nargs="+", default=["render", "deth", "rcan"], choices=["render", "deth", "rcan"])
    parser.add_argument("--size", type=int, default=128, help="image / texture side of the training steps")
    parser.add_argument("--map-size", type=int, default=256, help="detail-map side")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--small", action="store_true", help="CPU-test network widths instead of the configs'")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--rcan-size", type=int, default=256, help="side of the map RCAN upscales")
    parser.add_argument("--rcan-tile", type=int, default=64)
    parser.add_argument("--rcan-overlap", type=int, default=8)


def run(args) -> list[BenchRow]:
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    device = str(getattr(args, "device", None) or "auto")
    args.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    rows: list[BenchRow] = []
    for part, fn in (("render", bench_render), ("deth", bench_deth), ("rcan", bench_rcan)):
        if part in args.parts:
            rows += fn(args)
    return rows


def report(rows: list[BenchRow]) -> None:
    """The UV-raster goal: share of the R step."""
    raster = [r for r in rows if r.bench == "facedet3d_render_step" and r.impl == "uv_raster"]
    if raster:
        share = raster[0].extra["pct"] / 100
        verdict = "PASS" if share <= UV_RASTER_GOAL else "FAIL"
        print(f"goal: UV rasterizations (G_P + G_D + AugW's G_D*) <= {UV_RASTER_GOAL:.0%} of the R step: "
              f"{share:.1%} {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)
    rows = run(args)
    print_table(rows)
    report(rows)
    if args.csv:
        write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
