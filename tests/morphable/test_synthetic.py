"""The procedural head and the FLAME-format stand-in generator (facelab.morphable.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

import facelab.morphable.synthetic as synthetic
from facelab.io.safe_pickle import load_npy, load_pickle
from facelab.morphable.flame_assets import FLAME_FILES
from facelab.morphable.synthetic.flame import (
    FLAME_PARENTS,
    build_flame_arrays,
    write_synthetic_flame,
)
from facelab.morphable.synthetic.head import REGION_NAMES, build_head, contour_at_yaw


@pytest.fixture(scope="module")
def tiny():
    return build_head("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_flame():
    return build_flame_arrays(seed=0, size="tiny")


@pytest.fixture(scope="module")
def full_flame():
    return build_flame_arrays(seed=0, size="full")


def _skin_faces(faces: np.ndarray, masks: dict) -> np.ndarray:
    eyeball = np.zeros(faces.max() + 1, dtype=bool)
    eyeball[masks["left_eyeball"]] = eyeball[masks["right_eyeball"]] = True
    return faces[~eyeball[faces].any(axis=1)]


def _signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    tri = verts[faces] - verts[faces].reshape(-1, 3).mean(axis=0)
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6)


def _edges(faces: np.ndarray) -> np.ndarray:
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


def test_deterministic_from_seed():
    a, b, c = build_head("tiny", seed=3), build_head("tiny", seed=3), build_head("tiny", seed=4)
    for name in ("verts", "faces", "uv", "faces_uv", "identity_basis", "expression_basis", "joints",
                 "landmark_faces", "landmark_bary"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not np.allclose(a.verts, c.verts)
    assert not np.allclose(a.identity_basis[..., 40], c.identity_basis[..., 40])


def test_full_size_counts(full_flame):
    a = full_flame
    assert 4000 <= a.num_verts <= 6000
    assert 8000 <= len(a.faces) <= 12000
    assert a.shapedirs.shape == (a.num_verts, 3, 400)
    assert a.posedirs.shape == (a.num_verts, 3, 36)
    assert a.weights.shape == (a.num_verts, 5) and a.j_regressor.shape == (5, a.num_verts)
    np.testing.assert_array_equal(a.parents, FLAME_PARENTS)
    assert a.dynamic_lmk_faces.shape == (79, 17) and a.static_lmk_faces.shape == (51,)
    assert a.mp_faces.shape == (105,)
    # FLAME-like scale: ~0.16 m wide, ~0.22 m tall with the neck
    extent = np.ptp(a.v_template, axis=0)
    assert 0.14 < extent[0] < 0.18 and 0.2 < extent[1] < 0.26


def test_tiny_counts(tiny, tiny_flame):
    assert tiny.num_verts < 200
    assert tiny.identity_basis.shape == (tiny.num_verts, 3, 300)
    assert tiny.expression_basis.shape == (tiny.num_verts, 3, 100)
    assert tiny.joints.shape == (5, 3) and tiny.landmark_faces.shape == (68,)
    assert tiny_flame.shapedirs.shape[-1] == 400


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_faces_valid_and_outward(size, tiny_flame, full_flame):
    a = tiny_flame if size == "tiny" else full_flame
    v, f = a.v_template, a.faces
    assert f.dtype == np.int64 and f.min() >= 0 and f.max() < len(v)
    assert np.all((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2]))
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    assert area.min() > 1e-8  # no degenerate triangles (>= 0.01 mm^2)
    # consistently oriented: every directed edge is used once (neighbours traverse a shared edge oppositely)
    e = _edges(f)
    assert len(np.unique(e, axis=0)) == len(e)
    assert _signed_volume(v, _skin_faces(f, a.masks)) > 0.002  # outward normals, a head of a few litres
    for side in ("left_eyeball", "right_eyeball"):
        ids = a.masks[side]
        eye_faces = f[np.isin(f, ids).all(axis=1)]
        assert _signed_volume(v, eye_faces) > 0


def test_uv_seam_and_range(tiny_flame):
    a = tiny_flame
    assert a.uv.min() >= 0 and a.uv.max() <= 1 and a.faces_uv.shape == a.faces.shape
    skin = _skin_faces(a.faces, a.masks)
    skin_uv = a.faces_uv[~np.isin(a.faces, np.concatenate([a.masks["left_eyeball"], a.masks["right_eyeball"]])).any(1)]
    assert len(np.unique(skin_uv)) > len(np.unique(skin))  # seam (and pole) vertices carry several uvs
    # the eyeballs are their own islands: no uv shared with the skin
    eye_uv = np.setdiff1d(np.unique(a.faces_uv), np.unique(skin_uv))
    assert len(eye_uv) > 0


def test_regions(tiny, full_flame):
    for masks, nv in ((tiny.regions, tiny.num_verts), (full_flame.masks, full_flame.num_verts)):
        assert set(masks) == set(REGION_NAMES)
        for name, ids in masks.items():
            assert len(ids) > 0, name
            assert ids.min() >= 0 and ids.max() < nv
        assert not np.intersect1d(masks["left_eyeball"], masks["face"]).size
    v = full_flame.v_template
    assert v[full_flame.masks["left_eyeball"], 0].mean() > 0 > v[full_flame.masks["right_eyeball"], 0].mean()
    assert v[full_flame.masks["forehead"], 1].mean() > v[full_flame.masks["lips"], 1].mean()


def test_skinning_weights(tiny, tiny_flame, full_flame):
    for a in (tiny_flame, full_flame):
        w = a.weights
        assert w.min() >= 0
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(w[a.masks["left_eyeball"], 3], 1.0)
        np.testing.assert_allclose(w[a.masks["right_eyeball"], 4], 1.0)
    upper, lower = tiny.mouth_slit
    w = tiny_flame.weights
    assert np.all(w[lower[1:-1], 2] > 0.9) and np.all(w[upper[1:-1], 2] < 0.1)  # the jaw opens the mouth


def test_joint_regressor(tiny, tiny_flame, full_flame):
    np.testing.assert_allclose(tiny_flame.j_regressor @ tiny_flame.v_template, tiny.joints, atol=1e-6)
    for a in (tiny_flame, full_flame):
        reg = a.j_regressor
        assert reg.min() >= 0
        np.testing.assert_allclose(reg.sum(axis=1), 1.0, atol=1e-9)
    joints = full_flame.j_regressor @ full_flame.v_template
    assert joints[0, 1] < joints[1, 1] < joints[2, 1] < joints[3, 1]  # root below neck below jaw below eyes
    assert joints[3, 0] > 0 > joints[4, 0]


def test_landmark_embeddings(tiny_flame, full_flame):
    for a in (tiny_flame, full_flame):
        nf = len(a.faces)
        for faces, bary in ((a.static_lmk_faces, a.static_lmk_bary), (a.dynamic_lmk_faces, a.dynamic_lmk_bary),
                            (a.mp_faces, a.mp_bary)):
            assert faces.min() >= 0 and faces.max() < nf
            assert bary.min() >= -1e-12
            np.testing.assert_allclose(bary.sum(axis=-1), 1.0, atol=1e-9)
        assert len(np.unique(a.mp_indices)) == 105 and a.mp_indices.min() >= 0 and a.mp_indices.max() < 478


def test_contour_follows_yaw(full_flame):
    a = full_flame
    tri = a.v_template[a.faces]

    def contour(row):
        return np.einsum("lk,lkd->ld", a.dynamic_lmk_bary[row], tri[a.dynamic_lmk_faces[row]])

    front, turned = contour(0), contour(30)  # row 30: yaw +30 deg, the face turns towards +x
    assert np.all(front[:8, 0] < 0) and np.all(front[9:, 0] > 0) and front[8, 1] == front[:, 1].min()
    # the side turning away shows its silhouette closer to the face, the other side stays or goes back
    assert turned[12:, 2].mean() > front[12:, 2].mean() + 0.005
    assert np.all(turned[:8, 2] <= front[:8, 2] + 1e-9)
    assert not np.array_equal(a.dynamic_lmk_faces[30], a.dynamic_lmk_faces[39 + 30])  # yaw -30 differs


def test_head_landmarks_in_place(tiny, full_flame):
    assert tiny.landmarks.shape == (68, 3)
    a = full_flame
    static = np.einsum("lk,lkd->ld", a.static_lmk_bary, a.v_template[a.faces[a.static_lmk_faces]])
    lmk = np.concatenate([np.full((17, 3), np.nan), static])
    assert lmk[30, 2] > lmk[48:68, 2].max()  # the nose tip sticks out
    assert lmk[19, 1] > lmk[37, 1] > lmk[33, 1] > lmk[51, 1] > lmk[62, 1] > lmk[66, 1] > lmk[57, 1]
    assert lmk[36, 0] < lmk[39, 0] < 0 < lmk[42, 0] < lmk[45, 0]


def test_expression_basis_is_localized(full_flame):
    a = full_flame
    v, exp = a.v_template, a.shapedirs[..., 300:]
    tri = v[a.faces]
    chin = np.einsum("k,kd->d", a.dynamic_lmk_bary[0, 8], tri[a.dynamic_lmk_faces[0, 8]])
    static = np.einsum("lk,lkd->ld", a.static_lmk_bary, tri[a.static_lmk_faces])  # iBUG 17..67
    brow_mid, corner_r, corner_l = static[19 - 17], static[48 - 17], static[54 - 17]
    near_chin = np.linalg.norm(v - chin, axis=1) < 0.015
    near_brow = np.linalg.norm(v - brow_mid, axis=1) < 0.015
    brows_up = np.linalg.norm(exp[..., 0], axis=1)
    assert brows_up[near_brow].max() > 0.002 and brows_up[near_chin].max() < 1e-5
    smile_left = np.linalg.norm(exp[..., 8], axis=1)
    at_left = smile_left[np.linalg.norm(v - corner_l, axis=1) < 0.005].max()
    at_right = smile_left[np.linalg.norm(v - corner_r, axis=1) < 0.005].max()
    assert at_left > 10 * at_right
    for side in ("left_eyeball", "right_eyeball"):
        assert np.abs(exp[a.masks[side]]).max() == 0


def test_identity_basis_smooth_and_decaying(full_flame):
    a = full_flame
    ident = a.shapedirs[..., :300]
    peak = np.linalg.norm(ident, axis=1).max(axis=0)
    assert 0.003 < peak[0] < 0.02 and peak[-1] < 0.1 * peak[0]
    assert np.all(np.diff(peak[20:]) <= 1e-12)  # the random fields decay monotonically
    e = _skin_faces(a.faces, a.masks)
    e = _edges(e)
    length = np.linalg.norm(a.v_template[e[:, 0]] - a.v_template[e[:, 1]], axis=1)
    for k in (0, 5, 20, 60):
        d = ident[..., k]
        gradient = np.linalg.norm(d[e[:, 0]] - d[e[:, 1]], axis=1) / length
        assert gradient.max() < peak[k] / 0.006, k  # no change faster than the peak over 6 mm
    for side in ("left_eyeball", "right_eyeball"):  # eyeballs move rigidly
        d = ident[a.masks[side]]
        assert np.abs(d - d[:1]).max() < 1e-12


def test_eyelid_closes_upper_lid(tiny, tiny_flame):
    up, lo = tiny.eye_margins["left"]
    closed = tiny_flame.v_template + tiny_flame.l_eyelid
    gap_open = tiny.verts[up[1:-1], 1] - tiny.verts[lo[1:-1], 1].max()
    gap_closed = closed[up[1:-1], 1] - tiny.verts[lo[1:-1], 1].max()
    assert gap_open.min() > 0.002 and np.all(gap_closed < 0.5 * gap_open)
    assert np.abs(tiny_flame.l_eyelid[tiny.regions["right_eye_region"]]).max() == 0


def test_write_and_read_back(tiny_flame, tmp_path):
    write_synthetic_flame(tmp_path, seed=0, size="tiny")
    a = tiny_flame
    model = load_pickle(tmp_path / FLAME_FILES["model"])
    np.testing.assert_array_equal(model["v_template"], a.v_template)
    np.testing.assert_array_equal(model["f"], a.faces)
    np.testing.assert_array_equal(model["shapedirs"], a.shapedirs)
    np.testing.assert_array_equal(model["posedirs"], a.posedirs)
    np.testing.assert_array_equal(model["weights"], a.weights)
    np.testing.assert_allclose(model["J_regressor"].toarray(), a.j_regressor)
    np.testing.assert_allclose(model["J"], a.j_regressor @ a.v_template)
    assert model["kintree_table"][0, 0] == 4294967295 and list(model["kintree_table"][0, 1:]) == [0, 1, 1, 1]
    lmk = load_npy(tmp_path / FLAME_FILES["landmarks"])
    np.testing.assert_array_equal(lmk["dynamic_lmk_faces_idx"], a.dynamic_lmk_faces)
    np.testing.assert_array_equal(lmk["static_lmk_bary_coords"], a.static_lmk_bary)
    masks = load_pickle(tmp_path / FLAME_FILES["masks"])
    assert set(masks) == set(REGION_NAMES)
    np.testing.assert_allclose(np.load(tmp_path / FLAME_FILES["l_eyelid"]), a.l_eyelid, atol=1e-7)
    mp = np.load(tmp_path / FLAME_FILES["mediapipe"])
    np.testing.assert_array_equal(mp["landmark_indices"], a.mp_indices)


def test_generate_rejects_unknown(tmp_path):
    with pytest.raises(ValueError, match="flame"):
        synthetic.generate_synthetic("smpl", tmp_path)
    with pytest.raises(ValueError, match="tiny"):
        synthetic.synthetic_asset_dir("flame", size="huge")
    with pytest.raises(ValueError, match="full"):
        build_head("huge")


def test_synthetic_asset_dir_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path))
    calls = []
    real = synthetic.generate_synthetic

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "generate_synthetic", counting)
    first = synthetic.synthetic_asset_dir("flame", size="tiny", seed=0)
    second = synthetic.synthetic_asset_dir("flame", size="tiny", seed=0)
    assert first == second and len(calls) == 1
    assert first.parent == tmp_path / "synthetic" and f"v{synthetic.GENERATOR_VERSIONS['flame']}" in first.name
    assert (first / FLAME_FILES["model"]).is_file()
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary folder left behind


def test_contour_row_zero_is_frontal_jawline(tiny, tiny_flame):
    f, b = contour_at_yaw(tiny.contour, 0.0)
    np.testing.assert_array_equal(f, tiny_flame.dynamic_lmk_faces[0])
    np.testing.assert_array_equal(f, tiny.landmark_faces[:17])
