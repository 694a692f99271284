"""BFM UV layouts: 3DMMasSTN's BFM_UV.mat (full and trimmed topologies through Deep3DFaceRecon's index files), .npy,
.obj; clear errors for bad files; the synthetic stand-in's layout has no flipped or overlapping face triangles."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from facelab.errors import AssetFormatError, MissingAssetError
from facelab.io.obj import write_obj
from facelab.morphable.bfm import BFM_MAT_NAME, BFM_UV_NAME, Bfm, read_bfm_mat, read_bfm_uv
from facelab.morphable.synthetic.bfm import write_synthetic_bfm

N_FULL, N_TRIM = 53490, 53215  # BFM 2009 vertices, the 3DDFA / Guo et al. trimmed topology


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    """The tiny synthetic BFM folder: BFM_model_front.mat and its BFM_UV.mat."""
    return write_synthetic_bfm(tmp_path_factory.mktemp("bfm_uv"), seed=0, size="tiny").parent


@pytest.fixture(scope="module")
def reference_uv(stand_in) -> np.ndarray:
    return scipy.io.loadmat(str(stand_in / BFM_UV_NAME))["UV"]


@pytest.fixture
def bare(stand_in, tmp_path) -> Path:
    """A copy of the model file alone (no UVs beside it)."""
    return Path(shutil.copy(stand_in / BFM_MAT_NAME, tmp_path / BFM_MAT_NAME))


def _one_based(ids: np.ndarray) -> np.ndarray:
    return (ids + 1).astype(np.float64).reshape(-1, 1)  # MATLAB stores them as (N, 1) doubles


def _full_topology_files(folder: Path, uv: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write a 53490-row BFM_UV.mat and Deep3DFaceRecon's index files into ``folder`` so that the model's vertex i
    is row trim[front[i]] (random ids, as in the real files the selection is not contiguous)."""
    rng = np.random.default_rng(seed)
    trim = np.sort(rng.choice(N_FULL, N_TRIM, replace=False))
    front = rng.choice(N_TRIM, len(uv), replace=False)
    table = rng.uniform(0, 1, (N_FULL, 2))
    table[trim[front]] = uv
    scipy.io.savemat(str(folder / BFM_UV_NAME), {"UV": table})
    scipy.io.savemat(str(folder / "BFM_exp_idx.mat"), {"trimIndex": _one_based(trim)})
    scipy.io.savemat(str(folder / "BFM_front_idx.mat"), {"idx": _one_based(front)})
    return trim, front


def test_stand_in_has_stn_layout_beside_it(stand_in, reference_uv):
    model = Bfm(str(stand_in / BFM_MAT_NAME))
    n = read_bfm_mat(stand_in / BFM_MAT_NAME).num_verts
    assert reference_uv.shape == (n, 2) and model.has_uv
    np.testing.assert_allclose(model.uv.numpy(), reference_uv, atol=1e-7)
    assert torch.equal(model.faces_uv, model.faces)


def test_stn_full_topology_through_deep3dfacerecon_index_files(bare, reference_uv):
    _full_topology_files(bare.parent, reference_uv)  # found beside the model
    np.testing.assert_allclose(Bfm(str(bare)).uv.numpy(), reference_uv, atol=1e-7)


def test_face3d_trimmed_table_needs_only_the_front_index(bare, reference_uv, tmp_path):
    tmp_path = tmp_path / "elsewhere"  # not beside the model: the index is given explicitly
    tmp_path.mkdir()
    trim, front = _full_topology_files(tmp_path, reference_uv)
    table = scipy.io.loadmat(str(tmp_path / BFM_UV_NAME))["UV"][trim]  # face3d's (53215, 2) BFM_UV.mat
    scipy.io.savemat(str(tmp_path / "trimmed.mat"), {"UV": table.T})  # also the MATLAB (2, N) orientation
    model = Bfm(str(bare), uv_path=str(tmp_path / "trimmed.mat"), uv_index=str(tmp_path / "BFM_front_idx.mat"))
    np.testing.assert_allclose(model.uv.numpy(), reference_uv, atol=1e-7)
    shutil.copy(tmp_path / "BFM_front_idx.mat", bare.parent)  # or found beside the model
    np.testing.assert_allclose(Bfm(str(bare), uv_path=str(tmp_path / "trimmed.mat")).uv.numpy(), reference_uv,
                               atol=1e-7)


