"""FLAME: the loader on files in the official formats (synthetic stand-ins), LBS properties, errors."""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch

from facelab.bench.flame import ReferenceFlame
from facelab.errors import AssetFormatError, MissingAssetError, UnsafePickleError
from facelab.morphable import Flame, FlameParams
from facelab.morphable.flame_assets import FLAME_FILES, write_flame_folder
from facelab.morphable.lbs import axis_angle_to_matrix
from facelab.morphable.synthetic.flame import build_flame_arrays


@pytest.fixture(scope="module")
def arrays():
    return build_flame_arrays(seed=0, size="tiny")


@pytest.fixture(scope="module")
def folder(arrays, tmp_path_factory):
    return write_flame_folder(tmp_path_factory.mktemp("flame"), arrays)


@pytest.fixture(scope="module")
def flame(folder):
    return Flame(str(folder))


def random_params(model: Flame, batch: int, seed: int = 0, dtype=torch.float32) -> FlameParams:
    g = torch.Generator().manual_seed(seed)

    def r(n, s=1.0):
        return (torch.randn(batch, n, generator=g) * s).to(dtype)

    return FlameParams(identity=r(model.n_shape), expression=r(model.n_expression), global_pose=r(3, 0.3),
                       neck_pose=r(3, 0.1), jaw_pose=r(3, 0.1), eye_pose=r(6, 0.1),
                       eyelids=torch.rand(batch, 2, generator=g).to(dtype))


def test_loads_every_companion_file(flame, arrays, folder):
    assert all((folder / name).is_file() for name in FLAME_FILES.values())
    assert flame.num_verts == arrays.num_verts and flame.num_faces == len(arrays.faces)
    assert flame.has_mediapipe and flame.has_eyelids
    assert flame.uv.shape[0] > 0 and flame.faces_uv.shape == flame.faces.shape
    assert "face" in flame.regions and len(flame.region_faces("face")) > 0
    out = flame(flame.neutral_params(3))
    assert out.verts.shape == (3, flame.num_verts, 3)
    assert out.landmarks68.shape == (3, 68, 3) and out.landmarks_mp.shape == (3, 105, 3)
    assert out.joints.shape == (3, 5, 3)


def test_zero_pose_is_template_plus_blendshapes(flame, arrays):
    p = random_params(flame, 2)
    p = FlameParams(identity=p.identity, expression=p.expression)
    betas = torch.cat([p.identity, p.expression], 1).double().numpy()
    dirs = np.concatenate([arrays.shapedirs[..., :flame.n_shape], arrays.shapedirs[..., 300:]], axis=2)
    expected = arrays.v_template[None] + np.einsum("bk,vck->bvc", betas, dirs)
    np.testing.assert_allclose(flame(p).verts.numpy(), expected, atol=1e-5)


def test_jaw_rotation_moves_only_jaw_weighted_vertices(arrays):
    no_correctives = dataclasses.replace(arrays, posedirs=np.zeros_like(arrays.posedirs))
    for a, correctives in ((no_correctives, False), (arrays, True)):
        model = Flame.from_arrays(a)
        base = model(model.neutral_params(1)).verts
        p = model.neutral_params(1)
        p.jaw_pose = torch.tensor([[0.3, 0.0, 0.0]])
        moved = (model(p).verts - base)[0]
        jaw_weighted = torch.as_tensor(a.weights[:, 2] > 0)
        assert moved[jaw_weighted].norm(dim=1).max() > 1e-3  # the jaw opens
        if not correctives:
            assert moved[~jaw_weighted].abs().max() < 1e-7
        else:  # elsewhere only the pose-corrective blendshape of the jaw acts
            rot = axis_angle_to_matrix(p.full_pose())[0]
            feature = (rot[1:] - torch.eye(3)).reshape(-1).double().numpy()
            corrective = np.einsum("vcp,p->vc", a.posedirs, feature)
            np.testing.assert_allclose(moved[~jaw_weighted].numpy(), corrective[~jaw_weighted.numpy()], atol=1e-6)


