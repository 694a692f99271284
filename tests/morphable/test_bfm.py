"""Bfm: Deep3DFaceRecon's BFM_model_front.mat and the Basel .h5, their writers, and the synthetic stand-in."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from facelab.errors import AssetFormatError, MissingAssetError
from facelab.morphable.bfm import (
    Bfm,
    BfmParams,
    read_bfm_h5,
    read_bfm_mat,
    vertex_face_table,
    write_bfm_h5,
    write_bfm_mat,
)
from facelab.morphable.synthetic.bfm import write_synthetic_bfm


@pytest.fixture(scope="module")
def mat_path(tmp_path_factory):
    return write_synthetic_bfm(tmp_path_factory.mktemp("bfm"), seed=0, size="tiny")


@pytest.fixture(scope="module")
def model(mat_path) -> Bfm:
    return Bfm(str(mat_path), recenter=False)


def _random_model(n: int = 30, seed: int = 0) -> dict:
    """Random arrays in write_bfm_mat's argument layout, on a strip of triangles."""
    rng = np.random.default_rng(seed)
    faces = np.array([[i, i + 1, i + 2] if i % 2 == 0 else [i + 1, i, i + 2] for i in range(n - 2)])
    return dict(
        mean_shape=rng.standard_normal((n, 3)),
        id_base=rng.standard_normal((n, 3, 80)) * 0.01,
        exp_base=rng.standard_normal((n, 3, 64)) * 0.01,
        mean_tex=rng.uniform(50, 200, (n, 3)),
        tex_base=rng.standard_normal((n, 3, 80)),
        faces=faces,
        keypoints=rng.integers(0, n, 68),
    )


def _params(model: Bfm, b: int = 1, dtype=torch.float32, tex: bool = True) -> BfmParams:
    return BfmParams(torch.zeros(b, model.num_id, dtype=dtype), torch.zeros(b, model.num_exp, dtype=dtype),
                     torch.zeros(b, model.num_tex, dtype=dtype) if tex else None)


def test_synthetic_file_has_deep3dfacerecon_layout(mat_path):
    mat = scipy.io.loadmat(str(mat_path))
    n3 = mat["meanshape"].size
    n = n3 // 3
    assert 50 <= n <= 150
    assert mat["meanshape"].shape == (1, n3) and mat["meantex"].shape == (1, n3)
    assert mat["idBase"].shape == (n3, 80) and mat["exBase"].shape == (n3, 64) and mat["texBase"].shape == (n3, 80)
    tri = mat["tri"]
    assert tri.shape[1] == 3 and tri.min() == 1 and tri.max() == n  # 1-based
    assert mat["point_buf"].shape[0] == n and mat["point_buf"].shape[1] >= 8
    assert mat["point_buf"].min() >= 1 and mat["point_buf"].max() <= len(tri) + 1
    assert mat["keypoints"].shape == (1, 68) and mat["keypoints"].min() >= 1
    assert 0 <= mat["meantex"].min() and mat["meantex"].max() <= 255
    assert {"frontmask2_idx", "tri_mask2", "skinmask"} <= set(mat)


def test_synthetic_is_deterministic(mat_path, tmp_path):
    again = read_bfm_mat(write_synthetic_bfm(tmp_path / "a", seed=0, size="tiny"))
    first, other = read_bfm_mat(mat_path), read_bfm_mat(write_synthetic_bfm(tmp_path / "b", seed=1, size="tiny"))
    for field in ("mean_shape", "id_basis", "exp_basis", "albedo_basis", "faces", "keypoints"):
        np.testing.assert_array_equal(getattr(again, field), getattr(first, field))
    assert not np.array_equal(other.id_basis[..., 40:], first.id_basis[..., 40:])


