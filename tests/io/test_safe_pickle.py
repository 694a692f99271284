import os
import pickle

import numpy as np
import pytest
import scipy.sparse

from facelab.errors import AssetFormatError, UnsafePickleError
from facelab.io.safe_pickle import ChumpyArray, dump_pickle_with_chumpy, load_npy, load_pickle


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_chumpy_layout_round_trip(tmp_path):
    arr = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    data = {"shapedirs": ChumpyArray(arr), "J_regressor": scipy.sparse.csc_matrix(np.eye(3)),
            "f": np.array([[0, 1, 2]], dtype=np.uint32), "bs_style": "lbs"}
    path = tmp_path / "model.pkl"
    dump_pickle_with_chumpy(data, path)
    raw = path.read_bytes()
    assert b"chumpy.ch\nCh\n" in raw and b"copy_reg\n_reconstructor" in raw  # FLAME's Python-2 layout
    out = load_pickle(path)
    assert isinstance(out["shapedirs"], np.ndarray) and np.array_equal(out["shapedirs"], arr)
    assert scipy.sparse.issparse(out["J_regressor"]) and out["J_regressor"].toarray()[1, 1] == 1
    assert out["f"].dtype == np.uint32 and out["bs_style"] == "lbs"


def test_pickle_that_runs_a_command_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": _RunsShell(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError, match="refused to load 'posix.system'"):
        load_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [b"", b"\x80\x02}q\x00(X\x01\x00", b"not a pickle at all"])
def test_truncated_or_corrupt_pickle(tmp_path, payload):
    path = tmp_path / "bad.pkl"
    path.write_bytes(payload)
    with pytest.raises(AssetFormatError, match="bad.pkl"):
        load_pickle(path)


def test_object_npy_goes_through_restricted_loader(tmp_path):
    good = tmp_path / "lmk.npy"
    np.save(good, {"static_lmk_faces_idx": np.arange(51)}, allow_pickle=True)
    assert np.array_equal(load_npy(good)["static_lmk_faces_idx"], np.arange(51))
    evil = tmp_path / "evil.npy"
    marker = tmp_path / "pwned"
    np.save(evil, np.array({"x": _RunsShell(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(UnsafePickleError):
        load_npy(evil)
    assert not marker.exists()


def test_plain_npy_and_corrupt_npy(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.ones((4, 3), np.float32))
    assert load_npy(path).shape == (4, 3)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(AssetFormatError, match="a.npy"):
        load_npy(path)
    (tmp_path / "b.npy").write_bytes(b"hello")
    with pytest.raises(AssetFormatError, match="not a .npy"):
        load_npy(tmp_path / "b.npy")
