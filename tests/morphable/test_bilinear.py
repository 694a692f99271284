"""BilinearModel: FaceScape's v1.6 .npz and v1.0-1.3 core_*.npy, the writer, and the synthetic stand-in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facelab.errors import AssetFormatError, MissingAssetError
from facelab.io.obj import write_obj
from facelab.morphable.bilinear import (
    BilinearModel,
    BilinearParams,
    core_to_absolute,
    core_to_residual,
    read_facescape_core_npy,
    read_facescape_npz,
    write_facescape_npz,
)
from facelab.morphable.synthetic.bilinear import write_synthetic_bilinear
from facelab.morphable.synthetic.head import build_head


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
    return write_synthetic_bilinear(tmp_path_factory.mktemp("bilinear"), seed=0, size="tiny")


@pytest.fixture(scope="module")
def model(npz_path) -> BilinearModel:
    return BilinearModel(str(npz_path))


@pytest.fixture(scope="module")
def raw(npz_path) -> dict:
    with np.load(npz_path) as z:
        return {k: z[k] for k in z.files}


def _toolkit_vertices(raw: dict, w_id: np.ndarray, w_exp: np.ndarray) -> np.ndarray:
    """FaceScape's toolkit: residual core, then ``core.dot(id).dot(exp)`` (facescape_bm.py: gen_full)."""
    core = core_to_residual(raw["shape_bm_core"].astype(np.float64))
    return core.dot(w_id).dot(w_exp).reshape(-1, 3)


def _zeros(model: BilinearModel, b: int = 1, dtype=torch.float32) -> BilinearParams:
    return BilinearParams(torch.zeros(b, model.num_id, dtype=dtype), torch.zeros(b, model.num_exp, dtype=dtype))


