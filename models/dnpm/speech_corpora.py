"""VOCASET and BIWI, in FaceFormer's preprocessed layout, as speech + ARKit data for DNPM's speech model.

Both corpora pair speech with per-frame *vertices* of a registered face mesh, not ARKit coefficients. The speech
model (:mod:`dnpm.speech_model`) predicts the 52 ARKit weights that drive the bilinear model, so the vertices are
turned into ARKit targets here: each frame's offsets from the speaker's neutral template are fitted onto a
52-shape ARKit blendshape basis *of the corpus' topology* that the user provides (:class:`ArkitBasisFit`). The
samples keep the vertices too (offsets at the coefficient frame rate and the template), for vertex metrics.

Where users get them
--------------------
* **VOCASET** (Cudeiro et al., CVPR 2019): https://voca.is.tue.mpg.de (registration required); FLAME meshes,
  5,023 vertices, 60 fps, 12 speakers x 40 sentences. FaceFormer's preprocessing (``vocaset/process_voca_data.py``
  of its repository) writes the layout read here. FaceFormer keeps every second frame (30 fps); here the frames are
  resampled to the coefficient frame rate at the frame centres, which at 60 -> 30 fps picks every second frame.
* **BIWI** (BIWI 3D Audiovisual Corpus of Affective Communication, Fanelli et al., ETH Zurich; request it from the
  corpus' authors): 23,370 vertices, 25 fps, 14 speakers x 40 sentences (``e01``-``e40``: the emotional takes).
  FaceFormer's BIWI preprocessing writes the same layout; 25 -> 30 fps is a linear interpolation.

Layout (``ROOT``)::

    wav/<Subject>_<sentence>.wav              speech (any rate / channels: read by dnpm.speech_data.read_wav)
    vertices_npy/<Subject>_<sentence>.npy     (N, 3V) or (N, V, 3) vertices per frame, at the corpus frame rate
    templates.pkl                             {subject: (V, 3) neutral template}

e.g. ``wav/FaceTalk_170725_00137_TA_sentence01.wav`` or ``wav/F2_e01.wav``: the subject is the name up to its last
``_``, the sentence number the trailing digits after it. ``templates.pkl`` is read only through facelab's
restricted unpickler (:func:`facelab.io.safe_pickle.load_pickle`: numpy arrays and plain containers; anything
else is refused with :class:`facelab.errors.UnsafePickleError`); the ``.npy`` files through
:func:`facelab.io.safe_pickle.load_npy`.

Splits (configurable; defaults :data:`VOCASET` / :data:`BIWI`): VOCASET as FaceFormer (train: 8 speakers, sentences
1-40; val / test: 2 speakers each, sentences 21-40); BIWI train F2 F3 F4 M3 M4 M5, val / test the unseen speakers
F1 F5 F6 F7 F8 M1 M2 M6 (FaceFormer's "BIWI-Test-B"), sentences 1-40. FaceFormer's BIWI-Test-A is the training
speakers' sentences 37-40 (train 1-32, val 33-36): pass ``subjects`` / ``sentences`` for that.

The ARKit basis (what stands in for image-to-ARKit labels)
-----------------------------------------------------------
The paper labels its news video with a per-frame image-to-ARKit regressor; on these corpora the labels come from a
least-squares fit instead. ``basis`` is a ``.npy`` float array of shape ``(52, V, 3)``: the vertex offsets from
the neutral of the 52 ARKit blendshapes in :data:`dnpm.arkit.ARKIT_NAMES` order, on the corpus' mesh (same vertex
count and order, same units as the vertex files: metres for VOCASET), at weight 1. Make it by sculpting the 52
shapes on the corpus template or by transferring an ARKit-named rig onto it (e.g. deformation transfer of
ICT-FaceKit's ARKit-named shapes after registering ICT's neutral to the template). Each frame's offsets ``d``
(from its speaker's template) give ``c = argmin ||B^T c - d||`` subject to ``0 <= c <= 1``: the non-negative
least-squares fit with ARKit's [0, 1] range as a bound (bounded-variable least squares), clipped to [0, 1]. One basis
serves every speaker (offsets are nearly identity-independent); what the basis cannot express is left out of the
targets. The identity of a sample is zeros (no bilinear identity: the vertex loss runs on the mean face), as for
Live Link takes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dnpm.arkit import NUM_ARKIT
from dnpm.speech_data import (
    FPS,
    SpeechDataError,
    SpeechSample,
    cut_to_overlap,
    random_crop,
    read_wav,
    resample_frames,
)
from facelab.errors import AssetFormatError, MissingAssetError
from facelab.io.assets import require_file
from facelab.io.safe_pickle import load_npy, load_pickle

__all__ = [
    "BIWI",
    "CORPORA",
    "VOCASET",
    "ArkitBasisFit",
    "CorpusSpeechDataset",
    "CorpusTake",
    "VertexCorpus",
    "VertexSpeechSample",
    "load_arkit_basis",
    "read_templates",
    "read_vertices",
    "scan_corpus",
    "select_takes",
]

_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class VertexCorpus:
    """What a corpus in FaceFormer's layout is: its mesh size, frame rate and default splits.

    Attributes:
        name: ``vocaset`` or ``biwi``.
        num_verts: vertices per frame (and per template / basis shape).
        fps: the vertex files' frame rate.
        subjects: split -> speakers.
        sentences: split -> sentence numbers.
        source: where users get the corpus (shown in errors).
    """

    name: str
    num_verts: int
    fps: float
    subjects: dict[str, tuple[str, ...]]
    sentences: dict[str, tuple[int, ...]]
    source: str


#: VOCASET (FLAME topology, 60 fps) with FaceFormer's speaker / sentence splits.
VOCASET = VertexCorpus(
    name="vocaset",
    num_verts=5023,
    fps=60.0,
    subjects={
        "train": (
            "FaceTalk_170728_03272_TA",
            "FaceTalk_170904_00128_TA",
            "FaceTalk_170725_00137_TA",
            "FaceTalk_170915_00223_TA",
            "FaceTalk_170811_03274_TA",
            "FaceTalk_170913_03279_TA",
            "FaceTalk_170904_03276_TA",
            "FaceTalk_170912_03278_TA",
        ),
        "val": ("FaceTalk_170811_03275_TA", "FaceTalk_170908_03277_TA"),
        "test": ("FaceTalk_170809_00138_TA", "FaceTalk_170731_00024_TA"),
    },
    sentences={"train": tuple(range(1, 41)), "val": tuple(range(21, 41)), "test": tuple(range(21, 41))},
    source="VOCASET from https://voca.is.tue.mpg.de (registration required), preprocessed with FaceFormer's "
    "vocaset/process_voca_data.py",
)
_BIWI_UNSEEN = ("F1", "F5", "F6", "F7", "F8", "M1", "M2", "M6")
#: BIWI (23,370 vertices, 25 fps): train on six speakers, validate / test on the eight unseen ones.
BIWI = VertexCorpus(
    name="biwi",
    num_verts=23370,
    fps=25.0,
    subjects={"train": ("F2", "F3", "F4", "M3", "M4", "M5"), "val": _BIWI_UNSEEN, "test": _BIWI_UNSEEN},
    sentences={split: tuple(range(1, 41)) for split in _SPLITS},
    source="the BIWI 3D Audiovisual Corpus of Affective Communication (ETH Zurich, on request from its authors), "
    "preprocessed with FaceFormer's BIWI scripts",
)
CORPORA: dict[str, VertexCorpus] = {c.name: c for c in (VOCASET, BIWI)}


def _corpus(corpus: str | VertexCorpus) -> VertexCorpus:
    if isinstance(corpus, VertexCorpus):
        return corpus
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}: choose one of {sorted(CORPORA)}")
    return CORPORA[corpus]


# ------------------------------------------------------------------------------------------------------ the folder
@dataclass(frozen=True)
class CorpusTake:
    """One sentence of one speaker: ``wav/<stem>.wav`` and ``vertices_npy/<stem>.npy``."""

    subject: str
    sentence: int
    wav: Path
    vertices: Path


_STEM = re.compile(r"^(?P<subject>.+)_\D*(?P<sentence>\d+)$")


def _layout_hint(corpus: VertexCorpus) -> str:
    return f"expected {corpus.name} in FaceFormer's layout: wav/, vertices_npy/ and templates.pkl ({corpus.source})"


def scan_corpus(root: str | os.PathLike, corpus: str | VertexCorpus) -> list[CorpusTake]:
    """Every ``wav/<Subject>_<sentence>.wav`` of ``root`` with its ``vertices_npy/<same>.npy`` (sorted; names that
    are not ``<subject>_<letters><digits>`` belong to no speaker / sentence and are left out).

    Raises:
        SpeechDataError: ``not_found`` (``root``, ``wav/``, ``vertices_npy/`` or ``templates.pkl`` missing),
            ``no_pairs`` (no WAV with its vertex file).
    """
    corpus = _corpus(corpus)
    root = Path(root)
    for path in (root, root / "wav", root / "vertices_npy"):
        if not path.is_dir():
            raise SpeechDataError("not_found", f"not a directory ({_layout_hint(corpus)})", path)
    if not (root / "templates.pkl").is_file():
        raise SpeechDataError("not_found", f"no such file ({_layout_hint(corpus)})", root / "templates.pkl")
    takes = []
    for wav in sorted((root / "wav").glob("*.wav")):
        npy = root / "vertices_npy" / f"{wav.stem}.npy"
        m = _STEM.match(wav.stem)
        if m and npy.is_file():
            takes.append(CorpusTake(m["subject"], int(m["sentence"]), wav, npy))
    if not takes:
        raise SpeechDataError(
            "no_pairs", "no wav/<Subject>_<sentence>.wav with a vertices_npy/<Subject>_<sentence>.npy", root
        )
    return takes


def select_takes(
    takes: list[CorpusTake], subjects: list[str] | tuple[str, ...], sentences: list[int] | tuple[int, ...]
) -> list[CorpusTake]:
    """The takes of ``subjects`` whose sentence number is in ``sentences`` (order kept)."""
    wanted, numbers = set(subjects), {int(s) for s in sentences}
    return [t for t in takes if t.subject in wanted and t.sentence in numbers]


def _as_vertices(array, num_verts: int, what: str, path: Path, frames: bool) -> np.ndarray:
    """``array`` as float32 (N, V, 3) when ``frames`` ((N, 3V) or (N, V, 3) numbers), else (V, 3) ((V, 3) or
    (3V,)); a :class:`SpeechDataError` ``bad_shape`` / ``non_finite`` naming ``path`` otherwise."""
    shapes = ((3 * num_verts,), (num_verts, 3))
    ok = isinstance(array, np.ndarray) and array.dtype.kind in "fiu"
    if not ok or (array.shape[1:] if frames else array.shape) not in shapes:
        got = f"{array.dtype} array of shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        shape = f"(frames, {3 * num_verts}) or (frames, {num_verts}, 3)" if frames else f"({num_verts}, 3)"
        raise SpeechDataError("bad_shape", f"{what}: expected {shape} numbers ({num_verts} vertices), got {got}", path)
    out = array.reshape(*(array.shape[:1] if frames else ()), num_verts, 3).astype(np.float32)
    if not np.isfinite(out).all():
        raise SpeechDataError("non_finite", f"{what}: NaN or infinite coordinates", path)
    return out


def read_templates(
    path: str | os.PathLike, corpus: str | VertexCorpus, subjects: list[str] | tuple[str, ...]
) -> dict[str, np.ndarray]:
    """``templates.pkl`` (restricted unpickler) -> {subject: (V, 3) float32} for ``subjects``.

    Raises:
        UnsafePickleError: the pickle asks for anything but numpy arrays and plain containers (not loaded).
        AssetFormatError: not a readable pickle.
        SpeechDataError: ``bad_format`` (not a dict), ``missing_template`` (a subject without a template),
            ``bad_shape`` / ``non_finite`` (a template of another vertex count, or broken numbers).
    """
    corpus, path = _corpus(corpus), Path(path)
    table = load_pickle(path)
    if not isinstance(table, dict):
        raise SpeechDataError("bad_format", f"expected a dict subject -> template, got {type(table).__name__}", path)
    table = {k.decode() if isinstance(k, bytes) else str(k): v for k, v in table.items()}
    missing = [s for s in subjects if s not in table]
    if missing:
        raise SpeechDataError(
            "missing_template", f"no template for subject(s) {missing}; the file has {sorted(table)}", path
        )
    return {s: _as_vertices(table[s], corpus.num_verts, f"template of {s}", path, frames=False) for s in subjects}


def read_vertices(path: str | os.PathLike, corpus: str | VertexCorpus) -> np.ndarray:
    """A ``vertices_npy`` file as (N, V, 3) float32 at the corpus frame rate.

    Raises:
        SpeechDataError: ``not_found``, ``bad_shape`` (another vertex count, or not numbers), ``non_finite``,
            ``too_short`` (fewer than 2 frames).
        AssetFormatError: not a ``.npy`` file.
    """
    corpus, path = _corpus(corpus), Path(path)
    if not path.is_file():
        raise SpeechDataError("not_found", "no such file", path)
    verts = _as_vertices(load_npy(path), corpus.num_verts, f"{corpus.name} vertices", path, frames=True)
    if len(verts) < 2:
        raise SpeechDataError("too_short", f"{len(verts)} frame(s): nothing to animate", path)
    return verts


# ---------------------------------------------------------------------------------------------- the ARKit targets
def load_arkit_basis(
    path: str | os.PathLike | np.ndarray | None, corpus: str | VertexCorpus, config_key: str = "basis"
) -> np.ndarray:
    """The user's 52-shape ARKit basis on the corpus topology (module docstring) as (52, V, 3) float64.

    Args:
        path: a ``.npy`` of shape (52, V, 3) (or the array itself).
        corpus: whose topology (vertex count) the basis must have.
        config_key: the option that holds the path (named in errors).

    Raises:
        MissingAssetError: no basis given, or no such file.
        AssetFormatError: not (52, V, 3) finite numbers.
    """
    corpus = _corpus(corpus)
    shape = (NUM_ARKIT, corpus.num_verts, 3)
    if path is None or (not isinstance(path, np.ndarray) and not str(path)):
        raise MissingAssetError(
            f"{corpus.name}: the speech model learns ARKit coefficients but {corpus.name} has only vertices; its "
            f"targets are fitted onto a 52-shape ARKit blendshape basis on the {corpus.name} topology. Set "
            f"{config_key} to a .npy float array of shape {shape}: the vertex offsets from the neutral of the 52 "
            "ARKit blendshapes in dnpm.arkit.ARKIT_NAMES order, same vertex order and units as the vertex files "
            "(see dnpm.speech_corpora)"
        )
    if isinstance(path, np.ndarray):
        array, where = path, "basis"
    else:
        where = str(
            require_file(path, what=f"ARKit blendshape basis on the {corpus.name} topology", config_key=config_key)
        )
        array = load_npy(where)
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu" or array.shape != shape:
        got = f"{array.dtype} array of shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise AssetFormatError(
            f"{where}: an ARKit basis on the {corpus.name} topology is {shape} numbers (52 ARKit shapes x "
            f"{corpus.num_verts} vertices x 3), got {got}"
        )
    if not np.isfinite(array).all():
        raise AssetFormatError(f"{where}: the ARKit basis has NaN or infinite values")
    return array.astype(np.float64)


class ArkitBasisFit:
    """Per-frame ARKit weights of vertex offsets on a (52, V, 3) basis ``B``: ``argmin_c ||B^T c - d||`` subject to
    ``0 <= c <= 1`` (bounded-variable least squares on the basis' reduced QR factor, so each frame solves a 52 x 52
    problem), clipped to [0, 1]. A rank-deficient basis (duplicate or empty shapes) is allowed: one of the
    minimisers is returned.
    """

    def __init__(self, basis: np.ndarray):
        basis = np.asarray(basis, dtype=np.float64)
        if basis.ndim != 3 or basis.shape[0] != NUM_ARKIT or basis.shape[2] != 3:
            raise ValueError(f"basis must be ({NUM_ARKIT}, V, 3), got {basis.shape}")
        self.num_verts = basis.shape[1]
        self.q, self.r = np.linalg.qr(basis.reshape(NUM_ARKIT, -1).T)  # (3V, 52), (52, 52)

    def __call__(self, offsets: np.ndarray) -> np.ndarray:
        """(T, V, 3) offsets from the neutral -> (T, 52) float32 ARKit weights."""
        from scipy.optimize import lsq_linear

        d = np.asarray(offsets, dtype=np.float64)
        if d.ndim != 3 or d.shape[1:] != (self.num_verts, 3):
            raise ValueError(f"offsets must be (T, {self.num_verts}, 3), got {d.shape}")
        rhs = d.reshape(len(d), -1) @ self.q
        coeffs = [lsq_linear(self.r, b, bounds=(0.0, 1.0), method="bvls").x for b in rhs]
        return np.clip(np.asarray(coeffs).reshape(len(d), NUM_ARKIT), 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------------- the dataset
@dataclass
class VertexSpeechSample(SpeechSample):
    """A :class:`~dnpm.speech_data.SpeechSample` (audio, fitted ARKit ``coefficients``, zero ``identity``, ``key``)
    with its vertices: ``offsets`` (T, V, 3) from the ``template`` (V, 3) at the coefficient frame rate, and the
    take's ``subject`` / ``sentence``. :meth:`~dnpm.speech_data.SpeechBatch.collate` batches the speech part."""

    offsets: Tensor
    template: Tensor
    subject: str
    sentence: int


