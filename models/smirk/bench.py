"""Speed of SMIRK on one machine: where a training step's time goes, and inference throughput.

Run it with ``facelab bench smirk [options]`` or ``python -m smirk.bench [options]`` (same options; ``--help``).

**Training step** (``--train-batch``, default B = 8 at ``--size`` 224). The real :class:`smirk.module.SmirkModule`
(``flame_path="synthetic"``) trains through a real ``lightning.Trainer`` on one synthetic batch
(:class:`facelab.data.synthetic.SyntheticFaceDataset`, generated once before timing and fed again every step), so
what is timed is ``training_step`` exactly as training runs it: ``--warmup`` untimed batches, then ``--repeat``
timed batches of each kind (the core phase alternates generator batches and expression-encoder batches). The step
is not re-implemented here. Its stages are timed by instrumenting the module for the duration of the run
(:class:`StepProfiler`):

* forward hooks on its sub-modules: ``encoder`` and its three sub-encoders -> *encoders*, ``flame`` -> *flame*,
  ``renderer`` -> *render*, ``masker`` -> *masking*, ``generator`` -> *translator*, the feature losses
  (``perceptual_loss``, ``emotion_loss``, ``cycle_loss``) -> *losses*;
* instance-level wrappers of its methods: ``_landmark_losses`` -> *losses*, ``_optimize`` (backward, gradient
  clipping, finiteness checks, ``opt.step``) -> *backward_step*; ``_reconstruction_path`` and ``_cycle_path`` only
  name the path the following stages (and the next ``_optimize``) are charged to;
* the module-level loss functions ``smirk.module.reconstruction_loss`` and ``structural_identity_loss`` (the
  latter runs the frozen shape encoder: that forward is charged to *losses*) are swapped for timed wrappers.

Sections are timed with ``perf_counter`` (CUDA: synchronized at each section boundary) and only the outermost
active section counts, so nothing is charged twice. *other* is the rest of the batch (Lightning's loop, logging,
schedulers, optimizer toggling, augmentation, ndc_to_pixels, ...): the batch time, taken from
``on_train_batch_start`` to ``on_train_batch_end``, minus every stage. Backward passes are charged to
*backward_step* as a whole (autograd runs the backward of every stage at once). The pretraining step is profiled
the same way (no render, masking or translator).

Without weight files the module disables the VGG perceptual and emotion losses (as training would);
``--feature-losses`` injects them with random weights (same compute as the real networks) to time the full recipe.

**Inference** (``--infer-batch``, default B = 1 and 32): images/s of the bare encoder stack (``module.encoder``) and
of the whole reconstruction, ``module._render(module.encoder(image))`` (encoders + FLAME + the face-region
render, exactly what training renders), under ``torch.inference_mode``. The two are timed interleaved (one call
of each per repetition, medians of at least ``--repeat`` repetitions and ``--min-time`` seconds) so that load from
other processes hits both alike.

**Columns**: ``ms`` per batch (training rows: mean over the timed batches; inference: median); ``items_per_s``
images/s; ``pct`` share of the training step; ``gen_batch_ms`` / ``enc_batch_ms`` the same on generator /
expression-encoder batches only; ``recon_ms`` / ``cycle_ms`` the stage's time in the reconstruction / cycle path
(for *backward_step*: that path's backward and optimizer step); ``ratio_vs_encoders`` encoder-stack ms /
reconstruction ms, i.e. the reconstruction's share of the encoders' throughput; ``peak_mem_mb`` growth above the
start of a timed batch or call (CPU: resident set, which stays flat when the allocator reuses memory; CUDA:
allocator peak).

**Timing on a shared CPU**: torch's intra-op threads spin and wait for each other, so when other processes load
the cores a 2-thread run can slow down many-fold and unevenly (small ops suffer most). ``--threads 1`` measures the
work itself far more stably; compare numbers only within one run.

**Goals** (printed with pass/fail): render + masking <= 25% of the core training step; the whole reconstruction
reaches >= 75% of the bare encoder stack's images/s at every inference batch size.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from facelab.bench.common import (
    BenchRow,
    available_devices,
    bench_main,
    interleaved_medians,
    peak_memory_mb,
    print_goals,
    proc_status_kb,
    synchronize,
)

#: The stages a training step is split into, in the order the table lists them.
STAGES = ("encoders", "flame", "render", "masking", "translator", "losses", "backward_step", "other")
#: Goals of the benchmark issue.
MAX_RENDER_MASK_SHARE = 0.25
MIN_RECON_THROUGHPUT_RATIO = 0.75


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=224, help="image side (the module's image_size)")
    parser.add_argument("--train-batch", type=int, default=8, help="batch size of the profiled training steps")
    parser.add_argument("--infer-batch", type=int, nargs="+", default=[1, 32], help="inference batch sizes")
    parser.add_argument("--phases", nargs="+", choices=["core", "pretrain"], default=["core", "pretrain"],
                        help="training phases to profile")
    parser.add_argument("--skip-train", action="store_true", help="inference only")
    parser.add_argument("--skip-infer", action="store_true", help="training steps only")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed training batches per batch kind, and timed inference calls (medians)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training batches / inference calls first")
    parser.add_argument("--min-time", type=float, default=3.0,
                        help="inference: keep repeating until this many seconds are spent per batch size (small "
                             "batches get many repetitions, so their medians are stable)")
    parser.add_argument("--feature-losses", action="store_true",
                        help="include the VGG perceptual and emotion losses (random weights, real compute)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op CPU threads (default: torch's); on a shared machine 1 thread is far less "
                             "sensitive to other processes' load")
    parser.add_argument("--seed", type=int, default=0)


# --------------------------------------------------------------------------------------------------------------
# Instrumenting the real training step
# --------------------------------------------------------------------------------------------------------------


class StepProfiler:
    """Charges the wall time of a :class:`SmirkModule` training batch to stages, by instrumenting the module.

    Use :meth:`attach` as a context manager around training; call :meth:`start_batch` / :meth:`end_batch` around
    each batch (the :class:`BatchTimer` callback does). See the module docstring for what goes where.

    Args:
        device: where the module runs (CUDA is synchronized at every section boundary).
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.batches: list[dict[tuple[str, str], float]] = []  # per batch: (path, stage) -> seconds
        self._depth, self._path, self._t0 = 0, "step", 0.0
        self._current: dict[tuple[str, str], float] | None = None
        self._batch_t0 = 0.0
        self.peak_mem_mb = math.nan  # largest memory growth within a timed batch
        self._mem_base = 0.0

    # -- sections
    def _enter(self) -> None:
        self._depth += 1
        if self._depth == 1:
            synchronize(self.device)
            self._t0 = time.perf_counter()

    def _exit(self, stage: str) -> None:
        self._depth -= 1
        if self._depth == 0 and self._current is not None:
            synchronize(self.device)
            self._current[(self._path, stage)] += time.perf_counter() - self._t0

    @contextlib.contextmanager
    def section(self, stage: str) -> Iterator[None]:
        """Charge the enclosed time to ``stage`` (unless an outer section is already running)."""
        self._enter()
        try:
            yield
        finally:
            self._exit(stage)

    def timed(self, fn: Callable, stage: str) -> Callable:
        """``fn`` wrapped in :meth:`section`."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.section(stage):
                return fn(*args, **kwargs)
        return wrapper

    def in_path(self, fn: Callable, path: str) -> Callable:
        """``fn`` that charges what follows it (up to the next path) to ``path``."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            self._path = path
            return fn(*args, **kwargs)
        return wrapper

    # -- batches
    def start_batch(self) -> None:
        synchronize(self.device)
        self._mem_base = _reset_peak_memory(self.device)
        self._current, self._path, self._depth = defaultdict(float), "step", 0
        self._batch_t0 = time.perf_counter()

    def end_batch(self) -> None:
        synchronize(self.device)
        current, self._current = self._current, None
        current[("step", "total")] = time.perf_counter() - self._batch_t0
        self.batches.append(dict(current))
        peak = _peak_memory_mb(self.device) - self._mem_base
        self.peak_mem_mb = peak if math.isnan(self.peak_mem_mb) else max(self.peak_mem_mb, peak)

    # -- instrumentation
    @contextlib.contextmanager
    def attach(self, module: nn.Module) -> Iterator[StepProfiler]:
        """Install the hooks and wrappers on ``module`` (a :class:`SmirkModule`) and remove them on exit."""
        import smirk.module as recipe

        hooked = {"encoder": "encoders", "flame": "flame", "renderer": "render", "masker": "masking",
                  "generator": "translator", "perceptual_loss": "losses", "emotion_loss": "losses",
                  "cycle_loss": "losses"}
        submodules = [(getattr(module, name), stage) for name, stage in hooked.items()
                      if getattr(module, name, None) is not None]
        submodules += [(sub, "encoders") for sub in module.encoder.children()]  # the cycle path calls these
        handles = []
        for sub, stage in submodules:
            handles.append(sub.register_forward_pre_hook(lambda *_: self._enter()))
            handles.append(sub.register_forward_hook(lambda *_, stage=stage: self._exit(stage)))
        methods = {"_landmark_losses": lambda f: self.timed(f, "losses"),
                   "_optimize": lambda f: self.timed(f, "backward_step"),
                   "_reconstruction_path": lambda f: self.in_path(f, "recon"),
                   "_cycle_path": lambda f: self.in_path(f, "cycle")}
        for name, wrap in methods.items():
            object.__setattr__(module, name, wrap(getattr(module, name)))  # shadows the class's method
        functions = {name: getattr(recipe, name) for name in ("reconstruction_loss", "structural_identity_loss")}
        for name, fn in functions.items():
            setattr(recipe, name, self.timed(fn, "losses"))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            for name in methods:
                object.__delattr__(module, name)
            for name, fn in functions.items():
                setattr(recipe, name, fn)

    # -- results
    def summary(self, batch_filter: Callable[[int], bool] = lambda i: True) -> dict[str, dict[str, float]]:
        """Mean ms per batch over the selected batches: ``{"total": {"step": ms}, stage: {path: ms}}``.

        ``other`` (per path ``"step"``) is the batch time minus every stage.
        """
        chosen = [b for i, b in enumerate(self.batches) if batch_filter(i)]
        if not chosen:
            return {}
        out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for batch in chosen:
            for (path, stage), seconds in batch.items():
                out[stage][path] += seconds * 1e3 / len(chosen)
        staged = sum(ms for stage, paths in out.items() if stage != "total" for ms in paths.values())
        out["other"]["step"] += out["total"]["step"] - staged
        return out


