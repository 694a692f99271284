"""The installed environment keeps the combination the project depends on (see ../shared/docs/environment.md)."""

from __future__ import annotations

from importlib import metadata

import pytest


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_one_opencv_distribution():
    opencv = [d for d in ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                          "opencv-contrib-python-headless") if _installed(d)]
    assert len(opencv) <= 1, f"several OpenCV distributions overwrite each other's cv2: {opencv}"


def test_numpy_below_2_for_mediapipe():
    major = int(metadata.version("numpy").split(".")[0])
    assert major < 2, "mediapipe 0.10.21 needs numpy < 2 (insightface must be installed with --no-deps)"


@pytest.mark.skipif(not _installed("insightface"), reason="insightface comes with the data extra")
def test_insightface_imports_with_the_pinned_stack():
    import onnxruntime  # noqa: F401
    from insightface.utils import face_align

    assert callable(face_align.norm_crop)
