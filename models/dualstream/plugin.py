"""dualstream in the ``facelab`` commands: the :class:`facelab.methods.Method` its entry point names.

``pyproject.toml`` declares ``dualstream = "dualstream:method"`` in the ``facelab.methods`` entry-point group.
This module only describes: networks and checkpoints are imported by the functions it names when a command runs them.
"""

from __future__ import annotations

from facelab.methods import Method

__all__ = ["method"]

method = Method(
    name="dualstream",
    description=("Dual-Stream: expression-aware identity/expression attribute maps in UV + region-adaptive texture "
                 "stylization"),
    family="bfm",
)