class BatchTimer(Callback):
    """Lightning callback: brackets every training batch after the first ``warmup`` with the profiler."""

    def __init__(self, profiler: StepProfiler, warmup: int) -> None:
        self.profiler, self.warmup = profiler, warmup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx >= self.warmup:
            self.profiler.start_batch()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx >= self.warmup:
            self.profiler.end_batch()


# --------------------------------------------------------------------------------------------------------------
# Training-step profile
# --------------------------------------------------------------------------------------------------------------


def make_module(phase: str, size: int, feature_losses: bool, seed: int):
    """The :class:`SmirkModule` of ``phase`` on the synthetic FLAME (random networks; no image grids)."""
    from smirk.losses import EmotionFeatureLoss, VGGPerceptualLoss
    from smirk.module import SmirkModule

    torch.manual_seed(seed)
    extra = {}
    if feature_losses and phase == "core":
        extra = dict(perceptual_loss=VGGPerceptualLoss(allow_random=True),
                     emotion_loss=EmotionFeatureLoss(allow_random=True))
    return SmirkModule(phase=phase, flame_path="synthetic", image_size=size, log_images_every_n_steps=0, **extra)


def make_batch(batch_size: int, size: int, seed: int):
    """One synthetic FLAME batch as a :class:`smirk.data.SmirkBatch` (with the dataset's hull masks)."""
    from facelab.data.synthetic import SyntheticFaceDataset, SyntheticFaceSample
    from smirk.data import as_smirk_batch

    data = SyntheticFaceDataset(num_samples=batch_size, image_size=size, uv_size=64, seed=seed)
    return as_smirk_batch(SyntheticFaceSample.collate(data.generate(list(range(batch_size)))))