def test_explicit_index_chain_of_npy_files(bare, reference_uv, tmp_path):
    rng = np.random.default_rng(1)
    table = rng.uniform(0, 1, (500, 2))
    ids = rng.choice(500, len(reference_uv), replace=False)
    table[ids] = reference_uv
    np.save(tmp_path / "table.npy", table)
    np.save(tmp_path / "ids.npy", ids)  # .npy index lists are 0-based
    model = Bfm(str(bare), uv_path=str(tmp_path / "table.npy"), uv_index=[str(tmp_path / "ids.npy")])
    np.testing.assert_allclose(model.uv.numpy(), reference_uv, atol=1e-7)


def test_npy_per_vertex(bare, reference_uv, tmp_path):
    np.save(tmp_path / "uv.npy", reference_uv.astype(np.float32))
    model = Bfm(str(bare), uv_path=str(tmp_path / "uv.npy"))
    np.testing.assert_allclose(model.uv.numpy(), reference_uv, atol=1e-6)


def test_obj_with_the_model_triangles_keeps_its_seams(bare, reference_uv, tmp_path):
    arrays = read_bfm_mat(bare)
    faces = arrays.faces
    # a seam: the first triangle gets its own copies of its three UVs, shifted a little
    uv = np.concatenate([reference_uv, reference_uv[faces[0]] * 0.9 + 0.05])
    faces_uv = faces.copy()
    faces_uv[0] = len(reference_uv) + np.arange(3)
    write_obj(tmp_path / "seam.obj", arrays.mean_shape, faces, uv=uv, faces_uv=faces_uv)
    model = Bfm(str(bare), uv_path=str(tmp_path / "seam.obj"))
    corners = model.uv[model.faces_uv].numpy()
    np.testing.assert_allclose(corners, uv[faces_uv], atol=1e-6)
    assert not torch.equal(model.faces_uv, model.faces)


def test_obj_of_other_triangles_transfers_per_vertex_uvs(bare, reference_uv, tmp_path):
    arrays = read_bfm_mat(bare)
    faces = arrays.faces[::-1].copy()  # another triangle order: only the per-vertex UVs carry over
    write_obj(tmp_path / "plain.obj", arrays.mean_shape, faces, uv=reference_uv, faces_uv=faces)
    model = Bfm(str(bare), uv_path=str(tmp_path / "plain.obj"))
    np.testing.assert_allclose(model.uv.numpy(), reference_uv, atol=1e-6)
    assert torch.equal(model.faces_uv, model.faces)


def test_bad_uv_files_give_clear_errors(bare, reference_uv, tmp_path):
    faces, n = read_bfm_mat(bare).faces, len(reference_uv)
    with pytest.raises(MissingAssetError, match="uv_path"):
        Bfm(str(bare), uv_path=str(tmp_path / "BFM_UV.mat"))
    np.save(tmp_path / "uv.npy", reference_uv)
    with pytest.raises(MissingAssetError, match="uv_index"):
        Bfm(str(bare), uv_path=str(tmp_path / "uv.npy"), uv_index=str(tmp_path / "BFM_front_idx.mat"))

    def bad(name: str, array, key: str = "UV") -> str:
        path = tmp_path / name
        if name.endswith(".npy"):
            np.save(path, array)
        else:
            scipy.io.savemat(str(path), {key: array})
        return str(path)

    with pytest.raises(AssetFormatError, match=r"UVs span \[5, 250\], expected \[0, 1\]"):
        read_bfm_uv(bad("pixels.npy", np.round(reference_uv * 255)), faces, n)
    with pytest.raises(AssetFormatError, match="NaN or infinite"):
        read_bfm_uv(bad("nan.npy", np.where(np.arange(n)[:, None] == 3, np.inf, reference_uv)), faces, n)
    with pytest.raises(AssetFormatError, match=r"shape \(\d+, 3\), expected \(N, 2\)"):
        read_bfm_uv(bad("xyz.npy", np.zeros((n, 3))), faces, n)
    with pytest.raises(AssetFormatError, match=rf"{n + 7} UV rows for a model of {n} vertices.*uv_index"):
        read_bfm_uv(bad("rows.mat", np.zeros((n + 7, 2))), faces, n)
    with pytest.raises(AssetFormatError, match="expected key 'UV'"):
        read_bfm_uv(bad("key.mat", reference_uv, key="texcoords"), faces, n)
    with pytest.raises(AssetFormatError, match="degenerate"):
        read_bfm_uv(bad("flat.npy", np.full((n, 2), 0.5)), faces, n)
    np.save(tmp_path / "ids.npy", np.arange(n) + 400)
    with pytest.raises(AssetFormatError, match="select from only 300 rows"):
        read_bfm_uv(bad("small.npy", np.zeros((300, 2))), faces, n, uv_index=tmp_path / "ids.npy")
    (tmp_path / "uv.png").write_bytes(b"\x89PNG")
    with pytest.raises(AssetFormatError, match="unknown UV file type"):
        read_bfm_uv(tmp_path / "uv.png", faces, n)
    verts = read_bfm_mat(bare).mean_shape
    write_obj(tmp_path / "novt.obj", verts, faces)
    with pytest.raises(AssetFormatError, match="no 'vt'"):
        read_bfm_uv(tmp_path / "novt.obj", faces, n)
    seam_uv = np.concatenate([reference_uv, [[0.1, 0.1]]])
    faces_uv = faces.copy()
    faces_uv[0, 0] = n  # vertex faces[0, 0] gets two different UVs
    write_obj(tmp_path / "seam.obj", verts, faces[::-1].copy(), uv=seam_uv, faces_uv=faces_uv[::-1].copy())
    with pytest.raises(AssetFormatError, match="seams"):
        read_bfm_uv(tmp_path / "seam.obj", faces, n)


