"""Morphable face models built from their official asset files (or generated stand-ins in those formats).

- :class:`Flame` (FLAME 2020 + DECA/SMIRK companions), :class:`Bfm` (Deep3DFaceRecon ``.mat``, Basel ``.h5``),
  :class:`BilinearModel` (FaceScape), :class:`IctFaceModel` (ICT-FaceKit OBJ folder).
- Every model's ``forward(params)`` returns a :class:`MeshOutput`; ``faces``, ``uv``, ``faces_uv`` and
  ``regions`` describe the topology.
- One API over every family (:class:`MorphableModel`): params dataclasses with the same field names
  (:class:`MorphableParams`: ``identity``, ``expression``, ``albedo``, plus FLAME's poses), component counts,
  ``neutral_params`` / ``random_params`` / ``make_params``, ``forward_posed``, landmark embeddings.
"""

from __future__ import annotations

from facelab.morphable.base import MeshOutput, MorphableModel, MorphableParams, barycentric_points, faces_in_region
from facelab.morphable.flame import Flame, FlameParams

__all__ = ["Flame", "FlameParams", "MeshOutput", "MorphableModel", "MorphableParams", "barycentric_points",
           "faces_in_region", "load_model"]


def load_model(family: str, path: str = "synthetic", **kwargs) -> MorphableModel:
    """Build a model of ``family`` (flame | bfm | bilinear | ict) from ``path`` (or ``"synthetic"``)."""
    family = family.lower()
    if family == "flame":
        return Flame(path, **kwargs)
    if family == "bfm":
        from facelab.morphable.bfm import Bfm

        return Bfm(path, **kwargs)
    if family == "bilinear":
        from facelab.morphable.bilinear import BilinearModel

        return BilinearModel(path, **kwargs)
    if family == "ict":
        from facelab.morphable.ict import IctFaceModel

        return IctFaceModel(path, **kwargs)
    raise ValueError(f"unknown model family '{family}': choose flame, bfm, bilinear or ict")


def __getattr__(name: str):
    # Lazy access to the other families so importing facelab.morphable stays light.
    lazy = {"Bfm": "bfm", "BfmParams": "bfm", "BilinearModel": "bilinear", "BilinearParams": "bilinear",
            "IctFaceModel": "ict", "IctParams": "ict"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f"facelab.morphable.{lazy[name]}"), name)
    raise AttributeError(name)