def _tiny_model(n: int = 12, k: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    faces = np.array([[i, i + 1, i + 2] for i in range(n - 2)])
    return dict(core=rng.standard_normal((3 * n, 52, k)), faces=faces, uv=rng.uniform(0, 1, (n + 2, 2)),
                faces_uv=faces + 1, id_mean=rng.standard_normal(k), id_var=rng.uniform(0.5, 2, k),
                landmarks=rng.integers(0, n, 68), front_vertices=np.arange(3, 9))


def test_synthetic_file_has_the_v16_layout(raw):
    core = raw["shape_bm_core"]
    n = core.shape[0] // 3
    assert core.shape == (3 * n, 52, 50) and 100 <= n <= 200
    assert raw["fv_indices"].min() == 1 and raw["fv_indices"].max() == n  # 1-based, as FaceScape's files
    assert raw["ft_indices"].min() == 1 and raw["ft_indices"].max() == len(raw["texcoords"])
    assert raw["id_mean"].shape == raw["id_var"].shape == (50,)
    assert raw["lm_list_v16"].shape == (68,) and int(raw["vert_num"]) == n
    front = raw["v_indices_front"]
    assert raw["fv_indices_front"].max() <= len(front) == int(raw["frontal_vert_num"])


def test_synthetic_is_deterministic(raw, tmp_path):
    with np.load(write_synthetic_bilinear(tmp_path / "a", seed=0, size="tiny")) as again:
        for key in ("shape_bm_core", "fv_indices", "id_mean", "id_var", "lm_list_v16"):
            np.testing.assert_array_equal(again[key], raw[key])
    with np.load(write_synthetic_bilinear(tmp_path / "b", seed=1, size="tiny")) as other:
        assert not np.array_equal(other["shape_bm_core"], raw["shape_bm_core"])


def test_residual_and_absolute_are_inverse():
    core = np.random.default_rng(0).standard_normal((9, 52, 3))
    np.testing.assert_allclose(core_to_absolute(core_to_residual(core)), core)
    res = core_to_residual(core)
    np.testing.assert_allclose(res[:, 0], core[:, 0])
    np.testing.assert_allclose(res[:, 5], core[:, 5] - core[:, 0])


def test_npz_round_trip(tmp_path):
    arrays = _tiny_model()
    path = write_facescape_npz(tmp_path / "fs.npz", **arrays)
    back = read_facescape_npz(path)
    np.testing.assert_allclose(back.core, core_to_residual(arrays["core"].astype(np.float32)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(back.faces, arrays["faces"])
    np.testing.assert_allclose(back.uv, arrays["uv"])
    np.testing.assert_array_equal(back.faces_uv, arrays["faces_uv"])
    np.testing.assert_allclose(back.id_mean, arrays["id_mean"])
    np.testing.assert_allclose(back.id_var, arrays["id_var"])
    np.testing.assert_array_equal(back.landmarks, arrays["landmarks"])
    np.testing.assert_array_equal(back.regions["front"], arrays["front_vertices"])
    compressed = read_facescape_npz(write_facescape_npz(tmp_path / "fs_z.npz", **arrays, compress=True))
    np.testing.assert_array_equal(compressed.core, back.core)
    residual = read_facescape_npz(path, residual_core=True)
    np.testing.assert_allclose(residual.core, arrays["core"], rtol=1e-6, atol=1e-6)


def test_old_npy_core_with_topology(tmp_path):
    arrays = _tiny_model()
    n, k = 12, 4
    rng = np.random.default_rng(3)
    np.save(tmp_path / "core_847_4_52.npy", arrays["core"].transpose(2, 1, 0))  # stored (K, 52, 3V)
    factors = rng.standard_normal((20, k))
    np.save(tmp_path / "factors_id_847_4_52.npy", factors)
    write_obj(tmp_path / "topology.obj", rng.standard_normal((n, 3)), arrays["faces"], uv=arrays["uv"],
              faces_uv=arrays["faces_uv"])
    back = read_facescape_core_npy(tmp_path / "core_847_4_52.npy", tmp_path / "topology.obj")
    np.testing.assert_allclose(back.core, core_to_residual(arrays["core"]))
    np.testing.assert_allclose(back.id_mean, factors.mean(0))
    np.testing.assert_array_equal(back.faces, arrays["faces"])
    model = BilinearModel(str(tmp_path / "core_847_4_52.npy"), topology=str(tmp_path / "topology.obj"))
    w_exp = np.r_[1.0, np.zeros(51)]
    expected = core_to_residual(arrays["core"]).dot(factors.mean(0)).dot(w_exp).reshape(-1, 3)
    np.testing.assert_allclose(model(_zeros(model)).verts[0].numpy(), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(AssetFormatError, match="needs 'topology'"):
        BilinearModel(str(tmp_path / "core_847_4_52.npy"))
    with pytest.raises(MissingAssetError, match="identity_factors"):
        read_facescape_core_npy(tmp_path / "core_847_4_52.npy", tmp_path / "topology.obj",
                                identity_factors=tmp_path / "nope.npy")
    write_obj(tmp_path / "other.obj", rng.standard_normal((n + 1, 3)), arrays["faces"])
    with pytest.raises(AssetFormatError, match="13 vertices"):
        read_facescape_core_npy(tmp_path / "core_847_4_52.npy", tmp_path / "other.obj")


def test_zero_coefficients_give_the_mean_face(model, raw):
    out = model(_zeros(model, b=2))
    n = model.num_verts
    assert out.verts.shape == (2, n, 3) and out.landmarks68.shape == (2, 68, 3)
    expected = _toolkit_vertices(raw, raw["id_mean"], np.r_[1.0, np.zeros(51)])
    np.testing.assert_allclose(out.verts[1].numpy(), expected, rtol=1e-5, atol=1e-3)
    # the stand-in is built so that the mean face is exactly the procedural head, in millimetres
    np.testing.assert_allclose(out.verts[0].numpy(), build_head("tiny", 0, 1, 1).verts * 1000, atol=2e-3)
    torch.testing.assert_close(out.landmarks68, out.verts[:, torch.as_tensor(raw["lm_list_v16"])])
    assert model.units == "mm" and model.uv.shape == raw["texcoords"].shape
    assert set(model.regions) == {"head", "front"}
    assert model.state_dict() == {}  # asset data stays out of checkpoints


def test_a_coefficient_adds_its_basis_vector(model, raw):
    base = model(_zeros(model)).verts[0].numpy()
    core = core_to_residual(raw["shape_bm_core"].astype(np.float64))
    exp = _zeros(model)
    exp.expression[0, 7] = 1.0  # blendshape 8 of the 51 (w_exp[8] = 1)
    np.testing.assert_allclose(model(exp).verts[0].numpy() - base, (core[:, 8] @ raw["id_mean"]).reshape(-1, 3),
                               rtol=1e-4, atol=1e-3)
    ident = _zeros(model)
    ident.identity[0, 3] = 1.0  # one standard deviation of identity factor 3
    expected = np.sqrt(raw["id_var"][3]) * core[:, 0, 3].reshape(-1, 3)
    np.testing.assert_allclose(model(ident).verts[0].numpy() - base, expected, rtol=1e-4, atol=1e-3)


def test_bilinear_against_the_toolkit_formula(model, raw):
    rng = np.random.default_rng(5)
    c, b = rng.standard_normal((3, 50)), rng.uniform(0, 1, (3, 51))
    out = model(BilinearParams(torch.tensor(c, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)))
    for i in range(3):
        w_id = raw["id_mean"] + np.sqrt(raw["id_var"]) * c[i]
        expected = _toolkit_vertices(raw, w_id, np.r_[1.0, b[i]])
        np.testing.assert_allclose(out.verts[i].numpy(), expected, rtol=1e-4, atol=2e-2)
    # bilinear, not linear: a blendshape's delta depends on the identity
    e = np.zeros((1, 51))
    e[0, 0] = 1.0
    delta = [model(BilinearParams(torch.tensor(ci, dtype=torch.float32)[None], torch.tensor(e, dtype=torch.float32)))
             .verts - model(BilinearParams(torch.tensor(ci, dtype=torch.float32)[None], torch.zeros(1, 51))).verts
             for ci in (np.zeros(50), c[0])]
    assert (delta[0] - delta[1]).abs().max() > 1e-2


def test_factors_round_trip_and_truncation(model, npz_path):
    params = BilinearParams(torch.randn(2, 50), torch.rand(2, 51))
    factors = model.identity_factors(params.identity)
    again = model.coefficients_from_factors(factors, torch.cat([torch.ones(2, 1), params.expression], 1))
    torch.testing.assert_close(again.identity, params.identity, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="neutral weight 1"):
        model.coefficients_from_factors(factors, torch.zeros(2, 52))
    small = BilinearModel(str(npz_path), num_id=10)
    padded = BilinearParams(torch.cat([params.identity[:, :10], torch.zeros(2, 40)], 1), params.expression)
    cut = BilinearParams(params.identity[:, :10], params.expression)
    torch.testing.assert_close(small(cut).verts, model(padded).verts)
    with pytest.raises(AssetFormatError, match="num_id=51"):
        BilinearModel(str(npz_path), num_id=51)


def test_float64_batch_device_and_gradients(npz_path):
    m64 = BilinearModel(str(npz_path)).double()
    ident = torch.randn(3, 50, dtype=torch.float64, requires_grad=True)
    exp = torch.rand(3, 51, dtype=torch.float64, requires_grad=True)
    out = m64(BilinearParams(ident, exp))
    assert out.verts.dtype == torch.float64 and out.verts.shape[0] == 3
    out.landmarks68.square().sum().backward()
    assert ident.grad.abs().sum() > 0 and exp.grad.abs().sum() > 0
    one = m64(BilinearParams(ident[1:2].detach(), exp[1:2].detach())).verts
    torch.testing.assert_close(one[0], out.verts[1].detach())
    meta = BilinearModel(str(npz_path)).to("meta")
    assert meta(BilinearParams(torch.zeros(2, 50, device="meta"), torch.zeros(2, 51, device="meta"))).verts.is_meta


def test_synthetic_keyword(tmp_path, monkeypatch):
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path))
    model = BilinearModel("synthetic:tiny")
    assert model.num_id == 50 and model.num_exp == 51 and model.landmark_ids.shape == (68,)


def test_errors(tmp_path, raw, model):
    with pytest.raises(MissingAssetError, match="model_path") as err:
        BilinearModel(str(tmp_path / "facescape_bm_v1.6_847_50_52_id_front.npz"))
    assert "facescape.nju.edu.cn" in str(err.value)

    def broken(**changes):
        data = dict(raw)
        for key, value in changes.items():
            data.pop(key) if value is None else data.__setitem__(key, value)
        np.savez(tmp_path / "broken.npz", **data)
        return str(tmp_path / "broken.npz")

    with pytest.raises(AssetFormatError, match=r"missing keys \['fv_indices'\]"):
        BilinearModel(broken(fv_indices=None))
    with pytest.raises(AssetFormatError, match="51 expressions on axis 1, expected 52"):
        BilinearModel(broken(shape_bm_core=raw["shape_bm_core"][:, :51]))
    faces = raw["fv_indices"].copy()
    faces[0, 0] = model.num_verts + 1
    with pytest.raises(AssetFormatError, match="'fv_indices' indices span .* outside"):
        BilinearModel(broken(fv_indices=faces))
    with pytest.raises(AssetFormatError, match="'id_mean' has 49 entries"):
        BilinearModel(broken(id_mean=raw["id_mean"][:49]))
    with pytest.raises(AssetFormatError, match="'lm_list_v16'"):
        BilinearModel(broken(lm_list_v16=raw["lm_list_v16"][:60]))
    with pytest.raises(ValueError, match=r"expression must be \(B, 51\)"):
        model(BilinearParams(torch.zeros(1, 50), torch.zeros(1, 52)))
