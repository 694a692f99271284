"""The morphable-model API every family shares (facelab.morphable.base): params, counts, priors, posing."""

from __future__ import annotations

import copy
import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from facelab.errors import AssetFormatError
from facelab.morphable import MorphableModel, MorphableParams, barycentric_points, load_model
from facelab.morphable.bfm import Bfm, BfmParams, write_bfm_mat
from facelab.morphable.bilinear import BilinearParams
from facelab.morphable.flame import FlameParams
from facelab.morphable.ict import IctParams
from facelab.rotations import axis_angle_to_matrix

ICT_DIR = Path(__file__).parents[3] / "shared" / "assets" / "ict-facekit" / "FaceXModel"
HAS_ICT = (ICT_DIR / "generic_neutral_mesh.obj").is_file()
FAMILIES = ["flame", "bfm", "bilinear", pytest.param("ict", marks=pytest.mark.skipif(not HAS_ICT,
                                                                                     reason="no ICT-FaceKit folder"))]
_MODELS: dict[str, MorphableModel] = {}


def _model(family: str) -> MorphableModel:
    if family not in _MODELS:
        _MODELS[family] = load_model(family, str(ICT_DIR) if family == "ict" else "synthetic:tiny")
    return _MODELS[family]


@pytest.fixture(params=FAMILIES)
def model(request) -> MorphableModel:
    return _model(request.param)


def test_params_have_the_same_field_names():
    for cls in (FlameParams, BfmParams, BilinearParams, IctParams):
        assert issubclass(cls, MorphableParams)
        assert [f.name for f in fields(cls)][:3] == ["identity", "expression", "albedo"]
    assert [f.name for f in fields(FlameParams)][3:] == ["global_pose", "neck_pose", "jaw_pose", "eye_pose", "eyelids"]
    assert [f.name for f in fields(BfmParams)] == ["identity", "expression", "albedo"]


def test_counts_types_and_neutral_params(model):
    p = model.neutral_params(3)
    assert type(p) is model.params_type and p.batch_size == 3
    assert p.identity.shape == (3, model.num_identity) and p.expression.shape == (3, model.num_expression)
    assert (p.albedo is None) == (model.num_albedo == 0)
    assert all(float(t.abs().max()) == 0.0 for t in p.tensors().values())
    assert set(p.tensors()) == {"identity", "expression"} | ({"albedo"} if model.num_albedo else set()) | set(
        model.pose_fields)
    out = model(p)
    assert out.verts.shape == (3, model.num_verts, 3) and out.landmarks68.shape == (3, 68, 3)
    assert (out.albedo is not None) == (model.num_albedo > 0)
    if out.albedo is not None:
        assert out.albedo.shape == out.verts.shape and 0 <= float(out.albedo.min()) <= float(out.albedo.max()) <= 1
    assert model.has_uv and model.faces_uv.shape == model.faces.shape and model.uv.min() >= 0
    used = model.faces_uv[model.region_faces("face_narrow")] if "face_narrow" in model.regions else model.faces_uv
    assert model.uv[used].max() <= 1  # ICT keeps its UDIM tiles: its face is tile 0


def test_params_follow_the_model_dtype(model):
    m64 = copy.deepcopy(model).double()
    for p in (m64.neutral_params(2), m64.random_params(2)):
        assert all(t.dtype == torch.float64 for t in p.tensors().values())
        assert m64(p).verts.dtype == torch.float64


def test_random_params_sample_the_prior(model):
    gen = torch.Generator().manual_seed(0)
    n = 4000
    p = model.random_params(n, gen, identity_scale=0.5, expression_scale=0.8)
    ident = p.identity.double()
    assert abs(float(ident.mean())) < 0.01 and abs(float(ident.std()) - 0.5) < 0.01
    expr = p.expression.double()
    if model.expression_range is None:
        assert abs(float(expr.mean())) < 0.02 and abs(float(expr.std()) - 0.8) < 0.02
    else:  # blendshape weights: uniform over [lo, lo + 0.8 (hi - lo)]
        lo, hi = model.expression_range
        assert float(expr.min()) >= lo and float(expr.max()) <= lo + 0.8 * (hi - lo)
        assert abs(float(expr.mean()) - (lo + 0.4 * (hi - lo))) < 0.01
    if model.num_albedo:
        assert abs(float(p.albedo.double().std()) - 1.0) < 0.02
    assert all(float(getattr(p, k).abs().max()) == 0 for k in model.pose_fields)  # poses zero
    again = model.random_params(n, torch.Generator().manual_seed(0), identity_scale=0.5, expression_scale=0.8)
    other = model.random_params(n, torch.Generator().manual_seed(1), identity_scale=0.5, expression_scale=0.8)
    assert torch.equal(again.identity, p.identity) and not torch.equal(other.identity, p.identity)


