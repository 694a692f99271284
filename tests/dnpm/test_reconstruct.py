"""``facelab reconstruct --method dnpm`` (DNPM §IV-B): a real photo (scikit-image's astronaut, the real MTCNN and
mediapipe) through the bilinear landmark fit, the regressor's ``I_low`` and E_deg's ``I_gen = G(E_deg(I_low) +
w_mean)`` (Eq. 11) into proxy / detailed OBJs (the subdivided vertex count), 16-bit PNG + float .npy maps and an
overlay; a photo without a face is skipped with its reason; bad checkpoints are one clear error naming the option;
the projector baseline (``--restore projector``) runs on a maps checkpoint with ``--regressor-ckpt``; and the plain-pSp
baseline config (``configs/dnpm_restore_psp.yaml``) parses and its loss terms (pSp's L2, LPIPS-Alex, the ArcFace
embedding, w_norm) are finite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dnpm.detail import encode_facescape_png
from dnpm.detailed3dmm import bilinear_model, synthesize
from dnpm.module_restore import (
    EncoderSettings,
    PhotoSettings,
    RegressorLossWeights,
    RegressorModule,
    RestoreLossWeights,
    RestoreModule,
    load_restorer,
)
from dnpm.reconstruct import DnpmReconstructor
from dnpm.restore_data import Degradation
from dnpm.restore_networks import restore
from facelab.cli.main import main
from facelab.cli.reconstruct import load_reconstructor
from facelab.data.image_io import DataError
from facelab.io.obj import read_obj

cv2 = pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("facenet_pytorch")
pytest.importorskip("mediapipe")

REPO = Path(__file__).resolve().parents[2]
RES = 32
GEN = dict(resolution=RES, z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=16)
ENC = EncoderSettings(input_size=32, depth=18)
NO_LOSS_NETWORKS = RestoreLossWeights(pixel=1.0, lpips=0.0, identity=0.0)
FAST = ["--fit-iterations", "20", "40", "--crop-size", "128", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tests/dnpm/conftest.py (its module fixtures too)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, gan_checkpoint, save_checkpoint, tiny_regressor_args) -> dict[str, str]:
    """Tiny untrained checkpoints: the DNPM generator, the regressor, E_deg trained on photos (it carries the
    regressor) and on maps (it does not)."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {"gan": gan_checkpoint(root / "gan.ckpt")}
    regressor = RegressorModule(
        **tiny_regressor_args, loss_weights=RegressorLossWeights(pixel=1.0, perceptual=0.0), map_unit_mm=0.08
    )
    out["regressor"] = save_checkpoint(regressor, root / "regressor.ckpt")
    common = dict(init_ckpt=out["gan"], resolution=RES, encoder=ENC, loss_weights=NO_LOSS_NETWORKS)
    photos = RestoreModule(**common, input="photos", photos=PhotoSettings(regressor_ckpt=out["regressor"]))
    out["photos"] = save_checkpoint(photos, root / "restore_photos.ckpt")
    out["maps"] = save_checkpoint(RestoreModule(**common, input="maps"), root / "restore_maps.ckpt")
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    inputs = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage_data.astronaut()).save(inputs / "astronaut.png")
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(inputs / "gray.png")
    return inputs


@pytest.fixture(scope="module")
def encoder_run(ckpts, photos, tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(
        ["reconstruct", "--method", "dnpm", "--ckpt", ckpts["photos"], "--input", str(photos), "--out", str(out), *FAST]
    )
    return out, code


def test_photo_gives_meshes_maps_and_overlay(encoder_run, ckpts):
    out, code = encoder_run
    assert code == 0
    name = "astronaut_face0"
    for suffix in ("overlay.png", "displacement_color.png", "displacement_low_color.png", "regressor_input.png"):
        assert (out / f"{name}_{suffix}").is_file(), suffix
    assert (out / "astronaut_overlay.png").is_file()
    assert np.asarray(Image.open(out / f"{name}_overlay.png")).shape == (128, 128, 3)
    assert np.asarray(Image.open(out / f"{name}_regressor_input.png")).shape == (64, 64, 3)  # the regressor's side
    for key in ("displacement", "displacement_low"):
        levels = cv2.imread(str(out / f"{name}_{key}.png"), cv2.IMREAD_UNCHANGED)
        mm = np.load(out / f"{name}_{key}.npy")
        assert levels.dtype == np.uint16 and levels.shape == (RES, RES)
        assert mm.dtype == np.float32 and mm.shape == (RES, RES) and np.isfinite(mm).all()
        np.testing.assert_array_equal(levels, encode_facescape_png(mm))  # FaceScape's encoding of the mm map

    bilinear = bilinear_model("synthetic")
    faces = bilinear.faces.numpy()
    edges = np.unique(np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1), axis=0)
    proxy, detailed = read_obj(out / f"{name}_proxy.obj"), read_obj(out / f"{name}_detailed.obj")
    assert proxy.verts.shape == (bilinear.num_verts, 3)
    assert detailed.verts.shape == (bilinear.num_verts + len(edges), 3)  # one midpoint per edge
    assert len(detailed.faces) == 4 * len(faces) and len(detailed.uv) > 0
    assert np.isfinite(detailed.verts).all()

    params = np.load(out / f"{name}_params.npz")
    assert params["identity"].shape == (bilinear.num_identity,) and params["expression"].shape == (51,)
    assert params["global_pose"].shape == (3,) and params["camera_scale"].shape == ()
    # Eq. 11 end to end: ws = E_deg(I_low) + w_mean, and the written map is G(ws)
    restorer = load_restorer(ckpts["photos"])
    ws = torch.from_numpy(params["ws"])[None]
    assert ws.shape == (1, restorer.generator.n_latent, GEN["w_dim"])
    low = torch.from_numpy(np.load(out / f"{name}_displacement_low.npy"))[None, None] / restorer.map_scale_mm
    with torch.no_grad():
        torch.testing.assert_close(restore(restorer.encoder, restorer.generator, low)[1], ws, atol=1e-4, rtol=1e-4)
        gen_mm = synthesize(restorer.generator, ws)[0, 0] * restorer.map_scale_mm
    np.testing.assert_allclose(np.load(out / f"{name}_displacement.npy"), gen_mm.numpy(), atol=1e-5)


