"""Photo targets: mediapipe -> iBUG 68 and the skin mask; the real astronaut photo fitted end to end through
``facelab fit`` (mesh, texture, visibility, overlay, params, a converged report; bad files skipped)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facelab.fitting import mediapipe_to_ibug68
from facelab.fitting.landmarks import MP_IBUG68_FEATURES, MP_JAW_POLYLINE
from facelab.fitting.photos import MP_LEFT_EYE, MP_LIPS, MP_RIGHT_EYE, photo_targets, skin_mask


def test_mediapipe_to_ibug68_layout():
    points = torch.arange(478 * 2, dtype=torch.float64).reshape(1, 478, 2)
    out = mediapipe_to_ibug68(points)
    assert out.shape == (1, 68, 2)
    # jaw end points and chin are mediapipe vertices; the others interpolate two polyline neighbours
    torch.testing.assert_close(out[0, 0], points[0, MP_JAW_POLYLINE[0]])
    torch.testing.assert_close(out[0, 8], points[0, 152])  # the chin (menton)
    torch.testing.assert_close(out[0, 16], points[0, MP_JAW_POLYLINE[-1]])
    # jaw point 1 lies 22 / 16 = 1.375 polyline steps from the ear
    torch.testing.assert_close(out[0, 1], 0.625 * points[0, MP_JAW_POLYLINE[1]] + 0.375 * points[0, MP_JAW_POLYLINE[2]])
    # named features: eye corners (36, 39, 42, 45), nose tip (30), mouth corners (48, 54)
    for ibug, mp in ((36, 33), (39, 133), (42, 362), (45, 263), (30, 1), (48, 61), (54, 291)):
        torch.testing.assert_close(out[0, ibug], points[0, mp])
    assert len(MP_IBUG68_FEATURES) == 51 and len(set(MP_IBUG68_FEATURES)) == 51
    with pytest.raises(ValueError, match="478"):
        mediapipe_to_ibug68(torch.zeros(1, 100, 2))


def _fake_mesh(size: int = 64) -> torch.Tensor:
    """(1, 478, 2) points on a disc, eyes and lips as small clusters at their places."""
    g = torch.Generator().manual_seed(0)
    angle = torch.rand(478, generator=g) * 2 * np.pi
    radius = torch.rand(478, generator=g).sqrt() * 20
    pts = torch.stack([32 + radius * torch.cos(angle), 32 + radius * torch.sin(angle)], -1)
    ring = torch.linspace(0, 2 * np.pi, 17)[:-1]
    pts[list(MP_LEFT_EYE)] = torch.stack([40 + 4 * torch.cos(ring), 26 + 2 * torch.sin(ring)], -1)
    pts[list(MP_RIGHT_EYE)] = torch.stack([24 + 4 * torch.cos(ring), 26 + 2 * torch.sin(ring)], -1)
    lips = torch.linspace(0, 2 * np.pi, len(MP_LIPS) + 1)[:-1]
    pts[list(MP_LIPS)] = torch.stack([32 + 6 * torch.cos(lips), 42 + 3 * torch.sin(lips)], -1)
    return pts[None]


def test_skin_mask_is_the_face_without_eyes_and_lips():
    pts = _fake_mesh()
    mask = skin_mask(pts, (64, 64))
    assert mask.shape == (1, 1, 64, 64)
    assert mask[0, 0, 32, 32] == 1  # cheek / nose
    assert mask[0, 0, 26, 40] == 0  # inside the left eye
    assert mask[0, 0, 42, 32] == 0  # on the lips
    assert mask[0, 0, 2, 2] == 0  # outside the face
    targets = photo_targets(torch.zeros(1, 64, 64, 3, dtype=torch.uint8), pts)
    assert targets.image.shape == (1, 3, 64, 64) and targets.landmarks68 is None
    torch.testing.assert_close(targets.mask, mask)


@pytest.fixture(scope="module")
def astronaut_run(tmp_path_factory):
    pytest.importorskip("mediapipe")
    pytest.importorskip("facenet_pytorch")
    import skimage.data
    from PIL import Image

    from facelab.cli.main import main

    inp = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.astronaut()).save(inp / "astronaut.png")
    (inp / "broken.jpg").write_text("not an image")
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(inp / "flat.png")
    out = tmp_path_factory.mktemp("fit") / "out"
    code = main(["fit", "--model", "bilinear", "--input", str(inp), "--out", str(out), "--size", "192",
                 "--render-size", "96", "--uv-size", "128", "--iterations", "50", "300", "60"])
    return code, out


def test_fit_command_on_the_astronaut(astronaut_run):
    code, out = astronaut_run
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["faces"] == 1
    reasons = {s["input"].rsplit("/", 1)[-1]: s["reason"] for s in report["skipped"]}
    assert reasons == {"broken.jpg": "not_an_image", "flat.png": "no_face"}
    face = report["fitted"][0]
    assert face["name"] == "astronaut_face0"
    fit = face["fit"]
    print("astronaut fit report:", json.dumps(fit))
    assert fit["converged"], fit
    first, last = fit["stages"][0]["energies"]["landmarks68"], fit["stages"][-1]["energies"]["landmarks68"]
    assert last < 0.5 * first and last < 10.0  # RMS residual of a few % of the face size
    for suffix in (".obj", ".mtl", "_texture.png", "_visibility.png", "_overlay.png", "_render.png", "_params.npz"):
        assert (out / f"astronaut_face0{suffix}").is_file(), suffix
    obj = (out / "astronaut_face0.obj").read_text()
    assert "vt " in obj and "mtllib astronaut_face0.mtl" in obj
    from PIL import Image

    vis = np.asarray(Image.open(out / "astronaut_face0_visibility.png"))
    assert 0.05 < (vis > 127).mean() < 0.95
    params = np.load(out / "astronaut_face0_params.npz")
    assert params["expression"].shape == (51,) and params["camera"].shape == (3,) and params["sh"].shape == (27,)
    assert params["crop_matrix"].shape == (2, 3)


def test_fit_command_refuses_bad_options(tmp_path, capsys):
    from facelab.cli.main import main

    (tmp_path / "in").mkdir()
    assert main(["fit", "--model", "ict", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 2
    assert "needs --model-path" in capsys.readouterr().err
    assert main(["fit", "--model", "bfm", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "in" / "x")]) == 2