def test_write_read_mat_round_trip(tmp_path):
    arrays = _random_model()
    skin = np.zeros(30, dtype=bool)
    skin[::3] = True
    front = np.arange(5, 20)
    path = write_bfm_mat(tmp_path / "m.mat", **arrays, skin_mask=skin, front_mask=front)
    back = read_bfm_mat(path)
    np.testing.assert_allclose(back.mean_shape, arrays["mean_shape"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(back.id_basis, arrays["id_base"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(back.exp_basis, arrays["exp_base"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(back.mean_albedo, arrays["mean_tex"] / 255, rtol=1e-6)
    np.testing.assert_allclose(back.albedo_basis, arrays["tex_base"] / 255, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(back.faces, arrays["faces"])
    np.testing.assert_array_equal(back.keypoints, arrays["keypoints"])
    np.testing.assert_array_equal(back.regions["skin"], np.flatnonzero(skin))
    np.testing.assert_array_equal(back.regions["front"], front)
    tri_mask2 = scipy.io.loadmat(str(path))["tri_mask2"] - 1
    assert np.isin(tri_mask2, front).all() and len(tri_mask2) == np.isin(arrays["faces"], front).all(1).sum()
    assert back.units == "dm"


def test_point_buf_lists_every_adjacent_face():
    faces = _random_model()["faces"]
    table = vertex_face_table(faces, 30)
    for v in range(30):
        listed = set(table[v][table[v] < len(faces)].tolist())
        assert listed == set(np.flatnonzero((faces == v).any(axis=1)).tolist())
    assert (table[table >= len(faces)] == len(faces)).all()  # padding points at the appended zero face


def test_h5_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    n, k_id, k_exp, k_tex = 30, 12, 5, 7
    faces = _random_model(n)["faces"]

    def ortho(k):
        return np.linalg.qr(rng.standard_normal((3 * n, k)))[0].reshape(n, 3, k)

    shape_u, exp_u, col_u = ortho(k_id), ortho(k_exp), ortho(k_tex)
    var_id, var_exp, var_col = rng.uniform(1, 4, k_id), rng.uniform(1, 4, k_exp), rng.uniform(0.01, 0.02, k_tex)
    mean, exp_mean, col_mean = rng.standard_normal((n, 3)) * 50, rng.standard_normal((n, 3)), rng.uniform(0, 1, (n, 3))
    path = write_bfm_h5(tmp_path / "model2017.h5", mean_shape=mean, shape_basis=shape_u, shape_variance=var_id,
                        faces=faces, exp_mean=exp_mean, exp_basis=exp_u, exp_variance=var_exp, color_mean=col_mean,
                        color_basis=col_u, color_variance=var_col)
    with h5py.File(path) as h5:  # the Basel layout
        assert h5["shape/model/pcaBasis"].shape == (3 * n, k_id)
        assert h5["shape/representer/cells"].shape == (3, len(faces))
        np.testing.assert_allclose(np.linalg.norm(h5["shape/model/pcaBasis"][:], axis=0), 1.0, rtol=1e-5)
    back = read_bfm_h5(path)
    assert back.units == "mm" and back.keypoints is None
    np.testing.assert_allclose(back.mean_shape, mean + exp_mean, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(back.id_basis, shape_u * np.sqrt(var_id), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(back.exp_basis, exp_u * np.sqrt(var_exp), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(back.albedo_basis, col_u * np.sqrt(var_col), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(back.mean_albedo, col_mean, rtol=1e-6)
    np.testing.assert_array_equal(back.faces, faces)
    keypoints = list(range(68))
    h5_model = Bfm(str(path), keypoints=[i % n for i in keypoints], recenter=False)
    assert h5_model.units == "mm" and (h5_model.num_id, h5_model.num_exp, h5_model.num_tex) == (k_id, k_exp, k_tex)
    out = h5_model(BfmParams(torch.zeros(1, k_id), torch.zeros(1, k_exp), torch.zeros(1, k_tex)))
    np.testing.assert_allclose(out.verts[0].numpy(), mean + exp_mean, rtol=1e-5, atol=1e-4)
    assert out.landmarks68.shape == (1, 68, 3)
    assert Bfm(str(path))(BfmParams(torch.zeros(1, k_id), torch.zeros(1, k_exp))).landmarks68 is None


def test_zero_coefficients_give_the_mean(model, mat_path, tmp_path):
    mat = scipy.io.loadmat(str(mat_path))
    out = model(_params(model, b=2))
    n = model.num_verts
    assert out.verts.shape == (2, n, 3) and out.landmarks68.shape == (2, 68, 3) and out.albedo.shape == (2, n, 3)
    np.testing.assert_allclose(out.verts[1].numpy(), mat["meanshape"].reshape(n, 3), rtol=1e-6)
    np.testing.assert_allclose(out.albedo[0].numpy(), mat["meantex"].reshape(n, 3) / 255, rtol=1e-6)
    torch.testing.assert_close(out.landmarks68, out.verts[:, mat["keypoints"].reshape(-1) - 1])
    assert model.units == "dm" and model.has_uv  # the stand-in's BFM_UV.mat beside the model
    assert model.uv.shape == (n, 2) and torch.equal(model.faces_uv, model.faces)
    assert model(_params(model, tex=False)).albedo is None
    bare = Bfm(str(write_bfm_mat(tmp_path / "m.mat", **_random_model())))  # no BFM_UV.mat beside it
    assert not bare.has_uv and bare.uv.shape == (0, 2) and bare.faces_uv.shape == (0, 3)
    assert model.state_dict() == {}  # asset data stays out of checkpoints
    centred = Bfm(str(mat_path))(_params(model)).verts[0]
    torch.testing.assert_close(centred.mean(0), torch.zeros(3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("part,key,k", [("identity", "idBase", 3), ("expression", "exBase", 0),
                                        ("albedo", "texBase", 5)])
def test_a_coefficient_adds_its_basis_vector(model, mat_path, part, key, k):
    mat = scipy.io.loadmat(str(mat_path))
    params = _params(model)
    getattr(params, part)[0, k] = 0.1  # small: the albedo stays inside [0, 1] (no clamping)
    out, base = model(params), model(_params(model))
    got = (out.albedo - base.albedo) if part == "albedo" else (out.verts - base.verts)
    expected = 0.1 * mat[key][:, k].reshape(-1, 3) / (255 if part == "albedo" else 1)
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-4, atol=1e-6)


def test_component_counts(mat_path):
    small = Bfm(str(mat_path), num_id=10, num_exp=5, num_tex=0)
    assert small.shape_basis.shape == (15, 3 * small.num_verts) and small.id_basis.shape[0] == 10
    out = small(BfmParams(torch.zeros(1, 10), torch.ones(1, 5)))
    assert out.verts.shape[1] == small.num_verts
    with pytest.raises(AssetFormatError, match="num_id=81 but the file has 80 identity components"):
        Bfm(str(mat_path), num_id=81)
    with pytest.raises(ValueError, match=r"BfmParams.expression must be \(B, 5\)"):
        small(BfmParams(torch.zeros(1, 10), torch.zeros(1, 64)))


def test_synthetic_keyword(tmp_path, monkeypatch):
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path))
    model = Bfm("synthetic:tiny")
    assert model.num_id == 80 and model.num_exp == 64 and model.num_tex == 80 and model.keypoints.shape == (68,)
    assert set(model.regions) == {"face", "front", "skin"}


def test_float64_batch_device_and_gradients(mat_path):
    m64 = Bfm(str(mat_path)).double()
    assert m64.shape_basis.dtype == torch.float64
    params = BfmParams(*(torch.randn(4, k, dtype=torch.float64, requires_grad=True) * 0.1 for k in (80, 64, 80)))
    for p in (params.identity, params.expression, params.albedo):
        p.retain_grad()
    out = m64(params)
    assert out.verts.dtype == out.albedo.dtype == torch.float64 and out.verts.shape[0] == 4
    (out.landmarks68.square().sum() + out.albedo.sum()).backward()
    blocks = (params.identity, params.expression, params.albedo)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in blocks)
    single = m64(BfmParams(params.identity[2:3].detach(), params.expression[2:3].detach(), params.albedo[2:3].detach()))
    torch.testing.assert_close(single.verts[0], out.verts[2].detach())
    meta = Bfm(str(mat_path)).to("meta")  # no device is assumed anywhere
    out_meta = meta(BfmParams(*(torch.zeros(2, k, device="meta") for k in (80, 64, 80))))
    assert out_meta.verts.device.type == "meta" and out_meta.verts.shape == (2, meta.num_verts, 3)


def _resave(tmp_path, mat_path, **changes):
    mat = {k: v for k, v in scipy.io.loadmat(str(mat_path)).items() if not k.startswith("__")}
    for key, value in changes.items():
        if value is None:
            mat.pop(key)
        else:
            mat[key] = value
    out = tmp_path / "broken.mat"
    scipy.io.savemat(str(out), mat)
    return str(out)


def test_errors(tmp_path, mat_path):
    with pytest.raises(MissingAssetError, match="model_path") as err:
        Bfm(str(tmp_path / "BFM_model_front.mat"))
    assert "synthetic" in str(err.value) and "faces.dmi.unibas.ch" in str(err.value)
    mat = scipy.io.loadmat(str(mat_path))
    with pytest.raises(AssetFormatError, match=r"missing keys \['exBase'\]"):
        Bfm(_resave(tmp_path, mat_path, exBase=None))
    with pytest.raises(AssetFormatError, match="'idBase' has .* rows .* truncated"):
        Bfm(_resave(tmp_path, mat_path, idBase=mat["idBase"][:-3]))
    tri = mat["tri"].copy()
    tri[0, 0] = mat["meanshape"].size // 3 + 1
    with pytest.raises(AssetFormatError, match="'tri' indices span .* outside"):
        Bfm(_resave(tmp_path, mat_path, tri=tri))
    with pytest.raises(AssetFormatError, match="'tri' indices span"):
        Bfm(_resave(tmp_path, mat_path, tri=mat["tri"] - 1))  # 0-based triangles in a 1-based field
    with pytest.raises(AssetFormatError, match="'keypoints' has 67 entries"):
        Bfm(_resave(tmp_path, mat_path, keypoints=mat["keypoints"][:, :67]))
    not_a_mat = tmp_path / "garbage.mat"
    not_a_mat.write_bytes(b"not a matlab file at all" * 10)
    with pytest.raises(AssetFormatError):
        Bfm(str(not_a_mat))
    h5 = tmp_path / "no_cells.h5"
    with h5py.File(h5, "w") as f:
        f["shape/model/mean"] = np.zeros(9, dtype=np.float32)
        f["shape/model/pcaBasis"] = np.zeros((9, 2), dtype=np.float32)
        f["shape/model/pcaVariance"] = np.ones(2, dtype=np.float32)
    with pytest.raises(AssetFormatError, match="representer/cells"):
        Bfm(str(h5))
    with pytest.raises(AssetFormatError, match="68"):
        Bfm(str(mat_path), keypoints=[0, 1, 2])


def test_jsonargparse_builds_it_from_a_config(mat_path):
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(Bfm, "model")
    cfg = parser.parse_args(["--model.model_path", str(mat_path), "--model.num_id", "40"])
    model = parser.instantiate(cfg).model
    assert isinstance(model, Bfm) and model.num_id == 40