def test_photo_without_a_face_is_skipped_with_its_reason(encoder_run, photos):
    out, _ = encoder_run
    report = json.loads((out / "report.json").read_text())
    skipped = {Path(item["input"]).name: item for item in report["skipped"]}
    assert set(skipped) == {"gray.png"} and skipped["gray.png"]["reason"] == "no_face"
    assert report["faces"] == 1 and report["settings"]["restore"] == "encoder"
    assert report["settings"]["regressor"] == "carried by --ckpt"


def test_crop_without_landmarks_is_a_data_error(ckpts):
    reconstructor = load_reconstructor("dnpm", ckpts["photos"], method_options=["--crop-size", "128"])
    assert isinstance(reconstructor, DnpmReconstructor)
    with pytest.raises(DataError, match="no face mesh") as err:
        reconstructor.encode(torch.full((1, 3, 128, 128), 0.5))
    assert err.value.reason == "no_landmarks"
    reconstructor.close()


def test_bad_checkpoints_are_clear_errors(ckpts, photos, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_text("not a checkpoint")
    image = str(photos / "astronaut.png")
    cases = [
        (["--ckpt", str(tmp_path / "missing.ckpt")], ["--ckpt", "not found"]),
        (["--ckpt", str(corrupt)], ["--ckpt", "not a weights file"]),
        (["--ckpt", ckpts["regressor"]], ["--ckpt", "not a RestoreModule checkpoint"]),
        (["--ckpt", ckpts["maps"]], ["--regressor-ckpt", "input: maps"]),
        (["--ckpt", ckpts["maps"], "--regressor-ckpt", str(corrupt)], ["--regressor-ckpt", "not a weights file"]),
    ]
    for k, (args, words) in enumerate(cases):
        capsys.readouterr()
        code = main(
            [
                "reconstruct",
                "--method",
                "dnpm",
                *args,
                "--input",
                image,
                "--out",
                str(tmp_path / f"o{k}"),
                "--device",
                "cpu",
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        assert all(word in err for word in words), (args, err)
        assert not (tmp_path / f"o{k}").exists()  # nothing written before the checkpoint loads


def test_projector_baseline_on_a_maps_checkpoint(ckpts, photos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "reconstruct",
            "--method",
            "dnpm",
            "--ckpt",
            ckpts["maps"],
            "--regressor-ckpt",
            ckpts["regressor"],
            "--restore",
            "projector",
            "--projector-steps",
            "3",
            "--degrade",
            "--input",
            str(photos / "astronaut.png"),
            "--out",
            str(out),
            *FAST,
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "--projector-lpips-weights" in err  # the missing LPIPS weights are named
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["restore"] == "projector" and report["settings"]["regressor"] == ckpts["regressor"]
    assert report["settings"]["degrade"] == "16^2 + blur 1"  # the regressor's Table III degradation
    ws = torch.from_numpy(np.load(out / "astronaut_face0_params.npz")["ws"])[None]
    restorer = load_restorer(ckpts["maps"])
    with torch.no_grad():  # constant noise: the written code alone reproduces the written map
        gen_mm = synthesize(restorer.generator, ws)[0, 0] * restorer.map_scale_mm
    np.testing.assert_allclose(np.load(out / "astronaut_face0_displacement.npy"), gen_mm.numpy(), atol=1e-5)
    assert (out / "astronaut_face0_detailed.obj").is_file()


def test_psp_baseline_config_parses_and_its_losses_run(tmp_path):
    cli = Path(sys.executable).parent / "lightning-cli"
    config = REPO / "configs" / "dnpm_restore_psp.yaml"
    proc = subprocess.run(
        [str(cli), "fit", "--config", str(config), "--print_config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    args = yaml.safe_load(proc.stdout)["model"]["init_args"]
    assert args["loss_weights"] == {"pixel": 0.0, "lpips": 0.8, "identity": 0.1, "l2": 1.0, "w_norm": 0.0}
    assert args["lpips_net"] == "alex" and args["identity_features"] == "embedding"

    weights = RestoreLossWeights(**{**args["loss_weights"], "w_norm": 0.005})  # pSp's super-resolution recipe
    module = RestoreModule(
        allow_random_init=True,
        resolution=RES,
        generator=GEN,
        encoder=ENC,
        arcface_depth=18,
        loss_weights=weights,
        lpips_net="alex",
        identity_features="embedding",
    )
    assert module.identity.feature_layers == () and module.identity.embedding_weight == 1.0
    high = torch.randn(2, 1, RES, RES) * 0.3
    losses, gen = module.losses(high, Degradation(factor=4)(high))
    assert set(losses) == {"l2", "lpips", "identity", "w_norm"} and all(torch.isfinite(v) for v in losses.values())
    torch.testing.assert_close(losses["l2"], (gen - high).square().mean())
