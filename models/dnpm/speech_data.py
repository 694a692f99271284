"""Speech + per-frame ARKit data for DNPM's speech-driven animation (paper §IV-A): the embedded synthetic default,
a WAV + Live Link Face CSV folder, and one LightningDataModule.

Every sample is ``audio`` (S,) float32 at 16 kHz mono and ``coefficients`` (T, 52) ARKit weights
(:data:`dnpm.arkit.ARKIT_NAMES`) at the coefficient frame rate (30 fps: ``T = round(S * fps / 16000)``), plus an
``identity`` (K,) of the bilinear model the vertex loss runs through.

Embedded default: synthetic speech (:class:`SyntheticSpeechDataset`)
---------------------------------------------------------------------
What stands in for 4 hours of news video with image-to-ARKit labels: procedurally generated *utterances* whose
audio is synthesised from the mouth articulation that the ARKit trajectories describe, so the audio -> ARKit
mapping is learnable and its ground truth known.

1. **Phones and syllables.** An utterance is words of 1-3 CV / CVC syllables separated by short pauses; phones
   come from a small inventory (:data:`VOWELS`: a e i o u; :data:`CONSONANTS`: bilabial stops / nasal p b m,
   labiodental fricatives f v, alveolar t d s n l, velar k g, the glide w). Each phone sets targets of four
   articulators: jaw opening, lip rounding, lip closure, lip spreading (and the lower-lip tuck of f / v).
   Durations: vowels 90-200 ms, consonants 50-110 ms, scaled by a per-speaker rate.
2. **Coarticulation.** The step-wise targets are smoothed by a Gaussian (sigma 22 ms) at a 400 Hz control rate:
   smooth, syllable-rate (~4-6 Hz) motion.
3. **ARKit trajectories** are fixed linear maps of the articulators (:func:`articulators_to_arkit`): ``jawOpen``,
   ``mouthClose``, ``mouthFunnel`` / ``mouthPucker`` (rounding), ``mouthPress_L/R`` (closure),
   ``mouthStretch_L/R`` / ``mouthSmile_L/R`` (spreading), ``mouthLowerDown`` / ``mouthUpperUp``,
   ``mouthRollLower`` (f / v), and ``browInnerUp`` following the pitch accents; the other channels stay 0.
   Frames are the control signal sampled at frame centres.
4. **Audio (source-filter).** A glottal source (Rosenberg pulses at a pitch f0 with declination, accents and
   jitter; voiced phones only, silenced by lip closure except the nasal m) through four time-varying formant
   resonators whose frequencies follow the articulators (F1 rises with jaw opening; F2 rises with spreading and
   falls with rounding; F3 falls with rounding), scaled by a per-speaker vocal-tract length; plus aspiration noise,
   frication noise (s: 4-8 kHz, f / v: 1.5-7 kHz), release bursts at the opening of every stop (spectrum by place:
   bilabial low, alveolar high, velar mid), a nasal murmur for m / n, and a -45 dB noise floor. 16 kHz.

Real layout: a WAV + a Live Link Face CSV (:class:`LiveLinkSpeechDataset`)
-------------------------------------------------------------------------
``ROOT/**/<take>.wav`` beside ``<take>.csv`` (Epic's Live Link Face app records takes as CSV; record the audio
with the take, or export it from the take's ``.mov`` with ``ffmpeg -i take.mov -ac 1 -ar 16000 take.wav``).
Audio is read with :func:`read_wav` (PCM 8/16/24/32-bit or float WAV; stereo is averaged to mono; any rate is
resampled to 16 kHz); the CSV's frames (usually 60 fps) are resampled to the coefficient frame rate by linear
interpolation at the frame centres; the pair is cut to the shorter of the two. Unusable pairs are refused with
a :class:`SpeechDataError` naming the file and the reason (``empty``, ``silent``, ``unsupported``, ``too_short``,
``missing_columns``, ...).

Real layouts: VOCASET and BIWI (:mod:`dnpm.speech_corpora`)
-----------------------------------------------------------
The two public speech-to-mesh corpora in FaceFormer's preprocessed layout (``wav/``, ``vertices_npy/``,
``templates.pkl``; ``source="vocaset"`` / ``"biwi"``): they carry per-frame vertices, so the ARKit targets are
fitted onto a 52-shape ARKit basis on the corpus topology that the user gives (``basis``).
"""

from __future__ import annotations

import math
import os
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset

from dnpm.arkit import NUM_ARKIT, arkit_index, read_live_link_csv
from facelab.data.image_io import DataError
from facelab.data.modules import SplitLoaders

__all__ = [
    "CONSONANTS",
    "SAMPLE_RATE",
    "VOWELS",
    "LiveLinkSpeechDataset",
    "SpeechBatch",
    "SpeechDataError",
    "SpeechDataModule",
    "SpeechSample",
    "SyntheticSpeechDataset",
    "articulators_to_arkit",
    "cut_to_overlap",
    "num_frames",
    "random_crop",
    "read_wav",
    "resample_frames",
    "synthesize_utterance",
]

SAMPLE_RATE = 16000
FPS = 30
CONTROL_RATE = 400  # Hz: articulator / source-parameter rate of the synthesiser (40 samples)
SILENCE_PEAK = 1e-4  # |x| below this everywhere: a silent file


class SpeechDataError(DataError):
    """A speech / coefficient file that cannot be used (``reason``: ``not_found``, ``empty``, ``silent``,
    ``unsupported``, ``too_short``, ``missing_columns``, ``no_pairs``, ...)."""


def num_frames(samples: int, fps: float = FPS, sample_rate: int = SAMPLE_RATE) -> int:
    """Coefficient frames of ``samples`` audio samples: ``round(samples * fps / sample_rate)``."""
    return int(round(samples * fps / sample_rate))