def test_family_capabilities():
    flame, bfm, bilinear = _model("flame"), _model("bfm"), _model("bilinear")
    assert flame.has_skeleton and not bfm.has_skeleton and not bilinear.has_skeleton
    assert flame.has_eyelids and not bfm.has_eyelids
    assert flame.pose_fields == ("global_pose", "neck_pose", "jaw_pose", "eye_pose", "eyelids")
    assert bfm.pose_fields == bilinear.pose_fields == ()
    assert flame.expression_range is None and bfm.expression_range is None and bilinear.expression_range == (0, 1)
    assert (flame.num_albedo, bfm.num_albedo, bilinear.num_albedo) == (0, 80, 0)
    assert (flame.num_identity, flame.num_expression) == (flame.n_shape, flame.n_expression)
    assert (bfm.num_identity, bfm.num_expression) == (80, 64) and bilinear.num_expression == 51


def test_make_params_takes_only_the_model_fields():
    flame, bfm = _model("flame"), _model("bfm")
    z = torch.zeros
    p = flame.make_params(z(2, flame.num_identity), z(2, flame.num_expression), jaw_pose=z(2, 3), eyelids=None)
    assert isinstance(p, FlameParams) and p.jaw_pose.shape == (2, 3) and p.eyelids is None and p.global_pose is None
    q = bfm.make_params(z(2, 80), z(2, 64), z(2, 80), jaw_pose=None)  # None extras are ignored
    assert isinstance(q, BfmParams) and q.albedo.shape == (2, 80)
    with pytest.raises(ValueError, match=r"no parameter fields \['jaw_pose'\]"):
        bfm.make_params(z(2, 80), z(2, 64), jaw_pose=z(2, 3))


def test_plain_params_are_accepted_and_other_families_refused(model):
    p = model.random_params(2, torch.Generator().manual_seed(3))
    plain = MorphableParams(p.identity, p.expression, p.albedo)
    torch.testing.assert_close(model(plain).verts, model(model.params_type(p.identity, p.expression, p.albedo)).verts)
    other = BfmParams if model.params_type is not BfmParams else BilinearParams
    with pytest.raises(TypeError, match=f"takes {model.params_type.__name__}"):
        model(other(p.identity, p.expression))


def test_bad_shapes_name_the_field(model):
    p = model.neutral_params(2)
    name = model.params_type.__name__
    with pytest.raises(ValueError, match=rf"{name}.expression must be \(B, {model.num_expression}\)"):
        model(model.params_type(p.identity, p.expression[:, :-1]))
    with pytest.raises(ValueError, match=rf"{name}.expression must be .* got \(3, "):
        model(model.params_type(p.identity, torch.zeros(3, model.num_expression)))
    if not model.num_albedo:
        with pytest.raises(ValueError, match="no colour basis"):
            model(model.params_type(p.identity, p.expression, torch.zeros(2, 3)))


def test_forward_posed_rotates_the_head(model):
    p = model.random_params(2, torch.Generator().manual_seed(1), identity_scale=0.5, expression_scale=0.3)
    pose = torch.tensor([[0.1, 0.4, -0.05], [-0.2, -0.3, 0.1]])
    posed = model.forward_posed(p, pose)
    if model.has_skeleton:  # FLAME: the root joint's pose, composed with one already set
        with_pose = model(model.make_params(p.identity, p.expression, global_pose=pose))
        torch.testing.assert_close(posed.verts, with_pose.verts)
        assert p.global_pose is not None  # random_params gives zero poses: composed with the identity
        first = torch.tensor([[0.0, 0.2, 0.0], [0.1, 0.0, 0.0]])
        twice = model.forward_posed(model.make_params(p.identity, p.expression, global_pose=first), pose)
        root = model(model.make_params(p.identity, p.expression, global_pose=first))
        centre = root.joints[:, :1]  # the root joint does not move under its own rotation
        rot = axis_angle_to_matrix(pose)
        torch.testing.assert_close(twice.verts, (root.verts - centre) @ rot.mT + centre, atol=1e-5, rtol=1e-5)
    else:  # a rigid rotation about the model origin, landmarks with it
        rest = model(p)
        rot = axis_angle_to_matrix(pose)
        torch.testing.assert_close(posed.verts, rest.verts @ rot.mT)
        torch.testing.assert_close(posed.landmarks68, rest.landmarks68 @ rot.mT)
    assert model.forward_posed(p, None).verts.shape == posed.verts.shape


