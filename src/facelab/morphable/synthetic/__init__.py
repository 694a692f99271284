"""Procedural stand-ins for the licensed morphable models, written in the official file formats.

FLAME, BFM and FaceScape's bilinear model cannot be downloaded without registration, so facelab generates
realistic procedural replacements from one procedural head (:mod:`facelab.morphable.synthetic.head`) and writes
them as the files users would have (``generic_model.pkl``, ``BFM_model_front.mat``, ...). The real loaders then
read them, so a fresh machine exercises the same code paths as a licensed setup.

:func:`synthetic_asset_dir` generates a stand-in once into the cache directory and reuses it; it is safe to call
from several processes at once (DDP ranks).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from facelab.io.assets import cache_dir

#: Bumped whenever a family's generated files change, so caches of older generators are not reused
#: (bfm 2: the stand-in ships 3DMMasSTN's BFM_UV.mat).
GENERATOR_VERSIONS = {"flame": 1, "bfm": 2, "bilinear": 1}
#: The model families a stand-in exists for.
FAMILIES = ("flame", "bfm", "bilinear")
#: ``full``: realistic sizes (FLAME-like ~5k vertices); ``tiny``: ~130 vertices for unit tests.
SIZES = ("full", "tiny")


def _check(family: str, size: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown synthetic model family {family!r}; choose one of {FAMILIES}")
    if size not in SIZES:
        raise ValueError(f"unknown synthetic model size {size!r}; choose one of {SIZES}")


def generate_synthetic(family: str, out_dir: str | os.PathLike, seed: int = 0, size: str = "full") -> Path:
    """Write the asset files of a procedural ``family`` model into ``out_dir`` (created if needed).

    Args:
        family: ``"flame"``, ``"bfm"`` or ``"bilinear"``.
        out_dir: destination folder.
        seed: the generator seed; equal seeds give identical files.
        size: ``"full"`` or ``"tiny"``.

    Returns:
        ``out_dir`` as a Path.
    """
    _check(family, size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if family == "flame":
        from facelab.morphable.synthetic.flame import write_synthetic_flame as write
    elif family == "bfm":
        from facelab.morphable.synthetic.bfm import write_synthetic_bfm as write
    else:
        from facelab.morphable.synthetic.bilinear import write_synthetic_bilinear as write
    write(out, seed, size)
    return out


def synthetic_asset_dir(family: str, size: str = "full", seed: int = 0) -> Path:
    """The cached folder of a generated stand-in, generating it on first use.

    The folder is ``cache_dir() / "synthetic" / "{family}-{size}-seed{seed}-v{version}"`` (version from
    :data:`GENERATOR_VERSIONS`). It is written into a temporary folder beside it and renamed into place in one
    step, so a folder that exists is complete; when several processes generate at once, the first rename wins and
    the others keep the winner's files.
    """
    _check(family, size)
    final = cache_dir() / "synthetic" / f"{family}-{size}-seed{seed}-v{GENERATOR_VERSIONS[family]}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        generate_synthetic(family, tmp, seed=seed, size=size)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


__all__ = ["FAMILIES", "GENERATOR_VERSIONS", "SIZES", "generate_synthetic", "synthetic_asset_dir"]
