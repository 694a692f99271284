"""``facelab detail --method dnpm``: from one Detailed3DMM checkpoint (the frozen generator inside) to a 16-bit
FaceScape-encoded PNG, a float .npy in mm, the detailed and proxy OBJs and the side-by-side render; presets, random
and .npy inputs; bad inputs (NaN, wrong lengths, missing or wrong checkpoints) are one-line errors with exit code 2
and nothing written."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from dnpm.detail import PRESETS, encode_facescape_png, expression_preset
from dnpm.detailed3dmm import bilinear_model
from dnpm.module import DnpmModule
from dnpm.module_detailed3dmm import Detailed3DMMModule
from facelab.cli.main import main
from facelab.io.obj import read_obj

GEN = dict(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/dnpm/conftest.py


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    module = Detailed3DMMModule(resolution=16, hidden=(16,) * 5, allow_random_init=True, generator=GEN,
                                map_scale_mm=0.08, log_images_every_n_steps=0)
    for head in module.model.encoder.heads:  # a generator/encoder pair that produces visible detail
        torch.nn.init.normal_(head.weight, std=0.5)
    path = tmp_path_factory.mktemp("d3") / "d3.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def test_detail_writes_maps_meshes_and_render(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["detail", "--method", "dnpm", "--device", "cpu", "--ckpt", str(ckpt), "--id", "random",
                 "--exp", "smile", "--out", str(out), "--render-size", "64"]) == 0
    png = cv2.imread(str(out / "displacement.png"), cv2.IMREAD_UNCHANGED)
    mm = np.load(out / "displacement.npy")
    assert png.dtype == np.uint16 and png.shape == (16, 16) and mm.dtype == np.float32 and mm.shape == (16, 16)
    np.testing.assert_array_equal(png, encode_facescape_png(mm))  # FaceScape's encoding of the float map
    np.testing.assert_allclose((png.astype(np.float64) - 32768) / 32768 * 0.914, np.clip(mm, -0.914, 0.914),
                               atol=0.914 / 32768)
    detailed, proxy = read_obj(out / "detailed.obj"), read_obj(out / "proxy.obj")
    assert len(detailed.verts) > len(proxy.verts) == bilinear_model("synthetic").num_verts
    render = cv2.imread(str(out / "render.png"))
    assert render.shape == (64, 128, 3) and render.std() > 0
    params = np.load(out / "params.npz")
    assert params["expression"][0] == 1 and params["identity"].shape == (50,)
    assert "wrote" in capsys.readouterr().out


def test_presets_and_npy_inputs(ckpt, tmp_path):
    model = bilinear_model("synthetic")
    for name in PRESETS:
        vec = expression_preset(name, model)
        assert vec.shape == (52,) and vec[0] == 1 and (vec[1:] >= 0).all()
    assert expression_preset("neutral", model)[1:].sum() == 0 and expression_preset("jaw_open", model)[1] == 1
    np.save(tmp_path / "id.npy", np.zeros(50, np.float32))
    np.save(tmp_path / "exp.npy", np.full(51, 0.2, np.float32))
    assert main(["detail", "--method", "dnpm", "--ckpt", str(ckpt), "--id", str(tmp_path / "id.npy"),
                 "--exp", str(tmp_path / "exp.npy"), "--out", str(tmp_path / "o"), "--render-size", "32"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "o" / "params.npz")["expression"][1:], 0.2)


@pytest.mark.parametrize("case", ["nan_id", "short_exp", "bad_neutral", "unknown_preset", "missing_ckpt", "gan_ckpt"])
def test_bad_inputs_are_clear_errors(case, ckpt, tmp_path, capsys):
    ident, exp, path = "random", "neutral", str(ckpt)
    if case == "nan_id":
        np.save(tmp_path / "id.npy", np.full(50, np.nan, np.float32))
        ident = str(tmp_path / "id.npy")
    elif case == "short_exp":
        np.save(tmp_path / "exp.npy", np.zeros(40, np.float32))
        exp = str(tmp_path / "exp.npy")
    elif case == "bad_neutral":
        np.save(tmp_path / "exp.npy", np.zeros(52, np.float32))
        exp = str(tmp_path / "exp.npy")
    elif case == "unknown_preset":
        exp = "laughing"
    elif case == "missing_ckpt":
        path = str(tmp_path / "none.ckpt")
    else:
        gan = DnpmModule(**GEN, render_size=0)
        path = str(tmp_path / "gan.ckpt")
        torch.save({"state_dict": gan.state_dict(), "hyper_parameters": dict(gan.hparams)}, path)
    out = tmp_path / "out"
    code = main(["detail", "--method", "dnpm", "--ckpt", path, "--id", ident, "--exp", exp, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "facelab detail: error:" in err, err
    expected = {"nan_id": "NaN", "short_exp": "40 values", "bad_neutral": "neutral weight", "unknown_preset":
                "preset", "missing_ckpt": "no such checkpoint", "gan_ckpt": "not a Detailed3DMM checkpoint"}[case]
    assert expected in err
    assert not out.exists()  # nothing half-written
