"""DNPM, the Detailed Neural Parametric Model: a StyleGAN2 over float displacement maps and Detailed3DMM
(bilinear proxy + identity/expression -> w+ -> detail; see ``shared/docs/dnpm_reference.md``).

Importing ``dnpm`` is light (only :data:`method`, the ``facelab.methods`` entry point ``dnpm:method``).
"""

from dnpm.plugin import method

__all__ = ["method"]
