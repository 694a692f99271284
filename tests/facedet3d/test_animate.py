"""``facelab animate --method facedet3d``: from a prepared cache and tiny DetH / R checkpoints, every output of the
issue per face and target (16-bit FDS PNG + float .npy detail map, OBJ with the detail applied, shading, render,
views, grid); presets map to FACS AU vectors; a missing part or a bad target is a clear error before anything is
written; no --rcan is a warning."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from facedet3d.animate import add_arguments, run
from facedet3d.data import SyntheticDetailDataset
from facedet3d.expression import AUExpressionMap
from facedet3d.module_deth import EXPRESSION_MAP_KEY, DetHModule
from facedet3d.module_rcan import RcanModule
from facedet3d.module_render import RenderModule
from facedet3d.prepare import DetailCacheWriter
from facedet3d.presets import EMOTION_PRESETS, parse_target, preset_vector
from facedet3d.render_losses import ShadingPredictor
from facedet3d.renderer import RenderingNetwork
from facelab.data.wrinkles import AU_NAMES
from facelab.nn import UNetDiscriminator

SIZE = 32


def _save(module, path, **extra):
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), **extra}, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("anim")
    torch.manual_seed(0)
    render = RenderModule(network=RenderingNetwork(4, (4, 8), (4, 8)), image_size=SIZE, texture_size=SIZE,
                          discriminator=UNetDiscriminator(3, (4, 8, 8), heads={"au": 17}),
                          shading_predictor=ShadingPredictor(hidden=4))
    _save(render, root / "render.ckpt")
    deth = DetHModule(base_channels=8, max_channels=16)
    _save(deth, root / "deth_no_map.ckpt")  # a checkpoint from before the AU -> expression map
    _save(RcanModule(features=8, n_groups=1, n_blocks=1), root / "rcan.ckpt")
    face = SyntheticDetailDataset(num_samples=1, pairs=False, image_size=SIZE, texture_size=SIZE, map_size=64,
                                  seed=2).__getitems__([0])[0]
    g = torch.Generator().manual_seed(0)
    aus = torch.rand(64, 17, generator=g)
    deth.expression_map.update(aus, aus @ torch.randn(17, face.expression.shape[0], generator=g))
    _save(deth, root / "deth.ckpt", **{EXPRESSION_MAP_KEY: deth.expression_map.state_dict()})
    np.save(root / "input_expression.npy", face.expression.numpy())
    cache = root / "cache"
    DetailCacheWriter(cache).write_faces("synthetic/0.png", "synthetic/0.png", [(face, {"face": 0, "identity": ""})],
                                         [])
    return root, cache


def _options(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = parser.parse_args(list(argv))
    options.device = "cpu"
    return options


def test_animate_writes_every_output(setup, tmp_path, capsys):
    root, cache = setup
    out = tmp_path / "out"
    code = run(_options("--deth", str(root / "deth.ckpt"), "--render", str(root / "render.ckpt"), "--input",
                        str(cache), "--au", "happy", "--au", "AU04=0.9", "--views", "30", "--out", str(out),
                        "--subdivisions", "0"))
    assert code == 0
    assert "`--rcan`" in capsys.readouterr().err  # maps stay at 256^2: a warning naming the option
    for label in ("happy", "au_au04"):
        stem = out / f"0_face0_{label}"
        png = np.array(Image.open(f"{stem}_detail.png"))
        npy = np.load(f"{stem}_detail.npy")
        assert png.dtype == np.uint16 and npy.shape == png.shape == (64, 64)
        np.testing.assert_allclose(png / 65535.0 * 2 - 1, np.clip(npy, -1, 1), atol=2e-5)  # the FDS encoding
        obj = (stem.parent / f"{stem.name}_mesh.obj").read_text()
        assert obj.count("\nv ") > 1000 and "\nvt " in obj and "/" in obj
        for suffix in ("render", "shading", "yaw+30", "yaw+30_shading"):
            assert Image.open(f"{stem}_{suffix}.png").size == (SIZE, SIZE)
    # Eq. 3's target geometry: alpha^_e = [y, 1] W from the checkpoint's AU -> expression map
    fit = AUExpressionMap.from_state_dict(torch.load(root / "deth.ckpt", weights_only=True)[EXPRESSION_MAP_KEY])
    happy, au04 = (np.load(out / f"0_face0_{label}_expression.npy") for label in ("happy", "au_au04"))
    assert np.abs(happy - au04).max() > 1e-3  # the geometry follows the target, not the input
    torch.testing.assert_close(torch.from_numpy(happy - au04).double(),
                               (preset_vector("happy") - parse_target("AU04=0.9")[1]).double() @ fit.weights()[:-1],
                               atol=1e-4, rtol=0)
    grid = Image.open(out / "0_face0_grid.png")
    assert grid.size[0] > 4 * SIZE and grid.size[1] > 3 * SIZE  # 4 columns, 3 rows (renders, shading, view)
    assert not list(out.glob(".*partial"))


def test_a_checkpoint_without_the_expression_map_keeps_the_input_geometry_with_a_warning(setup, tmp_path, capsys):
    root, cache = setup
    out = tmp_path / "out"
    assert run(_options("--deth", str(root / "deth_no_map.ckpt"), "--render", str(root / "render.ckpt"), "--input",
                        str(cache), "--au", "surprise", "--out", str(out), "--subdivisions", "0")) == 0
    assert "no AU -> expression map" in capsys.readouterr().err
    np.testing.assert_allclose(np.load(out / "0_face0_surprise_expression.npy"),
                               np.load(root / "input_expression.npy"), atol=1e-6)


@pytest.mark.slow
def test_rcan_super_resolves_the_maps_twice(setup, tmp_path, capsys):
    root, cache = setup
    out = tmp_path / "out"
    assert run(_options("--deth", str(root / "deth.ckpt"), "--render", str(root / "render.ckpt"), "--rcan",
                        str(root / "rcan.ckpt"), "--input", str(cache), "--au", "sad", "--out", str(out),
                        "--subdivisions", "0", "--rcan-tile", "64", "--rcan-overlap", "8")) == 0
    assert np.load(out / "0_face0_sad_detail.npy").shape == (1024, 1024)  # 64 -> 256 -> 1024 (Eq. 9)
    assert "`--rcan`" not in capsys.readouterr().err


def test_missing_parts_and_bad_targets_are_clear_errors(setup, tmp_path):
    root, cache = setup
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="--deth"):
        run(_options("--render", str(root / "render.ckpt"), "--input", str(cache), "--au", "happy", "--out",
                     str(out)))
    with pytest.raises(ValueError, match="--render"):
        run(_options("--deth", str(root / "deth.ckpt"), "--input", str(cache), "--au", "happy", "--out", str(out)))
    with pytest.raises(ValueError, match="unknown emotion preset|not a preset"):
        run(_options("--deth", "x", "--render", "y", "--input", str(cache), "--au", "grumpy", "--out", str(out)))
    assert not out.exists()


def test_presets_follow_the_facs_prototypes():
    assert set(EMOTION_PRESETS) == {"happy", "sad", "surprise", "fear", "anger", "disgust"}
    happy = preset_vector("happy")
    assert happy[AU_NAMES.index("AU12")] == 0.8 and happy[AU_NAMES.index("AU06")] == 0.8
    assert happy[AU_NAMES.index("AU04")] == 0
    assert preset_vector("anger")[AU_NAMES.index("AU04")] == 0.8
    label, vec = parse_target(",".join(["0.5"] * 17))
    assert torch.equal(vec, torch.full((17,), 0.5)) and label.startswith("au_")
    with pytest.raises(ValueError, match="outside"):
        parse_target("AU12=1.5")
    with pytest.raises(ValueError, match="unknown action unit"):
        parse_target("AU99=0.5")
