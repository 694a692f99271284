"""Shared test setup: generated assets go to one cache per machine (FACELAB_CACHE) so they are built once."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ICT_DIR = SHARED / "assets" / "ict-facekit" / "FaceXModel"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
