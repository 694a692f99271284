"""dnpm in the ``facelab`` commands: the :class:`facelab.methods.Method` its entry point names.

``pyproject.toml`` declares ``dnpm = "dnpm:method"`` in the ``facelab.methods`` entry-point group.
This module only describes: networks and checkpoints are imported by the functions it names when a command runs them.
"""

from __future__ import annotations

from facelab.methods import Method

__all__ = ["method"]

method = Method(
    name="dnpm",
    description="DNPM / Detailed3DMM: StyleGAN2 over displacement maps, (identity, expression) -> detail",
    family="bilinear",
)
