"""Speed of DNPM's speech -> ARKit network (:class:`dnpm.speech_model.SpeechToArkit`) at inference.

Run it with ``facelab bench dnpm-speech [options]`` or ``python -m dnpm.bench_speech [options]``.

**Real-time factor** (``rtf`` = seconds of audio per second of compute; goal >= 20x on CPU at 30 fps for the small
config): :meth:`SpeechToArkit.predict` (wav2vec 2.0 encoder + autoregressive decoder with cached keys / values,
windows of ``max_frames`` with ``--overlap``) on clips of ``--seconds`` (default 10 s and 60 s) of random audio,
medians of ``--repeat`` interleaved rounds. The network is the CPU default of ``configs/dnpm_speech.yaml`` (d 64, 4
heads, 1 layer; the small random wav2vec 2.0 of :data:`dnpm.speech_model.SMALL_WAV2VEC2`); ``--wav2vec-base``
times the wav2vec 2.0 *base* architecture (768 wide, 12 layers; random weights: speed only).

**Peak memory** of one ``predict`` of a ``--long-minutes`` (default 10) clip: the peak resident set size above the
start on CPU (the CUDA allocator's peak on a GPU); windows keep it bounded by the window length, not the clip.

On a shared CPU pass ``--threads 1``.
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

MIN_RTF = 20.0
SAMPLE_RATE = 16000

#: wav2vec 2.0 base's architecture (facebook/wav2vec2-base): only for timing, weights random.
WAV2VEC2_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "mask_time_prob": 0.0,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0], help="clip lengths timed for RTF")
    parser.add_argument("--long-minutes", type=float, default=10.0, help="clip length of the peak-memory row")
    parser.add_argument("--overlap", type=int, default=30, help="frames shared by consecutive windows")
    parser.add_argument("--d-model", type=int, default=64, help="decoder width")
    parser.add_argument("--max-frames", type=int, default=600, help="frames per window")
    parser.add_argument("--wav2vec-base", action="store_true", help="time wav2vec 2.0 base's architecture too")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (medians)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--min-time", type=float, default=0.0, help="keep repeating for at least this many seconds")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)


def _network(args: argparse.Namespace, config: dict | None, device: str):
    import logging

    from dnpm.speech_model import SpeechToArkit

    quiet = logging.getLogger("dnpm.speech_model")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # random weights on purpose: this times, it does not predict
    try:
        net = SpeechToArkit(d_model=args.d_model, max_frames=args.max_frames, wav2vec_config=config)
    finally:
        quiet.setLevel(level)
    return net.to(device).eval()


def _predict(net, audio: torch.Tensor, overlap: int) -> Callable[[], None]:
    def call() -> None:
        net.predict(audio, overlap=overlap)

    return call


def run(args: argparse.Namespace) -> list[BenchRow]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows: list[BenchRow] = []
    configs = {"small": None}
    if args.wav2vec_base:
        configs["w2v2-base"] = WAV2VEC2_BASE
    for device in available_devices(getattr(args, "device", "auto")):
        for name, config in configs.items():
            torch.manual_seed(args.seed)
            net = _network(args, config, device)
            clips = {s: torch.randn(int(s * SAMPLE_RATE), device=device) * 0.1 for s in args.seconds}
            fns = [_predict(net, a, args.overlap) for a in clips.values()]
            medians = interleaved_medians(fns, device, args.warmup, args.repeat, args.min_time)
            for (seconds, _), ms in zip(clips.items(), medians):
                rows.append(
                    BenchRow(
                        bench="dnpm-speech",
                        impl=f"{name}/predict@{seconds:g}s",
                        device=device,
                        batch=1,
                        ms=ms,
                        items_per_s=seconds * 30 * 1e3 / ms,
                        peak_mem_mb=float("nan"),
                        extra={"rtf": seconds * 1e3 / ms, "audio_s": seconds},
                    )
                )
            if args.long_minutes > 0 and name == "small":
                seconds = args.long_minutes * 60
                long = torch.randn(int(seconds * SAMPLE_RATE), device=device) * 0.1
                import time

                start = time.perf_counter()
                peak = peak_memory_mb(_predict(net, long, args.overlap), device)
                ms = (time.perf_counter() - start) * 1e3
                rows.append(
                    BenchRow(
                        bench="dnpm-speech",
                        impl=f"{name}/predict@{args.long_minutes:g}min",
                        device=device,
                        batch=1,
                        ms=ms,
                        items_per_s=seconds * 30 * 1e3 / ms,
                        peak_mem_mb=peak,
                        extra={"rtf": seconds * 1e3 / ms, "audio_s": seconds},
                    )
                )
    return rows


def report(rows: Sequence[BenchRow]) -> bool:
    """The real-time goal of the small config on CPU, PASS/FAIL."""
    checks = [
        (
            f"[{r.device}] {r.impl}: real-time factor {r.extra['rtf']:.1f}x >= {MIN_RTF:.0f}x (30 fps)",
            r.extra["rtf"] >= MIN_RTF,
        )
        for r in rows
        if r.impl.startswith("small/") and r.device == "cpu"
    ]
    return print_goals(checks)


def main(argv: list[str] | None = None) -> int:
    title = "dnpm-speech: speech -> ARKit inference (real-time factor, peak memory)"
    return bench_main(argv, "dnpm.bench_speech", __doc__, "dnpm_speech", title, add_arguments, run, report)


if __name__ == "__main__":
    raise SystemExit(main())
