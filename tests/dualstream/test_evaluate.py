"""facelab evaluate --method dualstream: the synthetic world, the AFLW2000-3D layout, MICC-style scans."""

import argparse

import pytest
import torch

from dualstream.data import write_300wlp_standin
from dualstream.evaluate import (
    evaluate_aflw2000,
    evaluate_entry,
    evaluate_micc,
    micc_point_to_plane,
    photometric_error,
    read_scan,
    texture_mae,
)
from facelab.errors import AssetFormatError, MissingAssetError
from facelab.methods import EvaluateRequest
from facelab.morphable import load_model
from facelab.rotations import axis_angle_to_matrix

OPTIONS = dict(aflw_root=None, bfm_path=None, micc_root=None, crop_radius=95.0, model_path="synthetic:tiny",
               uv_size=16, width=0.125)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    root = tmp_path_factory.mktemp("aflw")
    return root, write_300wlp_standin(root, num_images=3, seed=2, corrupt=True)


@pytest.fixture(scope="module")
def predictor():
    from dualstream.evaluate import load_predictor

    req = EvaluateRequest(ckpt=None, image_size=32, seed=0)
    return load_predictor(req, argparse.Namespace(**OPTIONS))


def test_synthetic_entry_table_and_json(tmp_path):
    req = EvaluateRequest(ckpt=None, data="synthetic", num_images=3, image_size=32, batch_size=2, seed=0)
    res = evaluate_entry.run(req, argparse.Namespace(**OPTIONS))
    table = res.format_table()
    for row in ("ASM error (full map)", "vertex error", "NME 68 (yaw-balanced)", "NME dense", "point-to-plane",
                "texture MAE", "mean_asm"):
        assert row in table
    assert res.value("texture MAE") is None and res.value("vertex error") > 0
    geometry = [r for r in res.rows if r["value"] is not None]
    assert geometry and all(set(r["baselines"]) == {"mean_asm", "untrained"} for r in geometry)
    assert (tmp_path / "r.json").exists() is False and res.write_json(tmp_path / "r.json").stat().st_size > 100


def test_aflw2000_layout_with_dense_nme_and_skips(predictor, standin):
    root, images = standin
    res = evaluate_aflw2000(predictor, images, bfm_path=str(root / "BFM.mat"))
    assert res.value("NME 68 (yaw-balanced)") > 0 and res.value("NME dense (yaw-balanced)") > 0
    reasons = "\n".join(res.skipped)
    assert "broken.mat" in reasons and "nokeys.mat: key `pt3d_68` is missing" in reasons
    with pytest.raises(MissingAssetError, match="AFLW2000-3D folder not found"):
        evaluate_aflw2000(predictor, root / "nope")


def test_micc_alignment_removes_a_similarity():
    m = load_model("bfm", "synthetic:tiny")
    verts = m(m.neutral_params(1)).verts[0]
    rot = axis_angle_to_matrix(torch.tensor([[0.1, -0.3, 0.05]]))[0]
    scan = 120 * verts @ rot.T + torch.tensor([5.0, -3.0, 40.0])
    assert micc_point_to_plane(verts, m.faces, scan, crop_radius=None) < 1e-2
    bumpy = scan + torch.randn(scan.shape, generator=torch.Generator().manual_seed(0)) * 2.0
    assert micc_point_to_plane(verts, m.faces, bumpy, crop_radius=None) > 0.3


def test_micc_folder_and_bad_scans(predictor, tmp_path):
    import trimesh
    from PIL import Image

    m = load_model("bfm", "synthetic:tiny")
    verts = m(m.neutral_params(1)).verts[0] * 100
    trimesh.Trimesh(verts.numpy(), m.faces.numpy(), process=False).export(tmp_path / "a.obj")
    Image.new("RGB", (64, 64), (120, 90, 80)).save(tmp_path / "a.jpg")
    (tmp_path / "b.obj").write_text("not a mesh")
    Image.new("RGB", (64, 64)).save(tmp_path / "b.jpg")
    Image.new("RGB", (64, 64)).save(tmp_path / "c.jpg")
    res = evaluate_micc(predictor, tmp_path)
    assert res.value("point-to-plane after ICP (scan)") > 0
    assert any("c.jpg: no" in s for s in res.skipped) and any("b.obj" in s for s in res.skipped)
    with pytest.raises(AssetFormatError):
        read_scan(tmp_path / "b.obj")


def test_texture_metrics():
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1
    assert torch.allclose(texture_mae(a, b * 0.5, mask), torch.full((2,), 0.5))
    assert torch.allclose(photometric_error(a, b, mask), torch.full((2,), 255.0))


def test_wrong_crop_size_and_missing_roots(predictor):
    with pytest.raises(ValueError, match="32\\^2 crops"):
        predictor(torch.rand(1, 3, 16, 16))
    req = EvaluateRequest(ckpt=None, data="aflw2000", image_size=32)
    with pytest.raises(ValueError, match="--aflw-root"):
        evaluate_entry.run(req, argparse.Namespace(**OPTIONS))


def test_texture_rows_from_an_end_to_end_checkpoint(tmp_path):
    """A checkpoint with a generator (texture / end-to-end stage): the geometry rows come from its geometry stream,
    and the texture MAE / photometric error are printed beside the linear-albedo and mean-texture baselines."""
    from dualstream.module import DualStreamModule

    torch.manual_seed(0)
    module = DualStreamModule(generator_channels=(8, 16, 16, 16), region_level=2, stylize_levels=(2, 3),
                              geometry_args=dict(width=0.0625, decoder_width=0.0625), image_size=32, uv_size=32,
                              allow_random_init=True, loss_weights={"pixel": 0.1, "identity": 0.0, "landmark": 0.01})
    path = tmp_path / "dualstream.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    req = EvaluateRequest(ckpt=str(path), data="synthetic", num_images=3, batch_size=2, seed=0)
    res = evaluate_entry.run(req, argparse.Namespace(**OPTIONS))
    rows = {r["metric"]: r for r in res.rows}
    tex, photo = rows["texture MAE"], rows["photometric error"]
    assert 0 < tex["value"] < 1 and set(tex["baselines"]) == {"linear_fit", "linear_pred", "mean_texture"}
    assert all(0 < v < 1 for v in tex["baselines"].values())
    # the untrained geometry's mesh collapses to a point (tanh decoders near 0): no pixel to compare, said so
    assert photo["value"] is None and "no face rendered" in photo["unit"]
    assert res.value("vertex error") > 0 and "linear_fit" in res.format_table()
    with pytest.raises(ValueError, match="trained on 32\\^2"):
        evaluate_entry.run(EvaluateRequest(ckpt=str(path), data="synthetic", image_size=64),
                           argparse.Namespace(**OPTIONS))
