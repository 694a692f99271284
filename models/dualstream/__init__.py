"""The expression-aware Dual-Stream network (geometry stream of identity/expression attribute spatial maps in UV,
texture stream with SSRPM + SRSM region-adaptive stylization, fusion through the differentiable renderer; see
``shared/docs/dualstream_reference.md``).

Importing ``dualstream`` is light (only :data:`method`, the ``facelab.methods`` entry point ``dualstream:method``).
"""

from dualstream.plugin import method

__all__ = ["method"]