def profile_training(phase: str, batch, device: str, args: argparse.Namespace) -> StepProfiler:
    """Train ``warmup + repeat`` (core phase: ``warmup + 2 repeat``) batches of ``batch``; the profiler's record."""
    import lightning as L
    from torch.utils.data import DataLoader

    module = make_module(phase, args.size, args.feature_losses, args.seed)
    kinds = 2 if phase == "core" else 1  # core: generator batches (even) and encoder batches (odd)
    warmup = kinds * math.ceil(args.warmup / kinds)  # keep the kinds' parity: timed batch 0 is a generator batch
    n_batches = warmup + kinds * args.repeat
    profiler = StepProfiler(device)
    trainer = L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_epochs=1,
                        limit_train_batches=n_batches, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[BatchTimer(profiler, warmup)])
    with profiler.attach(module), warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, DataLoader([batch] * n_batches, batch_size=None))
    return profiler


def training_rows(phase: str, profiler: StepProfiler, batch_size: int, device: str) -> list[BenchRow]:
    """One row for the whole step (images/s) and one per stage (ms, % of the step, per path and batch kind)."""
    overall = profiler.summary()
    kinds = {"gen": profiler.summary(lambda i: i % 2 == 0), "enc": profiler.summary(lambda i: i % 2 == 1)}
    step_ms = overall["total"]["step"]
    extra = _kind_columns(kinds, phase, lambda s: s["total"]["step"]) | {"pct": 100.0}
    if phase == "core":
        extra |= {path: sum(paths.get(path[:-3], 0.0) for paths in overall.values())
                  for path in ("recon_ms", "cycle_ms")}
    rows = [BenchRow(bench="smirk", impl=f"train_{phase}", device=device, batch=batch_size, ms=step_ms,
                     items_per_s=batch_size * 1e3 / step_ms, peak_mem_mb=profiler.peak_mem_mb, extra=extra)]
    for stage in STAGES:
        paths = overall.get(stage, {})
        ms = sum(paths.values())
        if ms == 0 and stage in ("render", "masking", "translator"):
            continue  # not part of this phase
        extra = _kind_columns(kinds, phase, lambda s, stage=stage: sum(s.get(stage, {}).values()))
        extra |= {"pct": 100.0 * ms / step_ms}
        if phase == "core":
            extra |= {"recon_ms": paths.get("recon", 0.0), "cycle_ms": paths.get("cycle", 0.0)}
        rows.append(BenchRow(bench="smirk", impl=f"train_{phase}/{stage}", device=device, batch=batch_size, ms=ms,
                             items_per_s=math.nan, peak_mem_mb=math.nan, extra=extra))
    return rows


