"""ICT-FaceKit as a target of the speech model's ARKit weights: the ARKit -> ICT table, ARKit -> ICT vertices and
``facelab animate --method dnpm --target ict`` (on the real ICT-FaceKit subset in shared/assets)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dnpm.animate import add_arguments, run
from dnpm.arkit import (
    ARKIT_NAMES,
    ARKIT_TO_ICT,
    ICT_EXPRESSION_NAMES,
    arkit_index,
    arkit_to_expression_matrix,
    arkit_to_ict_matrix,
    arkit_to_names_matrix,
    arkit_to_vertices,
    random_identity,
)
from dnpm.speech_data import synthesize_utterance, write_wav
from facelab.errors import MissingAssetError

ICT_DIR = Path(__file__).resolve().parents[3] / "shared" / "assets" / "ict-facekit" / "FaceXModel"
needs_ict = pytest.mark.skipif(
    not (ICT_DIR / "generic_neutral_mesh.obj").is_file(), reason=f"ICT-FaceKit is not at {ICT_DIR}"
)


def test_arkit_to_ict_table_covers_all_52():
    assert list(ARKIT_TO_ICT) == list(ARKIT_NAMES)  # every name, in ARKit's order
    assert len(ICT_EXPRESSION_NAMES) == 57 and len(set(ICT_EXPRESSION_NAMES)) == 57
    m = arkit_to_ict_matrix()  # vertex_indices.json's 53 (IctFaceModel's default)
    assert m.shape == (52, 53)
    assert torch.equal(m.sum(0), torch.ones(53))  # every default ICT expression driven by exactly one ARKit name
    assert (m.sum(1) == 1).sum() == 49 and m[arkit_index("tongueOut")].sum() == 0
    halves = [ICT_EXPRESSION_NAMES.index(n) for n in ("browInnerUp_L", "browInnerUp_R")]
    assert m[arkit_index("browInnerUp"), halves].tolist() == [1.0, 1.0]
    assert m[arkit_index("cheekPuff")].sum() == 2
    every = arkit_to_ict_matrix(ICT_EXPRESSION_NAMES)  # the 4 extra OBJs have no ARKit name: 0
    assert every.shape == (52, 57) and every[:, 53:].abs().sum() == 0 and torch.equal(every[:, :53], m)
    # the explicit table and the name rule of other ARKit-named models agree
    assert torch.equal(every, arkit_to_names_matrix(ICT_EXPRESSION_NAMES))
    with pytest.raises(ValueError, match="unknown target"):
        arkit_to_ict_matrix(["jawOpen", "eyeBlink_L"])  # a model loaded without most expressions


@needs_ict
def test_ict_names_match_the_asset_folder():
    config = json.loads((ICT_DIR / "vertex_indices.json").read_text())["expressions"]
    assert list(ICT_EXPRESSION_NAMES[:53]) == config
    objs = {p.stem for p in ICT_DIR.glob("*.obj") if not p.stem.startswith(("identity", "generic"))}
    assert objs == set(ICT_EXPRESSION_NAMES)


@pytest.fixture(scope="module")
def ict():
    if not (ICT_DIR / "generic_neutral_mesh.obj").is_file():
        pytest.skip(f"ICT-FaceKit is not at {ICT_DIR}")
    from facelab.morphable.ict import IctFaceModel

    return IctFaceModel(str(ICT_DIR)).eval()


def test_arkit_to_ict_vertices(ict):
    neutral = ict.v_template.view(-1, 3)
    exp = ict.expression_basis.view(ict.num_expression, -1, 3)
    a = torch.zeros(3, 52)
    a[1, arkit_index("jawOpen")] = 1.0
    a[2, arkit_index("browInnerUp")] = 0.5
    v = arkit_to_vertices(ict, a, torch.zeros(ict.num_identity))
    assert v.shape == (3, 26719, 3) and torch.isfinite(v).all()
    assert torch.allclose(v[0], neutral, atol=1e-5)
    assert torch.allclose(v[1] - neutral, exp[ict.expression_index("jawOpen")], atol=1e-5)
    both = exp[ict.expression_index("browInnerUp_L")] + exp[ict.expression_index("browInnerUp_R")]
    assert torch.allclose(v[2] - neutral, 0.5 * both, atol=1e-5)
    assert float((v[1] - v[0]).norm(dim=1).max()) > 0.5  # the jaw opens by centimetres
    # a random identity (N(0, I), seeded) moves every frame alike
    r = arkit_to_vertices(ict, a, seed=3)
    ident = torch.from_numpy(random_identity(ict.num_identity, 3))
    shift = (ident @ ict.identity_basis).view(-1, 3)
    assert torch.allclose(r - v, shift.expand(3, -1, -1), atol=1e-4) and shift.abs().max() > 0.1
    assert torch.equal(arkit_to_expression_matrix(ict), arkit_to_ict_matrix(ict.expression_names))
    with pytest.raises(ValueError, match="10 coefficients"):
        arkit_to_vertices(ict, a, torch.zeros(ict.num_identity + 1))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An untrained tiny SpeechModule whose output layer is randomised (so the ARKit weights vary over frames)."""
    from dnpm.module_speech import SpeechModule

    torch.manual_seed(0)
    model = SpeechModule(model_path="synthetic:tiny", d_model=16, max_frames=30, period=10)
    with torch.no_grad():
        model.net.decoder.out.weight.normal_(0.0, 0.5)
        model.net.decoder.out.bias.fill_(0.3)
    path = tmp_path_factory.mktemp("speech") / "speech.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def _parse(*args) -> argparse.Namespace:
    """The ``facelab animate --method dnpm`` options of a command line."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([str(a) for a in args])


@needs_ict
def test_animate_target_ict_writes_ict_meshes_and_video(ckpt, ict, tmp_path):
    from facelab.io.obj import read_obj_vertices

    audio, _ = synthesize_utterance(1, seconds=0.5)  # 15 frames
    write_wav(tmp_path / "a.wav", audio)
    identity = np.linspace(-1, 1, ict.num_identity).astype(np.float32)
    np.save(tmp_path / "id.npy", identity)
    out = tmp_path / "out"
    common = ["--ckpt", ckpt, "--audio", tmp_path / "a.wav", "--out", out, "--target", "ict", "--ict-path", ICT_DIR]
    opts = _parse(*common, "--id", tmp_path / "id.npy", "--render-size", 32, "--mesh-every", 7, "--overlap", 10)
    assert run(opts) == 0
    arkit = np.load(out / "arkit.npy")
    assert arkit.shape == (15, 52) and np.ptp(arkit, axis=0).max() > 0.05  # the weights move over time
    names = sorted(p.name for p in (out / "meshes").iterdir())
    assert names == ["ict_00000.obj", "ict_00007.obj", "ict_00014.obj"]
    want = arkit_to_vertices(ict, torch.from_numpy(arkit[[0, 7, 14]]), torch.from_numpy(identity))
    for i, name in enumerate(names):
        got = read_obj_vertices(out / "meshes" / name)
        assert got.shape == (26719, 3)
        np.testing.assert_allclose(got, want[i].numpy(), atol=1e-3)  # OBJ text precision
    pytest.importorskip("imageio_ffmpeg")
    assert (out / "animation.mp4").stat().st_size > 1000


def test_animate_target_ict_bad_options(ckpt, tmp_path):
    audio, _ = synthesize_utterance(0, seconds=0.5)
    write_wav(tmp_path / "a.wav", audio)
    base = ["--ckpt", ckpt, "--audio", tmp_path / "a.wav", "--out", tmp_path / "o", "--target", "ict", "--no-video"]
    with pytest.raises(ValueError, match="no ICT-FaceKit counterpart"):
        run(_parse(*base, "--ict-path", ICT_DIR, "--detail-ckpt", tmp_path / "d3.ckpt"))
    with pytest.raises(MissingAssetError, match="--ict-path.*ICT-VGL/ICT-FaceKit"):
        run(_parse(*base))
    with pytest.raises(MissingAssetError, match="generic_neutral_mesh.obj"):
        run(_parse(*base, "--ict-path", tmp_path / "FaceXModel"))
    assert not (tmp_path / "o").exists()  # refused before anything is written
