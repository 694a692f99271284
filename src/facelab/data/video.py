"""Reading video files frame by frame with OpenCV (MEAD, LRS3, phone videos), as RGB ``uint8`` arrays.

Decoding uses ``cv2.VideoCapture`` (FFmpeg backend of opencv-python-headless), so any container/codec that FFmpeg
build reads works. Unreadable files raise :class:`~facelab.data.image_io.DataError` with reason
``"unreadable_video"``; a video that stops decoding part-way simply ends early (its readable frames are kept).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelab.data.image_io import DataError

__all__ = ["VIDEO_EXTENSIONS", "VideoInfo", "is_video_file", "iter_frames", "probe_video"]

#: File name endings treated as videos (lower case) when scanning folders.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video (``num_frames`` may be an estimate for some containers)."""

    num_frames: int
    fps: float
    width: int
    height: int


def is_video_file(path: str | os.PathLike) -> bool:
    """Whether ``path``'s extension is one of :data:`VIDEO_EXTENSIONS` (the content is not checked)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _open(path: Path):
    import cv2

    if not path.is_file():
        raise DataError("not_found", "no such file", path)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise DataError("unreadable_video", "OpenCV/FFmpeg cannot open this file as a video", path)
    return cap


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open a video, decode its first frame and return its properties.

    Raises:
        DataError: ``"not_found"`` or ``"unreadable_video"`` (cannot be opened, or no frame decodes).
    """
    import cv2

    path = Path(path)
    cap = _open(path)
    try:
        ok, frame = cap.read()
        if not ok or frame is None:
            raise DataError("unreadable_video", "the container opens but no frame decodes", path)
        return VideoInfo(
            num_frames=max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 1),
            fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
            width=int(frame.shape[1]),
            height=int(frame.shape[0]),
        )
    finally:
        cap.release()


def iter_frames(
    path: str | os.PathLike, *, every_nth: int = 1, max_frames: int | None = None, skip: set[int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a video sequentially and yield every ``every_nth`` frame.

    Frames are decoded in order (seeking is unreliable across codecs); frames that are not yielded are only
    grabbed, not converted, which keeps sub-sampling cheap.

    Args:
        path: the video file.
        every_nth: keep frames ``0, n, 2n, ...``.
        max_frames: stop after yielding this many frames.
        skip: frame indices not to decode (e.g. already processed when resuming); they still count for
            ``every_nth`` and ``max_frames``.

    Yields:
        ``(frame_index, frame)`` with frame a (H, W, 3) uint8 RGB array.

    Raises:
        DataError: ``"unreadable_video"`` if the file cannot be opened or its first frame does not decode.
    """
    import cv2

    if every_nth < 1:
        raise ValueError(f"every_nth must be >= 1, got {every_nth}")
    path = Path(path)
    cap = _open(path)
    skip = skip or set()
    try:
        index, kept = 0, 0
        while max_frames is None or kept < max_frames:
            wanted = index % every_nth == 0
            if not cap.grab():
                if index == 0:
                    raise DataError("unreadable_video", "the container opens but no frame decodes", path)
                break
            if wanted:
                kept += 1
                if index not in skip:
                    ok, bgr = cap.retrieve()
                    if not ok or bgr is None:
                        break
                    yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()
