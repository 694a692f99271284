"""IctFaceModel on the real ICT-FaceKit subset shipped in shared/assets (10 identities, 57 expression OBJs)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from facelab.errors import AssetFormatError, MissingAssetError
from facelab.io.obj import read_obj, read_obj_vertices
from facelab.morphable.ict import IctFaceModel, IctParams, read_ict_folder

ICT_DIR = Path(__file__).parents[3] / "shared" / "assets" / "ict-facekit" / "FaceXModel"

pytestmark = pytest.mark.skipif(not (ICT_DIR / "generic_neutral_mesh.obj").is_file(),
                                reason=f"ICT-FaceKit folder not found at {ICT_DIR}")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("facelab_cache")


@pytest.fixture(autouse=True)
def _isolated_cache(cache_root, monkeypatch):
    monkeypatch.setenv("FACELAB_CACHE", str(cache_root))


@pytest.fixture(scope="module")
def model(cache_root) -> IctFaceModel:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACELAB_CACHE", str(cache_root))
        return IctFaceModel(str(ICT_DIR))


def _params(model: IctFaceModel, b: int = 1, dtype=torch.float32) -> IctParams:
    return IctParams(torch.zeros(b, model.num_identities, dtype=dtype), torch.zeros(b, model.num_expressions,
                                                                                     dtype=dtype))


def test_counts_and_names(model):
    assert model.num_verts == 26719
    assert model.num_identities == 10
    assert model.landmark_ids.shape == (68,)
    assert model.num_expressions == 53  # vertex_indices.json's list, ICT's own default
    for name in ("jawOpen", "eyeBlink_L", "mouthSmile_L"):
        assert model.expression_names[model.expression_index(name)] == name
    assert "PupilDilate_L" not in model.expression_names
    assert model.units == "cm"
    # quads fan-triangulated: 25,836 quads + 548 triangles
    assert model.num_faces == 2 * 25836 + 548
    assert model.uv.shape == (28911, 2) and model.faces_uv.shape == model.faces.shape
    assert set(model.regions) >= {"face", "head_neck", "mouth_socket", "eye_sockets", "teeth", "eyeballs"}
    assert len(model.regions["face"]) == 9409 and model.regions["left_eyeball"][0] == 21451
    assert model.state_dict() == {}  # asset data stays out of checkpoints


def test_left_is_plus_x(model):
    verts = model.v_template.view(-1, 3)
    assert verts[model.regions["left_eyeball"]][:, 0].mean() > 0 > verts[model.regions["right_eyeball"]][:, 0].mean()


def test_zero_coefficients_give_the_neutral_mesh(model):
    neutral = read_obj(ICT_DIR / "generic_neutral_mesh.obj")
    out = model(_params(model, b=2))
    assert out.verts.shape == (2, 26719, 3) and out.landmarks68.shape == (2, 68, 3)
    np.testing.assert_allclose(out.verts[1].numpy(), neutral.verts, atol=1e-5)
    np.testing.assert_array_equal(model.faces.numpy(), neutral.faces)


@pytest.mark.parametrize("name", ["jawOpen", "identity003"])
def test_unit_weight_reproduces_the_obj(model, name):
    params = _params(model)
    if name.startswith("identity"):
        params.identity[0, int(name[-3:])] = 1.0
    else:
        params.expression[0, model.expression_index(name)] = 1.0
    expected = read_obj_vertices(ICT_DIR / f"{name}.obj")
    np.testing.assert_allclose(model(params).verts[0].numpy(), expected, atol=1e-4)


def test_cache_is_used_and_fast(cache_root, model):
    files = list((cache_root / "ict").glob("*.npz"))
    assert len(files) == 1
    t0 = time.perf_counter()
    again = IctFaceModel(str(ICT_DIR))
    assert time.perf_counter() - t0 < 1.5  # parsing the 68 OBJs takes ~2-3 s; the cache ~0.1 s
    torch.testing.assert_close(again.shape_basis, model.shape_basis)


def test_stale_cache_is_rebuilt(tmp_path, monkeypatch):
    folder = tmp_path / "FaceXModel"
    folder.mkdir()
    for name in ("generic_neutral_mesh.obj", "vertex_indices.json", "jawOpen.obj", "identity000.obj"):
        shutil.copy(ICT_DIR / name, folder / name)
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path / "cache"))
    first = read_ict_folder(folder)
    assert first.expression_names == ["jawOpen"]
    shutil.copy(ICT_DIR / "mouthSmile_L.obj", folder / "jawOpen.obj")  # same name, new content and mtime
    second = read_ict_folder(folder)
    expected = read_obj_vertices(ICT_DIR / "mouthSmile_L.obj") - first.neutral
    np.testing.assert_allclose(second.expression_deltas[0], expected, atol=1e-5)
    assert len(list((tmp_path / "cache" / "ict").glob("*.npz"))) == 1  # the stale entry was replaced


def test_options(model):
    small = IctFaceModel(str(ICT_DIR), expressions=["mouthSmile_L", "jawOpen"], num_identities=3, face_only=True)
    assert small.expression_names == ["mouthSmile_L", "jawOpen"] and small.num_identities == 3
    assert small.num_verts == 11248 and int(small.faces.max()) < 11248
    assert int(small.faces_uv.max()) < small.uv.shape[0] <= model.uv.shape[0]
    assert set(small.regions) == {"face", "face_narrow", "head_neck", "skin"}
    torch.testing.assert_close(small.landmark_ids, model.landmark_ids)  # landmarks all lie on the face
    params = IctParams(torch.zeros(1, 3), torch.tensor([[0.0, 1.0]]))
    full = IctParams(torch.zeros(1, 10), torch.zeros(1, 53))
    full.expression[0, model.expression_index("jawOpen")] = 1.0
    torch.testing.assert_close(small(params).verts[0], model(full).verts[0, :11248])
    everything = IctFaceModel(str(ICT_DIR), expressions="all")
    assert everything.num_expressions == 57 and "PupilDilate_R" in everything.expression_names


def test_float64_batch_and_gradients(model):
    m64 = IctFaceModel(str(ICT_DIR), num_identities=2, expressions=["jawOpen"], face_only=True).double()
    ident = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    expr = torch.rand(3, 1, dtype=torch.float64, requires_grad=True)
    out = m64(IctParams(ident, expr))
    assert out.verts.dtype == torch.float64 and out.verts.shape == (3, 11248, 3)
    out.landmarks68.square().sum().backward()
    assert ident.grad.abs().sum() > 0 and expr.grad.abs().sum() > 0
    # batch elements are independent
    one = m64(IctParams(ident[1:2].detach(), expr[1:2].detach())).verts
    torch.testing.assert_close(one[0], out.verts[1].detach())


def test_errors(tmp_path, model):
    with pytest.raises(MissingAssetError, match="model_dir"):
        IctFaceModel(str(tmp_path / "nowhere"))
    with pytest.raises(AssetFormatError, match="no OBJ for expressions"):
        IctFaceModel(str(ICT_DIR), expressions=["tongueOut"])
    with pytest.raises(AssetFormatError, match="num_identities=11"):
        IctFaceModel(str(ICT_DIR), num_identities=11)
    with pytest.raises(KeyError, match="no expression"):
        model.expression_index("smile")
    with pytest.raises(ValueError, match=r"IctParams.expression must be \(B, 53\)"):
        model(IctParams(torch.zeros(1, 10), torch.zeros(1, 52)))
    # a truncated blendshape OBJ
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("generic_neutral_mesh.obj", "vertex_indices.json"):
        shutil.copy(ICT_DIR / name, folder / name)
    lines = (ICT_DIR / "jawOpen.obj").read_text().splitlines()
    (folder / "jawOpen.obj").write_text("\n".join(ln for i, ln in enumerate(lines) if i != 100) + "\n")
    with pytest.raises(AssetFormatError, match="jawOpen.obj: 26718 vertices"):
        read_ict_folder(folder, use_cache=False)