def _kind_columns(kinds: dict, phase: str, value: Callable[[dict], float]) -> dict[str, float]:
    """Per-batch-kind columns of the core phase (generator / encoder batches)."""
    if phase != "core":
        return {}
    return {f"{kind}_batch_ms": value(summary) if summary else math.nan for kind, summary in kinds.items()}


def _reset_peak_memory(device: torch.device) -> float:
    """Reset the peak-memory mark (CUDA allocator, or the CPU resident set's high-water mark on Linux); the
    current usage in MiB (NaN where the mark cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return proc_status_kb("VmRSS") / 1024
    except OSError:
        return math.nan


def _peak_memory_mb(device: torch.device) -> float:
    """Peak usage in MiB since :func:`_reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        return proc_status_kb("VmHWM") / 1024
    except OSError:
        return math.nan


# --------------------------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------------------------




@torch.inference_mode()
def encode(module, image: torch.Tensor):
    """The bare encoder stack: (B, 3, H, W) -> :class:`smirk.networks.SmirkEncoding`."""
    return module.encoder(image)


@torch.inference_mode()
def reconstruct(module, image: torch.Tensor):
    """The whole reconstruction: encoders, FLAME and the face-region render, as ``SmirkModule._render`` does."""
    return module._render(module.encoder(image))


def inference_rows(module, device: str, args: argparse.Namespace) -> list[BenchRow]:
    """Bare encoder stack vs encoders + FLAME + face-region render, per inference batch size."""
    rows = []
    module = module.eval()
    for batch in args.infer_batch:
        image = torch.rand(batch, 3, args.size, args.size, device=device,
                           generator=torch.Generator(device).manual_seed(args.seed))
        encoders = functools.partial(encode, module, image)
        reconstruction = functools.partial(reconstruct, module, image)
        enc_ms, rec_ms = interleaved_medians([encoders, reconstruction], device, max(1, args.warmup), args.repeat,
                                             args.min_time)
        ratio = enc_ms / rec_ms
        for name, ms, fn, extra in (("infer/encoders", enc_ms, encoders, {}),
                                    ("infer/reconstruction", rec_ms, reconstruction, {"ratio_vs_encoders": ratio})):
            rows.append(BenchRow(bench="smirk", impl=name, device=device, batch=batch, ms=ms,
                                 items_per_s=batch * 1e3 / ms, peak_mem_mb=peak_memory_mb(fn, device), extra=extra))
    return rows


# --------------------------------------------------------------------------------------------------------------
# The benchmark protocol (facelab.bench): add_arguments / run / report
# --------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[BenchRow]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # for the process, so the table's title reports it
    rows: list[BenchRow] = []
    for device in available_devices(args.device):
        if not args.skip_train:
            batch = make_batch(args.train_batch, args.size, args.seed).to(device)
            for phase in args.phases:
                profiler = profile_training(phase, batch, device, args)
                rows += training_rows(phase, profiler, args.train_batch, device)
        if not args.skip_infer:
            module = make_module("core", args.size, False, args.seed).to(device)
            rows += inference_rows(module, device, args)
    return _same_columns(rows)


def _same_columns(rows: list[BenchRow]) -> list[BenchRow]:
    """Give every row every extra column (NaN where it does not apply): the table prints the first row's."""
    columns = list(dict.fromkeys(key for row in rows for key in row.extra))
    for row in rows:
        row.extra = {key: row.extra.get(key, math.nan) for key in columns}
    return rows


def report(rows: Sequence[BenchRow]) -> bool:
    """Print the goals with pass/fail; True when every goal that was measured passes."""
    checks = []
    for row in rows:
        if row.impl == "train_core":
            share = sum(r.ms for r in rows if r.device == row.device and r.impl in ("train_core/render",
                                                                                   "train_core/masking")) / row.ms
            checks.append((f"[{row.device}] render + masking = {100 * share:.1f}% of the core training step "
                           f"(B={row.batch}) <= {100 * MAX_RENDER_MASK_SHARE:.0f}%", share <= MAX_RENDER_MASK_SHARE))
        if row.impl == "infer/reconstruction":
            ratio = row.extra["ratio_vs_encoders"]
            checks.append((f"[{row.device}] reconstruction at B={row.batch}: {row.items_per_s:.1f} images/s = "
                           f"{100 * ratio:.0f}% of the bare encoder stack >= {100 * MIN_RECON_THROUGHPUT_RATIO:.0f}%",
                           ratio >= MIN_RECON_THROUGHPUT_RATIO))
    return print_goals(checks)


def main(argv: list[str] | None = None) -> int:
    title = "smirk: training-step profile and inference"
    return bench_main(argv, "smirk.bench", __doc__, "smirk", title, add_arguments, run, report)


if __name__ == "__main__":
    raise SystemExit(main())
