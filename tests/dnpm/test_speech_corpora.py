"""VOCASET / BIWI in FaceFormer's layout (tiny synthetic stand-ins): loading, 60 -> 30 and 25 -> 30 fps, the
speaker / sentence splits, the ARKit basis fit and the errors."""

from __future__ import annotations

import os
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from dnpm.speech_corpora import (
    BIWI,
    VOCASET,
    ArkitBasisFit,
    CorpusSpeechDataset,
    load_arkit_basis,
    scan_corpus,
    select_takes,
)
from dnpm.speech_data import SAMPLE_RATE, SpeechBatch, SpeechDataError, SpeechDataModule, write_wav
from facelab.errors import AssetFormatError, MissingAssetError, UnsafePickleError

V = 30
TINY_VOCASET = replace(VOCASET, num_verts=V)
TINY_BIWI = replace(BIWI, num_verts=V)
TRAIN, VAL = VOCASET.subjects["train"][0], VOCASET.subjects["val"][0]


def _coefficients(frames: int, seed: int) -> np.ndarray:
    """(frames, 52) smooth ARKit trajectories inside (0, 1)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None]
    return (0.5 + 0.4 * np.sin(2 * np.pi * t / rng.uniform(20, 60, 52) + rng.uniform(0, 6, 52))).astype(np.float64)


def _corpus(root, takes, fps, basis, seed=0, templates=None, wav_rate=22050, num_verts=V):
    """A corpus folder: ``takes`` {stem: seconds}; vertices = template + coefficients @ basis at ``fps``."""
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True)
    (root / "vertices_npy").mkdir()
    subjects = sorted({stem.rsplit("_", 1)[0] for stem in takes})
    if templates is None:
        templates = {s: rng.standard_normal((num_verts, 3)) for s in subjects}
    (root / "templates.pkl").write_bytes(pickle.dumps(templates))
    truth = {}
    for i, (stem, seconds) in enumerate(takes.items()):
        n = int(round(seconds * fps))
        c = _coefficients(n, seed + i)
        base = templates.get(stem.rsplit("_", 1)[0], np.zeros((num_verts, 3)))  # a speaker may lack one
        verts = base + np.einsum("tk,kvc->tvc", c, basis)
        np.save(root / "vertices_npy" / f"{stem}.npy", verts.reshape(n, -1).astype(np.float32))  # FaceFormer: (N, 3V)
        s = np.arange(int(seconds * wav_rate)) / wav_rate
        write_wav(root / "wav" / f"{stem}.wav", 0.3 * np.sin(2 * np.pi * 220 * s), sample_rate=wav_rate)
        truth[stem] = c
    return truth


@pytest.fixture
def basis():
    return np.random.default_rng(7).standard_normal((52, V, 3))


def test_basis_fit_recovers_known_coefficients(basis):
    fit = ArkitBasisFit(basis)
    c = np.random.default_rng(1).uniform(0, 1, (6, 52))
    c[0, :5], c[1, :5] = 0.0, 1.0  # on the bounds too
    np.testing.assert_allclose(fit(np.einsum("tk,kvc->tvc", c, basis)), c, atol=1e-5)
    # offsets no [0, 1] combination explains: still weights in [0, 1], and the bounded optimum beats clipping
    d = np.einsum("tk,kvc->tvc", np.random.default_rng(2).uniform(-1.5, 2.5, (4, 52)), basis)
    got = fit(d)
    assert got.min() >= 0 and got.max() <= 1
    a = basis.reshape(52, -1).T
    free = np.linalg.lstsq(a, d.reshape(4, -1).T, rcond=None)[0].T
    res = lambda x: np.linalg.norm(x @ a.T - d.reshape(4, -1), axis=1)  # noqa: E731
    assert (res(got) <= res(np.clip(free, 0, 1)) + 1e-6).all()
    with pytest.raises(ValueError, match="offsets"):
        fit(np.zeros((2, V + 1, 3)))


def test_vocaset_loads_60_to_30_fps_and_fits_the_targets(tmp_path, basis):
    truth = _corpus(tmp_path, {f"{TRAIN}_sentence01": 1.0, f"{TRAIN}_sentence02": 0.5}, 60, basis)
    ds = CorpusSpeechDataset(tmp_path, TINY_VOCASET, "train", basis, num_identity=4)
    assert len(ds) == 2
    s = ds[0]
    assert s.key == f"vocaset/{TRAIN}_sentence01" and s.subject == TRAIN and s.sentence == 1
    assert s.audio.shape == (SAMPLE_RATE,) and s.audio.abs().max() > 0.25  # 22.05 kHz resampled to 16 kHz
    assert s.coefficients.shape == (30, 52) and s.offsets.shape == (30, V, 3) and s.template.shape == (V, 3)
    assert torch.equal(s.identity, torch.zeros(4))
    # 60 -> 30 fps at the frame centres: the 60 fps frames 1, 3, 5, ... (FaceFormer keeps every second frame)
    c30 = truth[f"{TRAIN}_sentence01"][1::2]
    np.testing.assert_allclose(s.offsets.numpy(), np.einsum("tk,kvc->tvc", c30, basis), atol=1e-4)
    np.testing.assert_allclose(s.coefficients.numpy(), c30, atol=1e-4)  # the fit recovers the known weights
    b = SpeechBatch.collate([ds[0], ds[1]])
    assert b.coefficients.shape == (2, 30, 52) and b.frame_mask.sum(1).tolist() == [30, 15]
    crop = CorpusSpeechDataset(tmp_path, TINY_VOCASET, "train", basis, crop_frames=10)[0]
    assert crop.coefficients.shape == (10, 52) and crop.offsets.shape == (10, V, 3)
    assert crop.audio.shape == (10 * SAMPLE_RATE // 30,)


def test_biwi_25_to_30_fps(tmp_path, basis):
    _corpus(tmp_path, {"F2_e01": 1.2}, 25, basis)
    ramp = np.arange(30)[:, None, None] / 25 * np.ones((1, V, 3))  # offsets = t seconds: resampling is checkable
    templates = pickle.loads((tmp_path / "templates.pkl").read_bytes())
    np.save(tmp_path / "vertices_npy" / "F2_e01.npy", (templates["F2"] + ramp).astype(np.float32))  # (N, V, 3)
    s = CorpusSpeechDataset(tmp_path, TINY_BIWI, "train", basis)[0]
    assert s.offsets.shape == (36, V, 3) and s.audio.shape == (int(1.2 * SAMPLE_RATE),)
    centres = np.clip((np.arange(36) + 0.5) / 30, 0, 29 / 25)  # held after the last frame
    np.testing.assert_allclose(s.offsets[:, 0, 0].numpy(), centres, atol=1e-5)
    assert s.coefficients.min() >= 0 and s.coefficients.max() <= 1


def test_speaker_and_sentence_splits(tmp_path, basis):
    test = VOCASET.subjects["test"][0]
    stems = [f"{TRAIN}_sentence01", f"{TRAIN}_sentence30", f"{VAL}_sentence05", f"{VAL}_sentence25"]
    stems += [f"{test}_sentence40", "README_notes"]  # a name with no sentence number belongs to no split
    _corpus(tmp_path, dict.fromkeys(stems, 0.2), 60, basis)
    takes = scan_corpus(tmp_path, TINY_VOCASET)
    assert [(t.subject, t.sentence) for t in takes] == sorted(
        [(TRAIN, 1), (TRAIN, 30), (VAL, 5), (VAL, 25), (test, 40)]
    )

    def split(name, **kw):
        return [(t.subject, t.sentence) for t in CorpusSpeechDataset(tmp_path, TINY_VOCASET, name, basis, **kw).takes]

    assert split("train") == [(TRAIN, 1), (TRAIN, 30)]  # FaceFormer: train speakers, sentences 1-40
    assert split("val") == [(VAL, 25)]  # val / test speakers, sentences 21-40
    assert split("test") == [(test, 40)]
    assert split("val", subjects=[TRAIN, VAL], sentences=range(1, 11)) == [(TRAIN, 1), (VAL, 5)]
    assert select_takes(takes, [test], [1]) == []
    with pytest.raises(SpeechDataError, match="test split") as err:
        split("test", sentences=[1])
    assert err.value.reason == "no_pairs"


def test_errors_name_the_file(tmp_path, basis):
    with pytest.raises(SpeechDataError, match="FaceFormer's layout") as err:
        CorpusSpeechDataset(tmp_path / "none", TINY_VOCASET, basis=basis)
    assert err.value.reason == "not_found" and err.value.path == str(tmp_path / "none")
    _corpus(tmp_path / "a", {f"{TRAIN}_sentence01": 0.3, f"{TRAIN}_sentence02": 0.3}, 60, basis)
    os.rename(tmp_path / "a" / "vertices_npy", tmp_path / "a" / "verts")
    with pytest.raises(SpeechDataError) as err:
        CorpusSpeechDataset(tmp_path / "a", TINY_VOCASET, basis=basis)
    assert err.value.path == str(tmp_path / "a" / "vertices_npy")
    os.rename(tmp_path / "a" / "verts", tmp_path / "a" / "vertices_npy")
    # a .npy of another vertex count: refused when read, naming the file
    np.save(tmp_path / "a" / "vertices_npy" / f"{TRAIN}_sentence02.npy", np.zeros((18, 3 * (V + 1)), np.float32))
    ds = CorpusSpeechDataset(tmp_path / "a", TINY_VOCASET, basis=basis)
    with pytest.raises(SpeechDataError, match=f"{V} vertices") as err:
        ds[1]
    assert err.value.reason == "bad_shape" and err.value.path.endswith(f"{TRAIN}_sentence02.npy")
    # a speaker without a template
    _corpus(tmp_path / "b", {f"{TRAIN}_sentence01": 0.3}, 60, basis, templates={VAL: np.zeros((V, 3))})
    with pytest.raises(SpeechDataError, match="no template for subject") as err:
        CorpusSpeechDataset(tmp_path / "b", TINY_VOCASET, basis=basis)
    assert err.value.reason == "missing_template" and err.value.path.endswith("templates.pkl")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_templates_pickle_is_refused(tmp_path, basis):
    _corpus(tmp_path, {f"{TRAIN}_sentence01": 0.3}, 60, basis)
    marker = tmp_path / "pwned"
    (tmp_path / "templates.pkl").write_bytes(pickle.dumps({TRAIN: _Exploit(marker)}))
    with pytest.raises(UnsafePickleError, match="templates.pkl"):
        CorpusSpeechDataset(tmp_path, TINY_VOCASET, basis=basis)
    assert not marker.exists()


def test_the_basis_is_required_and_checked(tmp_path, basis):
    with pytest.raises(MissingAssetError, match=r"52-shape ARKit blendshape basis .*\(52, 5023, 3\)"):
        load_arkit_basis(None, "vocaset")
    with pytest.raises(MissingAssetError, match="data.init_args.basis"):
        SpeechDataModule(source="biwi", root=str(tmp_path))
    with pytest.raises(MissingAssetError, match="not found"):
        load_arkit_basis(tmp_path / "nope.npy", TINY_BIWI)
    np.save(tmp_path / "b.npy", basis[:51])
    with pytest.raises(AssetFormatError, match=r"b\.npy.*\(52, 30, 3\)"):
        load_arkit_basis(tmp_path / "b.npy", TINY_BIWI)
    np.save(tmp_path / "b.npy", basis)
    assert load_arkit_basis(tmp_path / "b.npy", TINY_BIWI).shape == (52, V, 3)


def test_datamodule_reads_vocaset(tmp_path):
    n = VOCASET.num_verts
    full = np.random.default_rng(3).standard_normal((52, n, 3)) * 1e-3
    np.save(tmp_path / "basis.npy", full)
    test = VOCASET.subjects["test"][0]
    _corpus(tmp_path / "voca", {f"{TRAIN}_sentence03": 0.4, f"{test}_sentence22": 0.3}, 60, full, num_verts=n)
    dm = SpeechDataModule(
        source="vocaset",
        root=str(tmp_path / "voca"),
        basis=str(tmp_path / "basis.npy"),
        batch_size=1,
        subjects={"val": [test]},
    )
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b.coefficients.shape == (1, 12, 52) and b.keys == [f"vocaset/{TRAIN}_sentence03"]
    assert dm.datasets["val"][0].offsets.shape == (9, n, 3)
    with pytest.raises(ValueError, match="unknown split"):
        SpeechDataModule(source="vocaset", root="x", basis="b.npy", sentences={"training": [1]})