class CorpusSpeechDataset(Dataset):
    """One split of VOCASET / BIWI in FaceFormer's layout (module docstring) as :class:`VertexSpeechSample`.

    Everything is checked at construction (folder, takes of the split, templates of its speakers, the basis);
    a vertex file is checked when its sample is read. Fitted coefficients are kept in memory per take.

    Args:
        root: the corpus folder (``wav/``, ``vertices_npy/``, ``templates.pkl``).
        corpus: ``vocaset`` / ``biwi`` (or a :class:`VertexCorpus`).
        split: ``train``, ``val`` or ``test``.
        basis: the (52, V, 3) ARKit basis ``.npy`` (or array); required (module docstring).
        subjects: the split's speakers (None: the corpus default).
        sentences: the split's sentence numbers (None: the corpus default).
        fps: the coefficient frame rate the vertices are resampled to (at the frame centres).
        vertex_fps: the vertex files' frame rate (None: the corpus', 60 / 25).
        num_identity: length of the zero identity.
        crop_frames: training crops of this many frames at random offsets (0: whole takes).
        seed: crop seed.

    Raises:
        SpeechDataError: see :func:`scan_corpus`, :func:`read_templates`; ``no_pairs`` when the split has no take.
        MissingAssetError, AssetFormatError: see :func:`load_arkit_basis`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        corpus: str | VertexCorpus = "vocaset",
        split: str = "train",
        basis: str | os.PathLike | np.ndarray | None = None,
        subjects: list[str] | tuple[str, ...] | None = None,
        sentences: list[int] | tuple[int, ...] | None = None,
        fps: float = FPS,
        vertex_fps: float | None = None,
        num_identity: int = 50,
        crop_frames: int = 0,
        seed: int = 0,
    ):
        self.corpus = _corpus(corpus)
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        self.fit = ArkitBasisFit(load_arkit_basis(basis, self.corpus))
        self.subjects = tuple(self.corpus.subjects[split] if subjects is None else subjects)
        self.sentences = tuple(self.corpus.sentences[split] if sentences is None else sentences)
        self.root, self.split = Path(root), split
        self.takes = select_takes(scan_corpus(self.root, self.corpus), self.subjects, self.sentences)
        if not self.takes:
            raise SpeechDataError(
                "no_pairs",
                f"the {split} split (subjects {list(self.subjects)}, sentences {_spans(self.sentences)}) has no take "
                f"in wav/ + vertices_npy/",
                self.root,
            )
        present = sorted({t.subject for t in self.takes})
        self.templates = read_templates(self.root / "templates.pkl", self.corpus, present)
        self.fps = float(fps)
        self.vertex_fps = float(self.corpus.fps if vertex_fps is None else vertex_fps)
        if not (self.fps > 0 and self.vertex_fps > 0):
            raise ValueError(f"fps and vertex_fps must be positive, got {fps}, {vertex_fps}")
        self.num_identity, self.crop_frames = int(num_identity), int(crop_frames)
        self.rng = np.random.default_rng(seed)
        self._coefficients: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.takes)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(audio (S,), offsets (T, V, 3), coefficients (T, 52))`` of a whole take, cut to the shorter of audio and
        vertices."""
        take = self.takes[index]
        audio = read_wav(take.wav)
        verts = read_vertices(take.vertices, self.corpus)
        offsets = resample_frames(
            np.arange(len(verts)) / self.vertex_fps, verts - self.templates[take.subject], self.fps
        )
        audio, offsets = cut_to_overlap(audio, offsets, self.fps, take.wav)
        if index not in self._coefficients:
            self._coefficients[index] = self.fit(offsets)
        return audio, offsets, self._coefficients[index]

    def __getitem__(self, index: int) -> VertexSpeechSample:
        take = self.takes[index]
        audio, offsets, coeffs = random_crop(self.rng, self.crop_frames, self.fps, *self.load(index))
        return VertexSpeechSample(
            audio=torch.from_numpy(audio.copy()),
            coefficients=torch.from_numpy(coeffs.copy()),
            identity=torch.zeros(self.num_identity),
            key=f"{self.corpus.name}/{take.wav.stem}",
            offsets=torch.from_numpy(offsets.copy()),
            template=torch.from_numpy(self.templates[take.subject]),
            subject=take.subject,
            sentence=take.sentence,
        )


def _spans(numbers: tuple[int, ...]) -> str:
    """``(1, 2, 3, 7)`` -> ``1-3, 7``."""
    out: list[str] = []
    for n in sorted(set(numbers)):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)
