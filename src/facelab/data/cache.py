"""The preprocessing cache: one ``.npz`` file per face crop, an append-only ``index.jsonl`` and a ``report.json``.

Layout of a cache directory::

    index.jsonl                one JSON line per *finished source item* (an image, or one frame of a video)
    faces/ab/ab12...ef_0.npz   one file per face crop (see :class:`FaceRecord` for the arrays inside)
    report.json                summary: counts, and every skipped item with its reason (rebuilt from the index)

An index line is ``{"key", "source", "frame", "status": "ok" | "skipped", "reason", "detail", "faces": [...]}``
where each face is ``{"file", "face", "score", "has_fan"}`` (``file`` relative to the cache root). Skipped items are
recorded too, so a resumed run neither redoes them nor forgets them in its report.

Crash safety: face files are written under a temporary name and renamed into place, and the item's index line is
appended (one ``write`` of a complete line, flushed and fsynced) only after all its face files exist. An interrupted
run therefore leaves at most orphan temporary files and, if the machine died mid-append, a partial last line, which
:func:`read_index` ignores and :class:`CacheWriter` cuts off before appending. A finished item is never redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelab.data.image_io import DataError

__all__ = ["CacheWriter", "FaceEntry", "FaceRecord", "face_entries", "load_face", "read_index", "save_face"]

INDEX_NAME = "index.jsonl"
REPORT_NAME = "report.json"
FACES_DIR = "faces"


@dataclass
class FaceRecord:
    """One cached face crop (arrays as stored in its ``.npz``).

    Attributes:
        image: (S, S, 3) uint8 RGB crop.
        landmarks_mp: (478, 2) float32 mediapipe landmarks in crop pixels (continuous, corner origin).
        mask: (S, S) uint8 face mask, 1 inside the convex hull of ``landmarks_mp``.
        matrix: (2, 3) float32 source-to-crop similarity (:mod:`facelab.data.crop`).
        score: MTCNN detection score.
        source: the source file (absolute path).
        frame: video frame index, -1 for still images.
        face: index of the face in its source item (0 = best score).
        landmarks_fan: (68, 2) float32 FAN landmarks in crop pixels, or None when FAN was not run.
    """

    image: np.ndarray
    landmarks_mp: np.ndarray
    mask: np.ndarray
    matrix: np.ndarray
    score: float
    source: str
    frame: int = -1
    face: int = 0
    landmarks_fan: np.ndarray | None = None


def save_face(path: str | os.PathLike, record: FaceRecord) -> None:
    """Write a :class:`FaceRecord` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "image": np.asarray(record.image, np.uint8),
        "landmarks_mp": np.asarray(record.landmarks_mp, np.float32),
        "mask": np.asarray(record.mask, np.uint8),
        "matrix": np.asarray(record.matrix, np.float32),
        "score": np.float32(record.score),
        "source": np.str_(record.source),
        "frame": np.int64(record.frame),
        "face": np.int64(record.face),
    }
    if record.landmarks_fan is not None:
        arrays["landmarks_fan"] = np.asarray(record.landmarks_fan, np.float32)
    write_npz_atomic(path, arrays)


def write_npz_atomic(path: str | os.PathLike, arrays: dict) -> None:
    """``np.savez_compressed`` to a temporary file beside ``path``, fsynced, then renamed: a reader (or a resumed
    run) never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_face(path: str | os.PathLike) -> FaceRecord:
    """Read a face crop written by :func:`save_face` (no pickles are loaded).

    Raises:
        DataError: ``"corrupt_cache"`` when the file is unreadable or lacks arrays.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            return FaceRecord(
                image=z["image"],
                landmarks_mp=z["landmarks_mp"],
                mask=z["mask"],
                matrix=z["matrix"],
                score=float(z["score"]),
                source=str(z["source"]),
                frame=int(z["frame"]),
                face=int(z["face"]),
                landmarks_fan=z["landmarks_fan"] if "landmarks_fan" in z.files else None,
            )
    except (OSError, KeyError, ValueError, EOFError) as err:
        raise DataError("corrupt_cache", f"unreadable cache entry ({err})", path) from err


def read_index(root: str | os.PathLike) -> list[dict]:
    """All complete lines of a cache's ``index.jsonl`` (a partial last line from an interrupted run is ignored).

    Later lines for the same key replace earlier ones.

    Raises:
        DataError: ``"not_a_cache"`` when ``root`` has no index.
    """
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        raise DataError("not_a_cache", f"no {INDEX_NAME}: not a facelab preprocess cache", root)
    items: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # interrupted append
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            items[entry["key"]] = entry
    return list(items.values())


