"""MorphableFitter on tiny stand-in models: recovery from landmarks, batching = fitting one by one, per-face
convergence and freezing, groups, fixed blocks, box constraints, cameras, photometric outputs, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facelab.fitting import FitSchedule, FitTargets, FitWeights, MorphableFitter
from facelab.metrics.landmarks import landmark_nme
from facelab.morphable import load_model
from facelab.render import PerspectiveCamera, WeakPerspectiveCamera

SIZE = 128


@pytest.fixture(scope="module")
def models():
    return {f: load_model(f, "synthetic:tiny") for f in ("bfm", "bilinear", "flame")}


def _faces(model, b: int, seed: int = 0, scale: float = 0.7, perspective: bool = False):
    """Random faces under random head poses, projected to SIZE^2 pixels: (params, rotation, landmarks68, mp)."""
    g = torch.Generator().manual_seed(seed)
    params = model.random_params(b, generator=g, identity_scale=scale, expression_scale=scale)
    rotation = (torch.rand(b, 3, generator=g) * 2 - 1) * torch.tensor([0.25, 0.5, 0.15])
    mesh = model.forward_posed(params, rotation)
    lmk = mesh.landmarks68
    extent = float((lmk.amax(1) - lmk.amin(1))[:, :2].max())
    if perspective:
        depth = 5.0 * extent
        focal = torch.full((b, 2), 4.53 * SIZE)
        cam = PerspectiveCamera(focal=focal, principal_point=torch.full((b, 2), SIZE / 2.0), image_size=SIZE,
                                rotation=torch.eye(3).expand(b, 3, 3),
                                translation=torch.tensor([0.0, 0.0, -depth]).expand(b, 3))
    else:
        cam = WeakPerspectiveCamera(scale=torch.full((b,), 1.2 / extent), translation=torch.zeros(b, 2))
    mp = None if mesh.landmarks_mp is None else cam.project_pixels(mesh.landmarks_mp, SIZE)
    return params, rotation, cam.project_pixels(lmk, SIZE), mp


def _schedule(**kw) -> FitSchedule:
    base = dict(rigid_iterations=30, landmark_iterations=150, photometric_iterations=0, tolerance=1e-3)
    base.update(kw)
    return FitSchedule(**base)


@pytest.mark.parametrize("family", ["bfm", "bilinear", "flame"])
def test_landmark_fit_recovers_the_face(models, family):
    model = models[family]
    params, rotation, lmk, _ = _faces(model, 4)
    targets = FitTargets(image_size=SIZE, landmarks68=lmk)
    rigid = MorphableFitter(model, schedule=_schedule(landmark_iterations=0)).fit(targets)
    result = MorphableFitter(model, schedule=_schedule()).fit(targets)
    base = landmark_nme(rigid.landmarks68_pix, lmk, "bbox").mean()
    fit = landmark_nme(result.landmarks68_pix, lmk, "bbox").mean()
    rot_err = (result.rotation - rotation).norm(dim=-1)
    print(f"{family}: NME mean face + rigid {base:.4f}, fit {fit:.4f}; rotation error {rot_err.tolist()} rad")
    assert fit < 0.35 * base
    # the head rotation is recovered (FLAME keeps it in its own global_pose), up to the ambiguity of 2D landmarks
    # between a turned head and a differently shaped face (weak perspective)
    assert rot_err.mean() < 0.1 and rot_err.max() < 0.2
    if model.has_skeleton:
        torch.testing.assert_close(result.params.global_pose, result.rotation)
    # the report: every stage ran, energies fell from the rigid stage to the landmark stage
    names = [s.name for s in result.report.stages]
    assert names == ["rigid", "landmarks"]
    assert (result.report.stages[1].energies["landmarks68"] < result.report.stages[0].energies["landmarks68"]).all()


def test_batched_fit_equals_fitting_one_by_one(models):
    model = models["bilinear"]
    _, _, lmk, _ = _faces(model, 3, seed=1)
    fitter = MorphableFitter(model, schedule=_schedule(rigid_iterations=10, landmark_iterations=20, tolerance=0.0))
    together = fitter.fit(FitTargets(image_size=SIZE, landmarks68=lmk))
    for i in range(3):
        alone = fitter.fit(FitTargets(image_size=SIZE, landmarks68=lmk[i:i + 1]))
        torch.testing.assert_close(alone.params.expression[0], together.params.expression[i], atol=2e-4, rtol=0)
        torch.testing.assert_close(alone.params.identity[0], together.params.identity[i], atol=2e-4, rtol=0)
        torch.testing.assert_close(alone.camera_vector[0], together.camera_vector[i], atol=1e-4, rtol=1e-4)


def test_converged_faces_stop_and_are_frozen(models):
    model = models["bfm"]
    _, _, lmk, _ = _faces(model, 2, seed=2)
    mean_face, _, mean_lmk, _ = _faces(model, 1, seed=2, scale=0.0)  # face 1: the mean face itself
    lmk = torch.cat([lmk[:1], mean_lmk])
    schedule = _schedule(rigid_iterations=40, landmark_iterations=200, tolerance=1e-3, check_every=5)
    result = MorphableFitter(model, schedule=schedule).fit(FitTargets(image_size=SIZE, landmarks68=lmk))
    stage = result.report.stages[1]
    assert stage.converged[1] and stage.iterations[1] < stage.iterations[0]
    assert stage.iterations[1] < 200
    report = result.report.face(1)
    assert report["stages"][1]["iterations"] == int(stage.iterations[1]) and "total" in report["stages"][1]["energies"]


def test_identity_groups_share_one_identity(models):
    model = models["bilinear"]
    params, rotation, _, _ = _faces(model, 1, seed=3)
    # three frames of one person: same identity, three expressions and poses
    g = torch.Generator().manual_seed(4)
    frames = model.random_params(3, generator=g, expression_scale=0.7)
    frames.identity = params.identity.expand(3, -1)
    mesh = model.forward_posed(frames, rotation.expand(3, -1))
    cam = WeakPerspectiveCamera(scale=torch.full((3,), 0.012), translation=torch.zeros(3, 2))
    lmk = cam.project_pixels(mesh.landmarks68, SIZE)
    result = MorphableFitter(model, schedule=_schedule()).fit(FitTargets(image_size=SIZE, landmarks68=lmk),
                                                              identity_groups=torch.tensor([7, 7, 7]))
    ident = result.params.identity
    torch.testing.assert_close(ident, ident[:1].expand(3, -1))
    assert not torch.allclose(result.params.expression[0], result.params.expression[1])


def test_fixed_identity_from_an_earlier_fit(models):
    model = models["bfm"]
    _, _, lmk, _ = _faces(model, 2, seed=5)
    fitter = MorphableFitter(model, schedule=_schedule(landmark_iterations=40))
    first = fitter.fit(FitTargets(image_size=SIZE, landmarks68=lmk))
    again = fitter.fit(FitTargets(image_size=SIZE, landmarks68=lmk), init=first, fix=("identity",),
                       schedule=_schedule(rigid_iterations=5, landmark_iterations=20))
    torch.testing.assert_close(again.params.identity, first.params.identity)
    assert not torch.equal(again.params.expression, first.params.expression)
    # a known identity given as params (pose unknown): it is kept, the rest is fitted
    known = model.make_params(first.params.identity, torch.zeros_like(first.params.expression))
    third = fitter.fit(FitTargets(image_size=SIZE, landmarks68=lmk), init=known, fix=("identity",))
    torch.testing.assert_close(third.params.identity, first.params.identity)
    assert landmark_nme(third.landmarks68_pix, lmk, "bbox").mean() < 0.01
    with pytest.raises(ValueError, match="init has 1 faces"):
        fitter.fit(FitTargets(image_size=SIZE, landmarks68=lmk), init=model.neutral_params(1))
    with pytest.raises(ValueError, match="unknown variables"):
        fitter.fit(FitTargets(image_size=SIZE, landmarks68=lmk), fix=("shape",))


def test_blendshape_weights_stay_in_their_box(models):
    model = models["bilinear"]
    assert model.expression_range == (0.0, 1.0)
    _, _, lmk, _ = _faces(model, 3, seed=6, scale=1.0)
    result = MorphableFitter(model, schedule=_schedule(landmark_iterations=60)).fit(
        FitTargets(image_size=SIZE, landmarks68=lmk))
    exp = result.params.expression
    assert exp.min() >= 0.0 and exp.max() <= 1.0
    assert (exp > 0).any()


def test_flame_uses_the_mediapipe_embedding(models):
    model = models["flame"]
    mp_indices = model.mediapipe_embedding[0]
    _, _, lmk, mp105 = _faces(model, 2, seed=7)
    mp478 = torch.full((2, 478, 2), 64.0)
    mp478[:, mp_indices] = mp105
    fitter = MorphableFitter(model, schedule=_schedule(landmark_iterations=60))
    result = fitter.fit(FitTargets(image_size=SIZE, landmarks68=lmk, landmarks_mp=mp478))
    energies = result.report.final.energies
    assert "landmarks_mp" in energies and (energies["landmarks_mp"] < result.report.stages[0].energies[
        "landmarks_mp"]).all()


def test_perspective_camera(models):
    model = models["bilinear"]
    _, rotation, lmk, _ = _faces(model, 2, seed=8, perspective=True)
    targets = FitTargets(image_size=SIZE, landmarks68=lmk)
    fitter = MorphableFitter(model, camera="perspective", focal=4.53, schedule=_schedule())
    rigid = fitter.fit(targets, schedule=_schedule(landmark_iterations=0))
    result = fitter.fit(targets)
    assert isinstance(result.camera, PerspectiveCamera) and result.camera_vector.shape == (2, 7)
    assert landmark_nme(result.landmarks68_pix, lmk, "bbox").mean() < 0.5 * landmark_nme(
        rigid.landmarks68_pix, lmk, "bbox").mean()
    assert (result.rotation - rotation).norm(dim=-1).max() < 0.15
    with pytest.raises(ValueError, match="weak-perspective camera"):
        MorphableFitter(model, schedule=_schedule()).fit(targets, init=result)


def test_photometric_stage_and_outputs(models):
    """A rendered BFM face (its own albedo PCA and SH light) fitted from the image: the photometric energy falls
    below the closed-form-SH start; texture, visibility, render and overlay come out."""
    model = models["bfm"]
    params, rotation, lmk, _ = _faces(model, 2, seed=9)
    g = torch.Generator().manual_seed(10)
    params.albedo = torch.randn(2, model.num_albedo, generator=g) * 0.5
    sh = torch.zeros(2, 27)
    sh[:, [0, 9, 18]] = 0.8
    sh[:, [2, 11, 20]] = 0.3
    fitter = MorphableFitter(model, schedule=_schedule(photometric_iterations=40), render_size=64, uv_size=32)
    mesh = model.forward_posed(params, rotation)
    cam = WeakPerspectiveCamera(scale=torch.full((2,), 1.2 / fitter.extent), translation=torch.zeros(2, 2))
    image = fitter._renderer((SIZE, SIZE), fitter.photometric_region)(mesh.verts, cam, albedo=mesh.albedo,
                                                                      sh_coeffs=sh).image.clamp(0, 1)
    targets = FitTargets(image_size=SIZE, landmarks68=cam.project_pixels(mesh.landmarks68, SIZE), image=image)
    start = fitter.fit(targets, schedule=_schedule(photometric_iterations=1, photometric_lr=0.0))
    result = fitter.fit(targets)
    e0 = start.report.final.energies["photometric"]
    e1 = result.report.final.energies["photometric"]
    print("photometric energy after the SH solve", e0.tolist(), "after the stage", e1.tolist())
    assert (e1 < e0).all() and (e1 < 0.05).all()
    assert result.sh.shape == (2, 27) and result.mesh.albedo.shape == (2, model.num_verts, 3)
    assert result.render.shape == (2, 3, SIZE, SIZE) and result.render_mask.sum() > 0
    assert result.overlay.shape == (2, 3, SIZE, SIZE)
    tex = result.texture
    assert tex.texture.shape == (2, 3, 32, 32) and tex.visibility.shape == (2, 1, 32, 32)
    assert 0 < tex.visibility.mean() < 1
    assert set(result.arrays(0)) >= {"identity", "expression", "albedo", "rotation", "camera", "sh"}


def test_weights_change_the_solution(models):
    model = models["bfm"]
    _, _, lmk, _ = _faces(model, 1, seed=11)
    targets = FitTargets(image_size=SIZE, landmarks68=lmk)
    loose = MorphableFitter(model, schedule=_schedule()).fit(targets)
    tight = MorphableFitter(model, weights=FitWeights(identity=10.0), schedule=_schedule()).fit(targets)
    assert tight.params.identity.norm() < 0.5 * loose.params.identity.norm()


def test_bad_targets_are_refused(models):
    with pytest.raises(ValueError, match="landmarks68"):
        FitTargets(image_size=SIZE)
    with pytest.raises(ValueError, match=r"landmarks68 must be \(2, 68, 2\)"):
        FitTargets(image_size=SIZE, landmarks68=torch.zeros(2, 67, 2))
    with pytest.raises(ValueError, match="image must be"):
        FitTargets(image_size=SIZE, landmarks68=torch.zeros(2, 68, 2), image=torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="camera"):
        MorphableFitter(models["bfm"], camera="fisheye")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_matches_cpu(models):
    model = models["bilinear"]
    _, _, lmk, _ = _faces(model, 2, seed=12)
    schedule = _schedule(rigid_iterations=10, landmark_iterations=20, tolerance=0.0)
    cpu = MorphableFitter(model, schedule=schedule).fit(FitTargets(image_size=SIZE, landmarks68=lmk))
    gpu_model = load_model("bilinear", "synthetic:tiny").cuda()
    gpu = MorphableFitter(gpu_model, schedule=schedule).fit(FitTargets(image_size=SIZE, landmarks68=lmk.cuda()))
    assert gpu.params.expression.is_cuda
    torch.testing.assert_close(gpu.landmarks68_pix.cpu(), cpu.landmarks68_pix, atol=0.05, rtol=0)


ICT_DIR = Path(__file__).parents[3] / "shared" / "assets" / "ict-facekit" / "FaceXModel"


@pytest.mark.skipif(not (ICT_DIR / "generic_neutral_mesh.obj").is_file(), reason="ICT-FaceKit asset not present")
def test_ict_facekit_real_model():
    from facelab.morphable.ict import IctFaceModel

    model = IctFaceModel(str(ICT_DIR), face_only=True)
    params, rotation, lmk, _ = _faces(model, 2, seed=13, scale=0.6)
    targets = FitTargets(image_size=SIZE, landmarks68=lmk)
    fitter = MorphableFitter(model, schedule=_schedule(landmark_iterations=100))
    rigid = fitter.fit(targets, schedule=_schedule(landmark_iterations=0))
    result = fitter.fit(targets)
    base = landmark_nme(rigid.landmarks68_pix, lmk, "bbox").mean()
    fit = landmark_nme(result.landmarks68_pix, lmk, "bbox").mean()
    print(f"ICT-FaceKit: NME mean face + rigid {base:.4f}, fit {fit:.4f}")
    assert fit < 0.4 * base
    exp = result.params.expression
    assert exp.min() >= 0 and exp.max() <= 1  # ARKit-style weights in their box
