"""facedet3d in the ``facelab`` commands: the :class:`facelab.methods.Method` its entry point names.

``pyproject.toml`` declares ``facedet3d = "facedet3d:method"`` in the ``facelab.methods`` entry-point group.
This module only describes: networks and checkpoints are imported by the functions it names when a command runs them.
"""

from __future__ import annotations

from facelab.methods import Method

__all__ = ["method"]

method = Method(
    name="facedet3d",
    description=("FaceDet3D (Ling et al. 2022): AU-conditioned wrinkle hallucination, RCAN and a two-branch neural "
                 "renderer"),
    family="bfm",
)
