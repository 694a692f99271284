"""facelab: a shared core (3DMMs, rendering, UV, losses, data, metrics) for four 3D-face methods."""

__version__ = "0.1.0"
