"""Exceptions raised by facelab for bad assets, bad files and bad configuration.

Every error says what is wrong, which file or config key is involved and what the user can do about it.
"""

from __future__ import annotations


class FacelabError(Exception):
    """Base class of all facelab errors."""


class MissingAssetError(FacelabError, FileNotFoundError):
    """A licensed or pretrained asset file is not where the configuration says it is."""


class AssetFormatError(FacelabError, ValueError):
    """An asset file exists but its content does not have the expected keys, shapes or counts."""


class UnsafePickleError(AssetFormatError):
    """A pickle asks for a class or function the restricted loader does not admit."""
