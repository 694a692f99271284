"""DNPM speech data: the synthetic speaker, WAV reading (rates, channels, bit depths, bad files), Live Link pairs."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch

from dnpm.arkit import arkit_index, write_live_link_csv
from dnpm.speech_data import (
    SAMPLE_RATE,
    LiveLinkSpeechDataset,
    SpeechBatch,
    SpeechDataError,
    SpeechDataModule,
    SyntheticSpeechDataset,
    num_frames,
    read_wav,
    resample_frames,
    scan_live_link,
    synthesize_utterance,
    write_wav,
)


def _write(path, data: np.ndarray, rate: int, width: int) -> None:
    """PCM WAV of (S,) or (S, C) float data in [-1, 1] with ``width`` bytes per sample."""
    x = data if data.ndim == 2 else data[:, None]
    ints = np.round(x * (2 ** (8 * width - 1) - 1)).astype(np.int64)
    raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.reshape(-1))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


def test_synthetic_utterance_is_paired_smooth_and_deterministic():
    a, c = synthesize_utterance(3, seconds=2.0)
    assert a.dtype == np.float32 and a.shape == (32000,) and c.shape == (num_frames(32000), 52) == (60, 52)
    assert np.isfinite(a).all() and 0.3 < np.abs(a).max() <= 0.6
    assert (c >= 0).all() and (c <= 1).all()
    jaw = c[:, arkit_index("jawOpen")]
    assert jaw.max() > 0.4 and np.abs(np.diff(jaw)).max() < 0.5  # syllable-rate opening, smooth at 30 fps
    assert c[:, arkit_index("mouthPress_L")].max() > 0.3  # lip closures happen
    a2, c2 = synthesize_utterance(3, seconds=2.0)
    assert np.array_equal(a, a2) and np.array_equal(c, c2)
    # the audio follows the articulation: louder when the jaw is open than when the lips are closed
    spf = SAMPLE_RATE // 30 + 1
    energy = np.array([np.sqrt(np.mean(a[i * 533 : i * 533 + spf] ** 2)) for i in range(len(c) - 1)])
    press = c[:-1, arkit_index("mouthPress_L")]
    assert energy[jaw[:-1] > 0.5].mean() > 2 * energy[press > 0.5].mean()


def test_synthetic_dataset_and_batches():
    ds = SyntheticSpeechDataset(3, "train", seed=0, seconds=1.0, num_identity=50)
    s = ds[1]
    assert s.audio.shape == (16000,) and s.coefficients.shape == (30, 52) and s.identity.shape == (50,)
    other = SyntheticSpeechDataset(3, "val", seed=0, seconds=1.0)[1]
    assert not torch.equal(s.coefficients, other.coefficients)
    b = SpeechBatch.collate([ds[0], SyntheticSpeechDataset(1, "test", seconds=0.5)[0]])
    assert b.audio.shape == (2, 16000) and b.coefficients.shape == (2, 30, 52)
    assert b.frame_mask.sum(1).tolist() == [30, 15] and b.audio_lengths.tolist() == [16000, 8000]


def test_read_wav_resamples_mixes_and_reads_24_bit(tmp_path):
    t = np.arange(8000) / 8000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    _write(tmp_path / "8k.wav", tone, 8000, 2)
    x = read_wav(tmp_path / "8k.wav")
    assert x.shape == (16000,) and abs(np.abs(x).max() - 0.5) < 0.02
    _write(tmp_path / "stereo.wav", np.stack([tone, tone * 0.0], 1), 8000, 2)
    assert abs(np.abs(read_wav(tmp_path / "stereo.wav")).max() - 0.25) < 0.02
    t16 = np.arange(1600) / SAMPLE_RATE
    _write(tmp_path / "24.wav", 0.5 * np.sin(2 * np.pi * 300 * t16), SAMPLE_RATE, 3)
    y = read_wav(tmp_path / "24.wav")
    np.testing.assert_allclose(y, 0.5 * np.sin(2 * np.pi * 300 * t16), atol=1e-5)
    write_wav(tmp_path / "w.wav", y)
    np.testing.assert_allclose(read_wav(tmp_path / "w.wav"), y, atol=1e-4)


@pytest.mark.parametrize("case", ["silent", "empty", "not_wav", "missing"])
def test_read_wav_bad_files(tmp_path, case):
    path = tmp_path / "x.wav"
    if case == "silent":
        _write(path, np.zeros(16000), SAMPLE_RATE, 2)
    elif case == "empty":
        _write(path, np.zeros(0), SAMPLE_RATE, 2)
    elif case == "not_wav":
        path.write_bytes(b"ID3\x03" + b"\x00" * 100)  # an MP3
    expected = {"silent": "silent", "empty": "empty", "not_wav": "unsupported", "missing": "not_found"}[case]
    with pytest.raises(SpeechDataError) as err:
        read_wav(path)
    assert err.value.reason == expected and str(path) in str(err.value)


def test_live_link_pairs_resampled_to_30_fps(tmp_path):
    audio, _ = synthesize_utterance(0, seconds=2.0)
    write_wav(tmp_path / "take1.wav", audio)
    t60 = np.arange(130) / 60
    c60 = np.zeros((130, 52), dtype=np.float32)
    c60[:, arkit_index("jawOpen")] = t60 / t60[-1]  # a ramp: resampling is checkable
    write_live_link_csv(tmp_path / "take1.csv", c60, fps=60)
    (tmp_path / "lonely.wav").write_bytes(b"")  # no CSV: not a pair
    pairs = scan_live_link(tmp_path)
    assert [p[0].name for p in pairs] == ["take1.wav"]
    ds = LiveLinkSpeechDataset(pairs)
    s = ds[0]
    assert s.coefficients.shape == (60, 52) and s.audio.shape == (32000,)  # cut to the shorter: the 2 s audio
    centres = (np.arange(60) + 0.5) / 30
    np.testing.assert_allclose(s.coefficients[:, arkit_index("jawOpen")], centres / t60[-1], atol=1e-5)
    np.testing.assert_allclose(
        resample_frames(t60, c60, 30, 3)[:, arkit_index("jawOpen")], centres[:3] / t60[-1], atol=1e-6
    )
    with pytest.raises(SpeechDataError) as err:
        scan_live_link(tmp_path / "none")
    assert err.value.reason == "not_found"


def test_datamodule_synthetic_loaders():
    dm = SpeechDataModule(batch_size=2, num_train=4, num_val=2, num_test=2, seconds=0.5)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert isinstance(b, SpeechBatch) and b.audio.shape == (2, 8000) and b.coefficients.shape == (2, 15, 52)
    assert len(dm.val_dataloader()) == 1
    with pytest.raises(ValueError, match="root"):
        SpeechDataModule(source="livelink")
