"""FaceDet3D (Ling et al., 2022): expression-dependent facial detail (wrinkle displacement) hallucination from action
units, RCAN super-resolution of the maps, and a two-branch neural renderer (see ``shared/docs/facedet3d_reference.md``).

Importing ``facedet3d`` is light (only :data:`method`, the ``facelab.methods`` entry point ``facedet3d:method``).
"""

from facedet3d.plugin import method

__all__ = ["method"]