@dataclass(frozen=True)
class FaceEntry:
    """One face crop listed in a cache index (what datasets enumerate).

    Attributes:
        path: the ``.npz`` file.
        source: the source image or video.
        frame: video frame index, -1 for still images.
        face: face index within its source item.
        score: detection score.
        has_fan: whether FAN landmarks are stored.
    """

    path: Path
    source: str
    frame: int
    face: int
    score: float
    has_fan: bool


def face_entries(root: str | os.PathLike) -> list[FaceEntry]:
    """Every face crop of a cache, ordered by (source, frame, face) for determinism."""
    root = Path(root)
    out = [
        FaceEntry(root / f["file"], item["source"], int(item["frame"]), int(f["face"]), float(f["score"]),
                  bool(f["has_fan"]))
        for item in read_index(root)
        if item["status"] == "ok"
        for f in item["faces"]
    ]
    return sorted(out, key=lambda e: (e.source, e.frame, e.face))


class CacheWriter:
    """Appends finished items to a cache directory; knows which items are already done (resuming).

    Args:
        root: the cache directory (created if missing).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._index_path = self.root / INDEX_NAME
        self._cut_partial_line()
        self._done = {e["key"] for e in read_index(self.root)} if self._index_path.is_file() else set()

    def _cut_partial_line(self) -> None:
        if not self._index_path.is_file():
            return
        data = self._index_path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self._index_path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def is_done(self, key: str) -> bool:
        """Whether an item with this key was finished (written or skipped) by this or an earlier run."""
        return key in self._done

    @property
    def done_keys(self) -> frozenset[str]:
        """Keys of all finished items."""
        return frozenset(self._done)

    def face_path(self, key: str, face: int) -> Path:
        """Where face ``face`` of item ``key`` is stored (a stable name derived from the key)."""
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]
        return self.root / FACES_DIR / digest[:2] / f"{digest}_{face}.npz"

    def write_item(
        self, key: str, source: str, frame: int, records: list[FaceRecord], dropped: list[dict] | None = None
    ) -> None:
        """Store all face crops of one source item, then mark the item finished.

        Args:
            key: unique item key (e.g. the absolute source path, ``path#frame`` for video frames).
            source: the source file.
            frame: video frame index, -1 for images.
            records: the item's face crops.
            dropped: faces detected but not kept, as ``{"face", "reason", "detail"}`` dicts (reported).
        """
        faces = []
        for rec in records:
            path = self.face_path(key, rec.face)
            save_face(path, rec)
            faces.append({"file": path.relative_to(self.root).as_posix(), "face": rec.face,
                          "score": round(float(rec.score), 6), "has_fan": rec.landmarks_fan is not None})
        self._append({"key": key, "source": source, "frame": frame, "status": "ok", "faces": faces,
                      "dropped": dropped or []})

    def mark_done(self, key: str, source: str, **info) -> None:
        """Record that a container item (a whole video) is finished, with JSON-serialisable ``info``."""
        self._append({"key": key, "source": source, "frame": -1, "status": "done", "faces": [], **info})

    def skip_item(self, key: str, source: str, frame: int, reason: str, detail: str = "") -> None:
        """Record an item that yields no face crops, with a short reason code and a human-readable detail."""
        self._append({"key": key, "source": source, "frame": frame, "status": "skipped", "reason": reason,
                      "detail": detail, "faces": []})

    def _append(self, entry: dict) -> None:
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with open(self._index_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._done.add(entry["key"])

    def write_report(self, **extra) -> dict:
        """Summarise the whole index (all runs) into ``report.json`` and return it.

        Args:
            **extra: additional JSON-serialisable fields (settings, timings of this run).
        """
        items = read_index(self.root)
        skipped = [
            {"source": e["source"], "frame": e["frame"], "reason": e["reason"], "detail": e.get("detail", "")}
            for e in items
            if e["status"] == "skipped"
        ]
        dropped = [
            {"source": e["source"], "frame": e["frame"], **d}
            for e in items
            if e["status"] == "ok"
            for d in e.get("dropped", [])
        ]
        items = [e for e in items if e["status"] != "done"]
        report = {
            "items_total": len(items),
            "items_ok": sum(e["status"] == "ok" for e in items),
            "items_skipped": len(skipped),
            "faces": sum(len(e["faces"]) for e in items),
            "faces_with_fan": sum(f["has_fan"] for e in items for f in e["faces"]),
            "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
            "skipped": skipped,
            "faces_dropped": dropped,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
        }
        tmp = self.root / f".{REPORT_NAME}.tmp"
        tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.root / REPORT_NAME)
        return report
