"""Locating asset files and explaining, when one is missing, where users obtain it."""

from __future__ import annotations

import os
from pathlib import Path

from facelab.errors import MissingAssetError

#: Where users obtain each licensed asset family (shown in "missing asset" errors).
ASSET_SOURCES: dict[str, str] = {
    "flame": "FLAME 2020 from https://flame.is.tue.mpg.de (registration required); the companion files "
    "(landmark_embedding.npy, FLAME_masks.pkl, head_template.obj, mediapipe embedding, eyelids) ship with DECA and "
    "the FLAME-based method releases named in the README's asset table",
    "bfm": "BFM 2009 from https://faces.dmi.unibas.ch/bfm/ converted to BFM_model_front.mat with Deep3DFaceRecon's "
    "instructions, or the BFM 2017/2019 .h5 from https://faces.dmi.unibas.ch/bfm/bfm2019.html",
    "bilinear": "the FaceScape bilinear model from https://facescape.nju.edu.cn (registration required)",
    "ict": "ICT-FaceKit's FaceXModel folder from the ICT-VGL/ICT-FaceKit repository on GitHub (MIT)",
    "weights": "the network's published checkpoint (see the method's README section)",
}


def cache_dir() -> Path:
    """The directory where facelab writes generated stand-ins and other caches.

    ``$FACELAB_CACHE`` if set, else ``$XDG_CACHE_HOME/facelab`` (default ``~/.cache/facelab``).
    """
    if env := os.environ.get("FACELAB_CACHE"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "facelab"


def require_file(
    path: str | os.PathLike, *, what: str, config_key: str | None = None, family: str | None = None
) -> Path:
    """Return ``path`` as a Path if it is an existing file, else raise a helpful MissingAssetError.

    Args:
        path: the file the configuration points at.
        what: a human description ("FLAME model pickle").
        config_key: the config/argument name that holds the path (e.g. ``model.flame.model_path``).
        family: key of ``ASSET_SOURCES`` naming where the file can be obtained.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p
    lines = [f"{what} not found: {p}" + (" (a directory, expected a file)" if p.is_dir() else "")]
    if config_key:
        lines.append(f"  set by: {config_key}")
    if family in ASSET_SOURCES:
        lines.append(f"  obtain it from: {ASSET_SOURCES[family]}")
    if family in ("flame", "bfm", "bilinear"):
        lines.append(
            f"  or use the generated stand-in: pass 'synthetic' instead of a path, or run "
            f"`facelab assets synthetic --family {family} --out DIR`"
        )
    raise MissingAssetError("\n".join(lines))