# --------------------------------------------------------------------------------------------------------- WAV I/O
def read_wav(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A WAV file as (S,) float32 mono in [-1, 1] at ``sample_rate`` (stereo averaged, other rates resampled with a
    polyphase filter).

    Raises:
        SpeechDataError: ``not_found``; ``unsupported`` (not a RIFF/WAVE file, or a compressed / exotic encoding:
            convert with ``ffmpeg -i IN -ac 1 -ar 16000 -sample_fmt s16 OUT.wav``); ``empty`` (no samples);
            ``silent`` (peak below 1e-4: nothing to animate from).
    """
    import scipy.io.wavfile
    import scipy.signal

    path = Path(path)
    if not path.is_file():
        raise SpeechDataError("not_found", "no such file", path)
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        raise SpeechDataError(
            "unsupported",
            "not a RIFF/WAVE file (give a PCM or float .wav; convert other audio "
            "with `ffmpeg -i IN -ac 1 -ar 16000 OUT.wav`)",
            path,
        )
    try:
        rate, data = scipy.io.wavfile.read(path)
    except (ValueError, EOFError, OSError) as err:
        raise SpeechDataError(
            "unsupported",
            f"unreadable WAV ({err}); PCM 8/16/24/32-bit and float WAVs are read "
            "(convert with `ffmpeg -i IN -ac 1 -ar 16000 -sample_fmt s16 OUT.wav`)",
            path,
        ) from err
    if data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype == np.int16:
        x = data.astype(np.float32) / 32768.0
    elif data.dtype == np.int32:  # 32-bit PCM, and 24-bit PCM (scipy left-justifies it into int32)
        x = (data.astype(np.float64) / 2147483648.0).astype(np.float32)
    elif data.dtype.kind == "f":
        x = data.astype(np.float32)
    else:
        raise SpeechDataError("unsupported", f"sample type {data.dtype} is not supported", path)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.size == 0:
        raise SpeechDataError("empty", "the WAV has no samples", path)
    if not np.isfinite(x).all():
        raise SpeechDataError("unsupported", "the WAV has NaN or infinite samples", path)
    if float(np.abs(x).max()) < SILENCE_PEAK:
        raise SpeechDataError("silent", "the audio is silent (peak below 1e-4): no speech to animate from", path)
    if rate != sample_rate:
        g = math.gcd(int(rate), int(sample_rate))
        x = scipy.signal.resample_poly(x, sample_rate // g, int(rate) // g).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """(S,) float audio in [-1, 1] -> a 16-bit PCM mono WAV."""
    path = Path(path)
    pcm = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return path


def resample_frames(times: np.ndarray, values: np.ndarray, fps: float, count: int | None = None) -> np.ndarray:
    """(N, ...) values at ``times`` (s, increasing) -> (T, ...) float32 at the centres ``(t + 0.5) / fps`` of ``T``
    frames (linear interpolation, held at the ends; any trailing shape: (N, 52) coefficients, (N, V, 3) vertices);
    ``T`` defaults to the frames the take covers."""
    times = np.asarray(times, dtype=np.float64)
    values = np.asarray(values)
    if count is None:
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / fps
        count = int(math.floor((times[-1] - times[0] + step) * fps + 1e-6))
    centres = np.clip(times[0] + (np.arange(count) + 0.5) / fps, times[0], times[-1])
    flat = values.reshape(len(values), -1)
    if len(times) == 1:
        return np.repeat(flat, count, axis=0).reshape(count, *values.shape[1:]).astype(np.float32)
    hi = np.clip(np.searchsorted(times, centres, side="right"), 1, len(times) - 1)
    lo = hi - 1
    span = times[hi] - times[lo]
    w = np.where(span > 0, (centres - times[lo]) / np.where(span > 0, span, 1.0), 0.0)[:, None]
    out = flat[lo] * (1.0 - w) + flat[hi] * w
    return out.reshape(count, *values.shape[1:]).astype(np.float32)


def cut_to_overlap(audio: np.ndarray, frames: np.ndarray, fps: float, path: str | os.PathLike) -> tuple:
    """``(audio, frames)`` cut to the shorter of the two: ``T = min(num_frames(len(audio)), len(frames))`` frames
    and the ``round(T * 16000 / fps)`` samples they span.

    Raises:
        SpeechDataError: ``too_short`` (fewer than 2 frames in the overlap; ``path`` names the take).
    """
    t = min(num_frames(len(audio), fps), len(frames))
    if t < 2:
        raise SpeechDataError("too_short", f"fewer than 2 frames at {fps:g} fps in the audio / frames overlap", path)
    return audio[: int(round(t * SAMPLE_RATE / fps))], frames[:t]


def random_crop(
    rng: np.random.Generator, length: int, fps: float, audio: np.ndarray, *frames: np.ndarray
) -> tuple[np.ndarray, ...]:
    """A training crop of ``length`` frames at a random offset: ``(audio, *frames)`` cut alike (every ``frames``
    array (T, ...) at ``fps``, the audio at 16 kHz); unchanged when ``length`` is 0 or not shorter than ``T``."""
    t = len(frames[0])
    if not length or t <= length:
        return (audio, *frames)
    start = int(rng.integers(0, t - length + 1))
    spf = SAMPLE_RATE / fps
    cut = audio[int(round(start * spf)) : int(round((start + length) * spf))]
    return (cut, *(f[start : start + length] for f in frames))


# ----------------------------------------------------------------------------------------- the synthetic speaker
@dataclass(frozen=True)
class Phone:
    """A phone's articulator targets (jaw, round, close, spread, tuck), its source (voiced, frication band, burst
    band at release, nasal) and duration range in seconds."""

    jaw: float
    round: float
    close: float
    spread: float
    tuck: float = 0.0
    voiced: bool = True
    frication: tuple[float, float] | None = None
    burst: tuple[float, float] | None = None
    nasal: bool = False
    duration: tuple[float, float] = (0.05, 0.11)


VOWELS: dict[str, Phone] = {
    "a": Phone(0.85, 0.0, 0.0, 0.2, duration=(0.10, 0.20)),
    "e": Phone(0.45, 0.0, 0.0, 0.6, duration=(0.09, 0.18)),
    "i": Phone(0.15, 0.0, 0.0, 0.95, duration=(0.09, 0.17)),
    "o": Phone(0.50, 0.75, 0.0, 0.0, duration=(0.10, 0.19)),
    "u": Phone(0.20, 1.0, 0.0, 0.0, duration=(0.09, 0.17)),
}
CONSONANTS: dict[str, Phone] = {
    "p": Phone(0.05, 0.0, 1.0, 0.0, voiced=False, burst=(300.0, 1800.0)),
    "b": Phone(0.05, 0.0, 1.0, 0.0, burst=(300.0, 1800.0)),
    "m": Phone(0.05, 0.0, 1.0, 0.0, nasal=True),
    "f": Phone(0.12, 0.0, 0.3, 0.1, tuck=1.0, voiced=False, frication=(1500.0, 7000.0)),
    "v": Phone(0.12, 0.0, 0.3, 0.1, tuck=1.0, frication=(1500.0, 7000.0)),
    "t": Phone(0.15, 0.0, 0.0, 0.3, voiced=False, burst=(3500.0, 7500.0)),
    "d": Phone(0.15, 0.0, 0.0, 0.3, burst=(3500.0, 7500.0)),
    "s": Phone(0.10, 0.0, 0.0, 0.5, voiced=False, frication=(4000.0, 7800.0)),
    "n": Phone(0.18, 0.0, 0.0, 0.3, nasal=True),
    "l": Phone(0.25, 0.0, 0.0, 0.3),
    "k": Phone(0.30, 0.0, 0.0, 0.1, voiced=False, burst=(1500.0, 3500.0)),
    "g": Phone(0.30, 0.0, 0.0, 0.1, burst=(1500.0, 3500.0)),
    "w": Phone(0.15, 0.9, 0.0, 0.0),
}
_REST = Phone(0.03, 0.0, 0.4, 0.0, voiced=False, duration=(0.12, 0.35))  # a pause: lips lightly together
_ARTICULATORS = ("jaw", "round", "close", "spread", "tuck")


def articulators_to_arkit(art: np.ndarray, accent: np.ndarray | None = None) -> np.ndarray:
    """(N, 5) articulators (jaw, round, close, spread, tuck) [+ (N,) pitch accent] -> (N, 52) ARKit weights in
    [0, 1] (the fixed linear map of the module docstring)."""
    jaw, rnd, close, spread, tuck = (art[:, i] for i in range(5))
    out = np.zeros((len(art), NUM_ARKIT), dtype=np.float64)

    def put(name: str, value: np.ndarray) -> None:
        out[:, arkit_index(name)] = value

    put("jawOpen", jaw)
    put("mouthClose", 0.6 * close * np.clip(jaw / 0.15, 0, 1))  # lips held together over a slightly open jaw
    put("mouthFunnel", 0.7 * rnd * np.clip(jaw / 0.3, 0, 1))
    put("mouthPucker", 0.9 * rnd * (1 - 0.6 * jaw))
    for side in ("_L", "_R"):
        put("mouthPress" + side, 0.7 * close)
        put("mouthStretch" + side, 0.5 * spread)
        put("mouthSmile" + side, 0.25 * spread)
        put("mouthLowerDown" + side, 0.5 * jaw * (1 - close))
        put("mouthUpperUp" + side, 0.25 * spread * (1 - close) + 0.3 * tuck)
    put("mouthRollLower", 0.8 * tuck)
    put("mouthRollUpper", 0.3 * close)
    if accent is not None:
        put("browInnerUp", 0.6 * accent)
    return np.clip(out, 0.0, 1.0)


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(x, sigma, axis=0, mode="nearest")


def _utterance(rng: np.random.Generator, seconds: float, rate: float) -> list[tuple[str, Phone, float]]:
    """Phones (name, phone, duration) of words of CV / CVC syllables and pauses, at least ``seconds`` long."""
    vowels, consonants = list(VOWELS), list(CONSONANTS)
    out: list[tuple[str, Phone, float]] = []
    total = 0.0

    def add(name: str, p: Phone) -> None:
        nonlocal total
        d = float(rng.uniform(*p.duration)) / rate
        out.append((name, p, d))
        total += d

    add("_", _REST)
    while total < seconds:
        for _ in range(int(rng.integers(1, 4))):
            c = consonants[int(rng.integers(len(consonants)))]
            add(c, CONSONANTS[c])
            v = vowels[int(rng.integers(len(vowels)))]
            add(v, VOWELS[v])
            if rng.random() < 0.3:
                c = consonants[int(rng.integers(len(consonants)))]
                add(c, CONSONANTS[c])
        add("_", _REST)
    return out


def _resonate(x: np.ndarray, freqs: np.ndarray, bandwidth: float, block: int) -> np.ndarray:
    """``x`` through a 2-pole resonator whose centre follows ``freqs`` (one value per ``block`` samples; the filter
    state carries over block boundaries); unit gain at the centre."""
    from scipy.signal import lfilter

    y = np.empty_like(x)
    zi = np.zeros(2)
    r = math.exp(-math.pi * bandwidth / SAMPLE_RATE)
    for b in range(len(freqs)):
        s = slice(b * block, (b + 1) * block)
        if s.start >= len(x):
            break
        theta = 2 * math.pi * float(freqs[b]) / SAMPLE_RATE
        a = [1.0, -2 * r * math.cos(theta), r * r]
        g = (1 - r) * math.sqrt(1 - 2 * r * math.cos(2 * theta) + r * r)
        y[s], zi = lfilter([g], a, x[s], zi=zi)
    return y


def _band(noise: np.ndarray, lo: float, hi: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = butter(4, [lo / (SAMPLE_RATE / 2), min(hi, 7900.0) / (SAMPLE_RATE / 2)], btype="band", output="sos")
    return sosfilt(sos, noise)


def synthesize_utterance(
    seed: int | np.random.Generator, seconds: float = 3.0, fps: float = FPS
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic utterance: ``(audio (S,) float32 at 16 kHz, coefficients (T, 52) float32 at fps)`` with
    ``T = num_frames(S)`` (module docstring). Deterministic given ``seed``."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    rate = float(rng.uniform(0.85, 1.2))  # speaking rate
    f0_base = float(rng.uniform(95.0, 230.0))
    tract = float(rng.uniform(0.88, 1.12))  # vocal-tract length factor: formants scale by 1 / tract
    phones = _utterance(rng, seconds, rate)
    hop = SAMPLE_RATE // CONTROL_RATE
    n_ctrl = int(round(seconds * CONTROL_RATE))
    n = n_ctrl * hop
    # step-wise targets at the control rate, then coarticulation smoothing
    targets = np.zeros((n_ctrl, 5))
    voiced, nasal = np.zeros(n_ctrl), np.zeros(n_ctrl)
    fric = np.zeros((n_ctrl, 2))  # (s-band, f-band) amplitudes
    bursts: list[tuple[int, tuple[float, float]]] = []
    t = 0.0
    syll_onsets = []
    for name, p, d in phones:
        a, b = int(round(t * CONTROL_RATE)), int(round((t + d) * CONTROL_RATE))
        t += d
        if a >= n_ctrl:
            break
        b = min(b, n_ctrl)
        targets[a:b] = [getattr(p, key) for key in _ARTICULATORS]
        voiced[a:b] = 1.0 if p.voiced else 0.0
        nasal[a:b] = 1.0 if p.nasal else 0.0
        if p.frication is not None:
            fric[a:b, 0 if p.frication[0] > 3000 else 1] = 1.0
        if p.burst is not None and b < n_ctrl:
            bursts.append((b * hop, p.burst))
        if name in VOWELS:
            syll_onsets.append(a)
    art = np.clip(_smooth(targets, 0.022 * CONTROL_RATE), 0, 1)
    voiced_s = np.clip(_smooth(voiced, 0.008 * CONTROL_RATE), 0, 1)
    nasal_s = np.clip(_smooth(nasal, 0.008 * CONTROL_RATE), 0, 1)
    fric_s = np.clip(_smooth(fric, 0.006 * CONTROL_RATE), 0, 1)
    # intonation: declination + accents on some syllables (+ the brows follow the accents)
    tc = np.arange(n_ctrl) / CONTROL_RATE
    accent = np.zeros(n_ctrl)
    for a in syll_onsets:
        if rng.random() < 0.35:
            accent[a : a + int(0.15 * CONTROL_RATE)] = rng.uniform(0.5, 1.0)
    accent = np.clip(_smooth(accent, 0.05 * CONTROL_RATE), 0, 1)
    f0 = f0_base * (1.0 - 0.12 * tc / max(seconds, 1e-3)) * (1.0 + 0.25 * accent)
    # ARKit frames: the control signals at the frame centres
    count = num_frames(n, fps)
    centres = np.clip(((np.arange(count) + 0.5) / fps * CONTROL_RATE).astype(int), 0, n_ctrl - 1)
    coeffs = articulators_to_arkit(art[centres], accent[centres]).astype(np.float32)

    # ---- audio: source
    def up(x: np.ndarray) -> np.ndarray:  # control rate -> samples (linear)
        return np.interp(np.arange(n) / hop, np.arange(len(x)), x)

    f0_s = up(f0) * (1.0 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1)))
    phase = np.cumsum(f0_s / SAMPLE_RATE) % 1.0
    pulse = np.where(
        phase < 0.4,
        0.5 * (1 - np.cos(np.pi * phase / 0.4)),
        np.where(phase < 0.56, np.cos(np.pi * (phase - 0.4) / 0.32), 0.0),
    )
    glottal = np.diff(pulse, prepend=0.0) * 20.0  # flow derivative (lip radiation)
    jaw, rnd, close, spread = (up(art[:, i]) for i in range(4))
    v = up(voiced_s)
    open_lips = 1.0 - 0.97 * close
    noise = rng.standard_normal(n)
    source = glottal * v * (0.3 + 0.7 * np.clip(jaw + 0.3, 0, 1)) + 0.03 * noise * v
    # ---- filter: formants follow the articulators
    scale = 1.0 / tract
    f1 = (250 + 650 * art[:, 0] - 80 * art[:, 1]) * scale
    f2 = (1500 + 700 * art[:, 3] - 750 * art[:, 1] - 200 * art[:, 0]) * scale
    f3 = (2500 + 300 * art[:, 3] - 300 * art[:, 1]) * scale
    f4 = np.full(n_ctrl, 3500.0 * scale)
    oral = sum(
        _resonate(source, f, bw, hop) * g
        for f, bw, g in ((f1, 80, 1.0), (f2, 100, 0.7), (f3, 150, 0.4), (f4, 200, 0.2))
    )
    oral = oral * open_lips
    murmur = _resonate(glottal * up(nasal_s), np.full(n_ctrl, 260.0 * scale), 60, hop) * 0.15
    fr = up(fric_s[:, 0]) * _band(noise, 4000, 7800) * 0.5 + up(fric_s[:, 1]) * _band(noise, 1500, 7000) * 0.2
    audio = oral + murmur + fr
    for at, (lo, hi) in bursts:  # a 12 ms decaying noise burst at each stop's release
        m = min(n - at, int(0.012 * SAMPLE_RATE))
        if m > 8:
            env = np.exp(-np.arange(m) / (0.003 * SAMPLE_RATE))
            audio[at : at + m] += 0.6 * env * _band(rng.standard_normal(m + 64), lo, hi)[64:]
    audio = audio / max(float(np.abs(audio).max()), 1e-6) * 0.5
    audio = audio + 10 ** (-45 / 20) * 0.5 * rng.standard_normal(n)
    return audio.astype(np.float32), coeffs


# ------------------------------------------------------------------------------------------------------- datasets
@dataclass
class SpeechSample:
    """One clip: ``audio`` (S,) 16 kHz, ``coefficients`` (T, 52) ARKit, ``identity`` (K,), ``key``."""

    audio: Tensor
    coefficients: Tensor
    identity: Tensor
    key: str


@dataclass
class SpeechBatch:
    """Clips padded to the longest: ``audio`` (B, S), ``coefficients`` (B, T, 52), ``frame_mask`` (B, T) (1 =
    a real frame), ``audio_lengths`` (B,), ``identity`` (B, K), ``keys``."""

    audio: Tensor
    coefficients: Tensor
    frame_mask: Tensor
    audio_lengths: Tensor
    identity: Tensor
    keys: list[str]

    @staticmethod
    def collate(samples: list[SpeechSample]) -> SpeechBatch:
        b = len(samples)
        s = max(x.audio.shape[0] for x in samples)
        t = max(x.coefficients.shape[0] for x in samples)
        audio = torch.zeros(b, s)
        coeffs = torch.zeros(b, t, NUM_ARKIT)
        mask = torch.zeros(b, t)
        for i, x in enumerate(samples):
            audio[i, : x.audio.shape[0]] = x.audio
            coeffs[i, : x.coefficients.shape[0]] = x.coefficients
            mask[i, : x.coefficients.shape[0]] = 1.0
        return SpeechBatch(
            audio=audio,
            coefficients=coeffs,
            frame_mask=mask,
            audio_lengths=torch.tensor([x.audio.shape[0] for x in samples]),
            identity=torch.stack([x.identity for x in samples]),
            keys=[x.key for x in samples],
        )

    def to(self, device) -> SpeechBatch:
        return SpeechBatch(
            self.audio.to(device),
            self.coefficients.to(device),
            self.frame_mask.to(device),
            self.audio_lengths.to(device),
            self.identity.to(device),
            self.keys,
        )


_SPLIT_SEED = {"train": 0, "val": 1, "test": 2}


class SyntheticSpeechDataset(Dataset):
    """The embedded default (module docstring): ``count`` utterances of ``seconds`` seconds, each with a random
    bilinear identity (N(0, I) over ``num_identity`` components, or 0 when ``random_identity`` is False).
    Deterministic per (seed, split, index); splits draw from disjoint seeds."""

    def __init__(
        self,
        count: int,
        split: str = "train",
        seed: int = 0,
        seconds: float = 3.0,
        fps: float = FPS,
        num_identity: int = 50,
        random_identity: bool = True,
    ):
        if count < 0 or seconds < 0.2:
            raise ValueError(f"need count >= 0 and seconds >= 0.2, got {count}, {seconds}")
        self.count, self.split, self.seed, self.seconds, self.fps = int(count), split, int(seed), float(seconds), fps
        self.num_identity, self.random_identity = int(num_identity), bool(random_identity)
        self._cache: dict[int, SpeechSample] = {}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> SpeechSample:
        if index in self._cache:
            return self._cache[index]
        rng = np.random.default_rng([self.seed, _SPLIT_SEED.get(self.split, 3), int(index)])
        audio, coeffs = synthesize_utterance(rng, self.seconds, self.fps)
        ident = rng.standard_normal(self.num_identity) if self.random_identity else np.zeros(self.num_identity)
        sample = SpeechSample(
            torch.from_numpy(audio),
            torch.from_numpy(coeffs),
            torch.tensor(ident).float(),
            f"synthetic/{self.split}/{index:05d}",
        )
        self._cache[index] = sample
        return sample


def scan_live_link(root: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``(wav, csv)`` pairs below ``root``: every ``<take>.wav`` with a ``<take>.csv`` beside it (sorted).

    Raises:
        SpeechDataError: ``not_found`` (not a folder), ``no_pairs``.
    """
    root = Path(root)
    if not root.is_dir():
        raise SpeechDataError("not_found", "not a directory (expected <take>.wav + <take>.csv pairs)", root)
    pairs = [(w, w.with_suffix(".csv")) for w in sorted(root.rglob("*.wav")) if w.with_suffix(".csv").is_file()]
    if not pairs:
        raise SpeechDataError("no_pairs", "no <take>.wav with a <take>.csv (Live Link Face) beside it", root)
    return pairs