def test_gradcheck_whole_forward_float64(arrays):
    model = Flame.from_arrays(arrays, n_shape=4, n_expression=3).double()
    p = random_params(model, 2, dtype=torch.float64)
    names = ["identity", "expression", "global_pose", "jaw_pose", "neck_pose", "eye_pose", "eyelids"]
    inputs = tuple(getattr(p, n).clone().requires_grad_() for n in names)

    def fn(*xs):
        out = model(FlameParams(**dict(zip(names, xs))))
        return out.verts, out.landmarks68, out.landmarks_mp, out.joints

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradcheck_at_zero_pose(arrays):
    model = Flame.from_arrays(arrays, n_shape=2, n_expression=2).double()
    pose = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    zeros = model.neutral_params(1)
    def fn(g):
        return model(dataclasses.replace(zeros, global_pose=g)).verts

    assert torch.autograd.gradcheck(fn, (pose,), fast_mode=True)


def test_matches_smplx_style_reference(flame, arrays):
    p = random_params(flame, 4, seed=3)
    out = flame(FlameParams(**{**vars(p), "eyelids": None}))
    ref = ReferenceFlame(arrays)
    betas, pose = torch.cat([p.identity, p.expression], 1), p.full_pose()
    verts, joints = ref(betas, pose)
    torch.testing.assert_close(out.verts, verts, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.joints, joints, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.landmarks68, ref.landmarks(verts, pose), atol=1e-5, rtol=0)


@pytest.mark.parametrize("yaw_deg,row", [(0, 0), (20, 20), (39, 39), (60, 39), (-1, 40), (-20, 59), (-60, 78)])
def test_dynamic_contour_row_follows_yaw(yaw_deg, row):
    pose = torch.zeros(1, 5, 3)
    pose[0, 0, 1] = math.radians(yaw_deg)
    assert Flame.yaw_bin(axis_angle_to_matrix(pose)).item() == row


def test_eyelids_are_added_after_skinning(flame, arrays):
    p = flame.neutral_params(1)
    p.global_pose = torch.tensor([[0.0, 0.5, 0.0]])
    closed = dataclasses.replace(p, eyelids=torch.tensor([[1.0, 0.0]]))
    delta = (flame(closed).verts - flame(p).verts)[0].numpy()
    np.testing.assert_allclose(delta, arrays.l_eyelid, atol=1e-6)


def test_component_counts_and_param_checks(folder):
    model = Flame(str(folder), n_shape=10, n_expression=5)
    assert model(model.neutral_params(2)).verts.shape[0] == 2
    with pytest.raises(ValueError, match=r"expression must be \(B, 5\)"):
        model(FlameParams(identity=torch.zeros(1, 10), expression=torch.zeros(1, 6)))
    with pytest.raises(AssetFormatError, match="n_shape"):
        Flame(str(folder), n_shape=301)


def test_missing_file_names_key_source_and_synthetic(tmp_path):
    with pytest.raises(MissingAssetError) as err:
        Flame(str(tmp_path / "generic_model.pkl"))
    msg = str(err.value)
    assert "generic_model.pkl" in msg and "model_path" in msg and "flame.is.tue.mpg.de" in msg
    assert "synthetic" in msg


def test_truncated_shapedirs_is_caught(arrays, tmp_path):
    bad = dataclasses.replace(arrays, shapedirs=arrays.shapedirs[..., :120])
    write_flame_folder(tmp_path, bad)
    with pytest.raises(AssetFormatError, match="shapedirs has 120 components"):
        Flame(str(tmp_path))


def test_malicious_masks_pickle_is_refused(folder, tmp_path):
    class Evil:
        def __reduce__(self):
            return (eval, ("1+1",))

    for name in FLAME_FILES.values():
        if (folder / name).exists():
            (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / FLAME_FILES["masks"]).write_bytes(pickle.dumps({"face": Evil()}, protocol=2))
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        Flame(str(tmp_path))


def test_device_dtype_agnostic(flame):
    model = Flame.from_arrays(build_flame_arrays(seed=0, size="tiny")).double()
    out = model(random_params(model, 2, dtype=torch.float64))
    assert out.verts.dtype == torch.float64 and torch.isfinite(out.verts).all()
