"""Moved: the synthetic world's DataModule is :class:`facelab.data.modules.SyntheticFaceDataModule`.

This name stays importable for configs and saved runs that give
``class_path: facelab.data.synthetic_module.SyntheticFaceDataModule``.
"""

from facelab.data.modules import SyntheticFaceDataModule

__all__ = ["SyntheticFaceDataModule"]