class LiveLinkSpeechDataset(Dataset):
    """WAV + Live Link Face CSV pairs (module docstring) as :class:`SpeechSample` (identity zeros: a Live Link take
    carries no bilinear identity; the vertex loss then runs on the mean face).

    Args:
        pairs: from :func:`scan_live_link`.
        fps: the coefficient frame rate the CSV frames are resampled to.
        csv_fps: the takes' frame rate (None: inferred from the timecodes).
        num_identity: length of the zero identity.
        crop_frames: training crops of this many frames at random offsets (0: whole takes).
        seed: crop seed.
    """

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        fps: float = FPS,
        csv_fps: float | None = None,
        num_identity: int = 50,
        crop_frames: int = 0,
        seed: int = 0,
    ):
        self.pairs, self.fps, self.csv_fps = list(pairs), float(fps), csv_fps
        self.num_identity, self.crop_frames = int(num_identity), int(crop_frames)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        wav, csv_path = self.pairs[index]
        audio = read_wav(wav)
        take = read_live_link_csv(csv_path, self.csv_fps)
        return cut_to_overlap(audio, resample_frames(take.times, take.coefficients, self.fps), self.fps, wav)

    def __getitem__(self, index: int) -> SpeechSample:
        audio, coeffs = random_crop(self.rng, self.crop_frames, self.fps, *self.load(index))
        return SpeechSample(
            torch.from_numpy(audio.copy()),
            torch.from_numpy(coeffs.copy()),
            torch.zeros(self.num_identity),
            str(self.pairs[index][0].with_suffix("")),
        )


