"""File input/output shared by the core: safe pickle/npy loading, asset lookup, OBJ meshes."""

from facelab.io.assets import ASSET_SOURCES, cache_dir, require_file
from facelab.io.safe_pickle import load_npy, load_pickle

__all__ = ["ASSET_SOURCES", "cache_dir", "load_npy", "load_pickle", "require_file"]