# ------------------------------------------------------------------------------------------------ layout quality
def uv_coverage(uv: np.ndarray, faces_uv: np.ndarray, res: int = 256) -> np.ndarray:
    """(res, res) number of UV triangles strictly containing each texel centre (either orientation)."""
    tri = uv[faces_uv] * res - 0.5  # (F, 3, 2); texel (i, j) has its centre at (i, j)
    lo = np.clip(np.ceil(tri.min(axis=1)), 0, res - 1).astype(np.int64)
    hi = np.clip(np.floor(tri.max(axis=1)), 0, res - 1).astype(np.int64)
    size = np.maximum(hi - lo + 1, 0)
    count = size[:, 0] * size[:, 1]
    f = np.repeat(np.arange(len(tri)), count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    p = np.stack([lo[f, 0] + k % size[f, 0], lo[f, 1] + k // size[f, 0]], axis=1).astype(np.float64)
    a, b, c = tri[f, 0], tri[f, 1], tri[f, 2]

    def edge(p0, p1, q):
        return (p1[:, 0] - p0[:, 0]) * (q[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (q[:, 0] - p0[:, 0])

    sign = np.sign(edge(a, b, c))
    inside = (sign * edge(b, c, p) > 1e-9) & (sign * edge(c, a, p) > 1e-9) & (sign * edge(a, b, p) > 1e-9)
    flat = (p[:, 1] * res + p[:, 0]).astype(np.int64)
    return np.bincount(flat[inside], minlength=res * res).reshape(res, res)


def signed_uv_areas(uv: np.ndarray, faces_uv: np.ndarray) -> np.ndarray:
    a, b, c = uv[faces_uv[:, 0]], uv[faces_uv[:, 1]], uv[faces_uv[:, 2]]
    return 0.5 * ((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0])


def test_layout_checks_can_fail():
    uv = np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]])
    good = np.array([[0, 1, 2], [0, 2, 3]])
    assert (signed_uv_areas(uv, good) > 0).all() and uv_coverage(uv, good, 64).max() == 1
    folded = np.array([[0, 1, 2], [0, 2, 3], [0, 1, 3]])  # a third triangle over the other two
    assert uv_coverage(uv, folded, 64).max() == 2
    assert (signed_uv_areas(uv, np.array([[0, 2, 1]])) < 0).all()


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_stand_in_layout_has_no_flips_or_overlaps(size):
    model = Bfm(f"synthetic:{size}")
    uv, faces_uv = model.uv.double().numpy(), model.faces_uv.numpy()
    area = signed_uv_areas(uv, faces_uv)
    assert (area > 0).all(), f"{(area <= 0).sum()} flipped or degenerate UV triangles"  # CCW, as the 3D faces
    coverage = uv_coverage(uv, faces_uv, res=512)
    assert coverage.max() == 1  # no texel centre inside two triangles
    assert 0.4 < (coverage > 0).mean() < 0.95  # the face fills a good part of the texture
    assert uv.min() >= 0.02 - 1e-6 and uv.max() <= 0.98 + 1e-6
    # a sensible unwrap: the UV layout is the front view, not a mirror (u grows towards the subject's left, +x)
    verts = model.mean_shape.view(-1, 3).double().numpy()
    assert np.corrcoef(uv[:, 0], verts[:, 0])[0, 1] > 0.9 and np.corrcoef(uv[:, 1], verts[:, 1])[0, 1] > 0.9