def _split_pairs(pairs: list, fractions: tuple[float, float, float], seed: int) -> dict[str, list]:
    order = np.random.default_rng(seed).permutation(len(pairs))
    n = len(pairs)
    n_val = max(1 if fractions[1] > 0 and n >= 3 else 0, round(fractions[1] * n))
    n_test = max(1 if fractions[2] > 0 and n >= 3 else 0, round(fractions[2] * n))
    picked = [pairs[i] for i in order]
    return {"test": picked[:n_test], "val": picked[n_test : n_test + n_val], "train": picked[n_test + n_val :]}


class SpeechDataModule(SplitLoaders, LightningDataModule):
    """Speech + ARKit clips for :class:`dnpm.module_speech.SpeechModule`; batches are :class:`SpeechBatch`.

    Args:
        source: ``synthetic`` (the embedded default), ``livelink`` (``root``: WAV + Live Link CSV pairs, split
            by take), ``vocaset`` or ``biwi`` (``root``: the corpus in FaceFormer's layout, split by speaker and
            sentence, ARKit targets fitted onto ``basis``: :mod:`dnpm.speech_corpora`).
        root: the Live Link / VOCASET / BIWI folder.
        fps: coefficient frame rate (30).
        batch_size: clips per batch and process (FaceFormer: 1; equal-length synthetic clips batch without
            padding).
        num_workers: DataLoader workers.
        seed: data / split / shuffle seed.
        num_train, num_val, num_test: synthetic utterances per split.
        seconds: synthetic utterance length.
        num_identity: identity length (the bilinear model's components).
        random_identity: synthetic clips get N(0, I) identities (False: the mean face).
        split_fractions: Live Link take shares (train, val, test).
        csv_fps: Live Link takes' frame rate (None: inferred).
        crop_frames: Live Link / VOCASET / BIWI training crops (0: whole takes).
        basis: VOCASET / BIWI: the ``.npy`` (52, V, 3) ARKit blendshape basis on the corpus topology the targets
            are fitted onto (required for those sources).
        subjects: VOCASET / BIWI speakers per split, e.g. ``{"train": ["F2", ...], "val": [...], "test": [...]}``
            (a split left out, or None: the corpus default, FaceFormer's).
        sentences: VOCASET / BIWI sentence numbers per split, the same way.
        vertex_fps: VOCASET / BIWI vertex files' frame rate (None: 60 / 25).
    """

    def __init__(
        self,
        source: Literal["synthetic", "livelink", "vocaset", "biwi"] = "synthetic",
        root: str | None = None,
        fps: float = FPS,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        num_train: int = 256,
        num_val: int = 16,
        num_test: int = 16,
        seconds: float = 3.0,
        num_identity: int = 50,
        random_identity: bool = True,
        split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
        csv_fps: float | None = None,
        crop_frames: int = 0,
        basis: str | None = None,
        subjects: dict[str, list[str]] | None = None,
        sentences: dict[str, list[int]] | None = None,
        vertex_fps: float | None = None,
    ) -> None:
        super().__init__()
        layouts = {
            "livelink": "a folder of <take>.wav + <take>.csv pairs",
            "vocaset": "the VOCASET folder: wav/, vertices_npy/, templates.pkl",
            "biwi": "the BIWI folder: wav/, vertices_npy/, templates.pkl",
        }
        if source != "synthetic" and source not in layouts:
            raise ValueError(f"source must be one of {['synthetic', *layouts]}, got {source!r}")
        if source in layouts and not root:
            raise ValueError(f"source {source!r} needs root ({layouts[source]})")
        for name, table in (("subjects", subjects), ("sentences", sentences)):
            unknown = sorted(set(table or {}) - set(_SPLIT_SEED))
            if unknown:
                raise ValueError(f"{name}: unknown split(s) {unknown}; the splits are train, val, test")
        if source in ("vocaset", "biwi"):
            from dnpm.speech_corpora import load_arkit_basis

            if not basis:
                load_arkit_basis(None, source, "data.init_args.basis")  # the error that explains the basis
        self.save_hyperparameters()
        self.datasets: dict[str, Dataset] = {}

    def _dataset(self, split: str) -> Dataset:
        hp = self.hparams
        if hp.source == "synthetic":
            counts = {"train": hp.num_train, "val": hp.num_val, "test": hp.num_test}
            return SyntheticSpeechDataset(
                counts[split], split, hp.seed, hp.seconds, hp.fps, hp.num_identity, hp.random_identity
            )
        crop = hp.crop_frames if split == "train" else 0
        if hp.source in ("vocaset", "biwi"):
            from dnpm.speech_corpora import CorpusSpeechDataset

            return CorpusSpeechDataset(
                hp.root,
                hp.source,
                split,
                hp.basis,
                (hp.subjects or {}).get(split),
                (hp.sentences or {}).get(split),
                hp.fps,
                hp.vertex_fps,
                hp.num_identity,
                crop,
                hp.seed,
            )
        pairs = _split_pairs(scan_live_link(hp.root), tuple(hp.split_fractions), hp.seed)[split]
        return LiveLinkSpeechDataset(pairs, hp.fps, hp.csv_fps, hp.num_identity, crop, hp.seed)

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
            None: ("train", "val", "test"),
        }[stage]
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self._dataset(split)

    def _ensure_dataset(self, split: str) -> None:
        self.datasets[split] = self._dataset(split)

    def _loader_kwargs(self) -> dict:
        hp = self.hparams
        return dict(
            batch_size=hp.batch_size,
            num_workers=hp.num_workers,
            collate_fn=SpeechBatch.collate,
            persistent_workers=hp.num_workers > 0,
        )


def mean_coefficients(dataset: Dataset) -> Tensor:
    """(52,) mean ARKit vector over every frame of a dataset (the "predict the training mean" baseline)."""
    total, frames = torch.zeros(NUM_ARKIT, dtype=torch.float64), 0
    for i in range(len(dataset)):
        c = dataset[i].coefficients.double()
        total += c.sum(0)
        frames += c.shape[0]
    return (total / max(frames, 1)).float()