def test_mediapipe_embedding():
    flame = _model("flame")
    mp_indices, face_idx, bary = flame.mediapipe_embedding
    assert mp_indices.shape == face_idx.shape == (105,) and bary.shape == (105, 3)
    assert int(mp_indices.max()) < 478 and len(torch.unique(mp_indices)) == 105
    out = flame(flame.random_params(2, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(out.landmarks_mp, barycentric_points(out.verts, flame.faces, face_idx, bary))
    assert _model("bfm").mediapipe_embedding is None and _model("bilinear").mediapipe_embedding is None


def test_albedo_of_the_colour_basis():
    bfm = _model("bfm")
    p = bfm.random_params(4, torch.Generator().manual_seed(0), albedo_scale=0.5)
    out = bfm(p)
    assert out.albedo.shape == out.verts.shape and 0 <= float(out.albedo.min()) and float(out.albedo.max()) <= 1
    mean = bfm(bfm.neutral_params(1)).albedo
    assert float((out.albedo - mean).abs().mean()) > 1e-3  # the coefficients change the colour
    assert bfm(bfm.make_params(p.identity, p.expression)).albedo is None


def test_params_detach_and_to():
    p = _model("flame").random_params(2)
    p.identity.requires_grad_()
    q = p.detach().to(torch.float64)
    assert type(q) is FlameParams and not q.identity.requires_grad and q.identity.dtype == torch.float64
    assert q.global_pose.dtype == torch.float64 and q.albedo is None


def test_stand_in_jaw_opening_and_expression_offset():
    flame, bfm, bilinear = _model("flame"), _model("bfm"), _model("bilinear")
    assert flame.is_synthetic and flame.jaw_open_component is None and flame.synthetic_expression_offset == 0
    assert bfm.synthetic_expression_offset == 1 and bilinear.synthetic_expression_offset == 1
    for model in (bfm, bilinear):
        k, radians = model.jaw_open_component
        assert k == 0 and 0.05 < radians < 0.5
    # the tiny BFM face stops at the mouth: the jaw is checked on the full-size stand-in
    for model in (load_model("bfm", "synthetic"), bilinear):
        k, radians = model.jaw_open_component
        rest = model.neutral_params(1)
        opened = model.neutral_params(1)
        opened.expression[0, k] = 0.2 / radians  # open by 0.2 rad
        a, b = model(rest).landmarks68[0], model(opened).landmarks68[0]
        size = float(a[:, 1].max() - a[:, 1].min())  # face height, model units
        drop = float(a[57, 1] - b[57, 1])  # iBUG 57: lower lip centre; the jaw turns down about its hinge
        assert drop > 0.03 * size and float((a[27] - b[27]).norm()) < 1e-3 * size  # the nose bridge stays
    assert _model("ict").jaw_open_component is None if HAS_ICT else True


def test_real_assets_have_no_stand_in_semantics(tmp_path):
    rng = np.random.default_rng(0)
    n = 30
    faces = np.array([[i, i + 1, i + 2] if i % 2 == 0 else [i + 1, i, i + 2] for i in range(n - 2)])
    path = write_bfm_mat(tmp_path / "BFM_model_front.mat", mean_shape=rng.standard_normal((n, 3)),
                         id_base=rng.standard_normal((n, 3, 80)), exp_base=rng.standard_normal((n, 3, 64)),
                         mean_tex=rng.uniform(50, 200, (n, 3)), tex_base=rng.standard_normal((n, 3, 80)),
                         faces=faces, keypoints=rng.integers(0, n, 68))
    real = Bfm(str(path))
    assert not real.is_synthetic and real.jaw_open_component is None and real.synthetic_expression_offset is None
    assert not real.has_uv


def test_flame_without_eyelids_has_no_eyelid_field():
    from facelab.morphable.flame import Flame

    bare = Flame.from_arrays(_arrays_without_eyelids())
    assert not bare.has_eyelids and "eyelids" not in bare.pose_fields
    assert "eyelids" not in bare.neutral_params().tensors()
    with pytest.raises(ValueError, match=r"no parameter fields \['eyelids'\]"):
        bare.make_params(torch.zeros(1, 300), torch.zeros(1, 100), eyelids=torch.zeros(1, 2))
    with pytest.raises(AssetFormatError, match="eyelid"):
        bare(FlameParams(torch.zeros(1, 300), torch.zeros(1, 100), eyelids=torch.zeros(1, 2)))


def _arrays_without_eyelids():
    from dataclasses import replace

    from facelab.morphable.synthetic.flame import build_flame_arrays

    return replace(build_flame_arrays(size="tiny"), l_eyelid=None, r_eyelid=None)


@pytest.mark.skipif(not HAS_ICT, reason="no ICT-FaceKit folder")
def test_ict_weights_and_identity():
    ict = _model("ict")
    assert ict.expression_range == (0.0, 1.0) and ict.num_albedo == 0 and not ict.is_synthetic
    assert ict.synthetic_expression_offset is None and ict.mediapipe_embedding is None
    p = ict.random_params(2, torch.Generator().manual_seed(0), expression_scale=0.5)
    assert float(p.expression.min()) >= 0 and float(p.expression.max()) <= 0.5
    assert math.isfinite(float(ict(p).verts.abs().max()))
