"""Restricted pickle loading for the asset files of the field (FLAME, its masks and embeddings).

The official FLAME ``generic_model.pkl`` is a Python-2 pickle of numpy arrays, a scipy sparse matrix and
``chumpy.ch.Ch`` arrays. A plain ``pickle.load`` executes whatever the file asks for, so facelab never uses it:
:func:`load_pickle` admits only numpy arrays/dtypes/scalars, scipy sparse matrices, a few builtin containers and
chumpy arrays (mapped to plain numpy without importing chumpy). Anything else is refused with
:class:`~facelab.errors.UnsafePickleError` before it runs.

:func:`dump_pickle_with_chumpy` writes the same layout (chumpy-wrapped arrays included) without depending on
chumpy, so synthetic stand-ins exercise the loader's chumpy path.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from facelab.errors import AssetFormatError, UnsafePickleError


class ChumpyArray:
    """Stand-in for ``chumpy.ch.Ch``: holds the wrapped array ``x`` (chumpy keeps its value in ``__dict__['x']``)."""

    def __init__(self, x: np.ndarray | None = None):
        self.x = x

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict) or "x" not in state:
            raise AssetFormatError("a chumpy object in the pickle holds no plain array ('x'); only leaf arrays load")
        self.x = np.asarray(state["x"])

    def __reduce__(self):
        # The state mirrors a pickled chumpy leaf (its __dict__ minus the weak-reference caches).
        state = {"x": np.asarray(self.x), "_dirty_vars": set(), "_itr": None, "_depends_on_deps": {}}
        return copyreg._reconstructor, (ChumpyArray, object, None), state


_SPARSE = ("csc_matrix", "csr_matrix", "coo_matrix")
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")


def _admitted(module: str, name: str) -> Any | None:
    """The object a pickle may reference as ``module.name``, or None if it is not admitted."""
    if (module, name) == ("copyreg", "_reconstructor"):
        return copyreg._reconstructor
    if module == "builtins" and name in ("object", "set", "frozenset", "complex", "slice", "bytearray"):
        return getattr(__import__("builtins"), name)
    if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles written by Python 3 store bytes
        import _codecs

        return _codecs.encode
    if (module, name) == ("collections", "OrderedDict"):
        from collections import OrderedDict

        return OrderedDict
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if module in _NUMPY_CORE and name in ("_reconstruct", "scalar", "_frombuffer"):
        from numpy.core import multiarray, numeric

        return getattr(multiarray, name, None) or getattr(numeric, name, None)
    if module.startswith("numpy.dtypes") or (module == "numpy" and name.endswith("DType")):
        import numpy.dtypes

        return getattr(numpy.dtypes, name, None)
    if module.startswith("scipy.sparse") and name in _SPARSE:
        import scipy.sparse

        return getattr(scipy.sparse, name)
    if (module, name) == ("chumpy.ch", "Ch"):
        return ChumpyArray
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 pickles name modules by their old names (copy_reg, __builtin__): map them first.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = _admitted(module, name)
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refused to load '{module}.{name}'. facelab reads pickles with a restricted loader "
                "that admits only numpy arrays, scipy sparse matrices and chumpy arrays, so a file asking for "
                "anything else is not loaded (it could run code). If this is a genuine asset, convert it to .npz."
            )
        return obj


def _unchumpy(obj: Any) -> Any:
    """Replace chumpy stand-ins by their arrays, recursively through dicts, lists and tuples."""
    if isinstance(obj, ChumpyArray):
        return obj.x
    if isinstance(obj, dict):
        return {k: _unchumpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unchumpy(v) for v in obj)
    return obj


def loads_pickle(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with the restricted loader (see module doc); chumpy arrays come back as numpy arrays."""
    try:
        return _unchumpy(_RestrictedUnpickler(io.BytesIO(data), source).load())
    except UnsafePickleError:
        raise
    except Exception as err:  # truncated or corrupt files raise many different errors
        raise AssetFormatError(f"{source}: not a readable pickle ({type(err).__name__}: {err})") from err


def load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle file through the restricted loader. See :func:`loads_pickle`."""
    path = Path(path)
    return loads_pickle(path.read_bytes(), str(path))


def load_npy(path: str | os.PathLike) -> Any:
    """Load a ``.npy`` file; object arrays (e.g. DECA's ``landmark_embedding.npy`` dict) go through the
    restricted unpickler instead of ``np.load(allow_pickle=True)``.

    Returns the array, or for a 0-d object array its single element (a dict for DECA's embedding).
    """
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            shape, _, dtype = np.lib.format._read_array_header(fh, version)
        except ValueError as err:
            raise AssetFormatError(f"{path}: not a .npy file ({err})") from err
        if not dtype.hasobject:
            fh.seek(0)
            try:
                return np.load(fh, allow_pickle=False)
            except ValueError as err:
                raise AssetFormatError(f"{path}: truncated or corrupt .npy ({err})") from err
        obj = loads_pickle(fh.read(), str(path))
    if isinstance(obj, np.ndarray) and obj.shape == () and obj.dtype == object:
        return _unchumpy(obj.item())
    return obj


class _ChumpyPickler(pickle._Pickler):
    """Pure-Python pickler that names :class:`ChumpyArray` as ``chumpy.ch.Ch`` (no chumpy import needed)."""

    def save_global(self, obj, name=None):
        if obj is ChumpyArray:
            self.write(pickle.GLOBAL + b"chumpy.ch\nCh\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dump_pickle_with_chumpy(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as a protocol-2 pickle (the layout of FLAME's files); :class:`ChumpyArray` values are
    written as ``chumpy.ch.Ch`` objects exactly as chumpy pickles its leaf arrays."""
    with open(path, "wb") as fh:
        _ChumpyPickler(fh, protocol=2).dump(obj)
