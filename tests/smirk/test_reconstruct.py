"""``facelab reconstruct`` with SMIRK (through the method registry): checkpoints of both phases load
(``weights_only=True``); images and videos go through detection, cropping, the encoders, FLAME, the renderer and
the translator into OBJ/npz/json/png/mp4 files; bad inputs are reported and skipped; configuration errors are one
clear line with exit code 2.

Most tests inject a stub detector (MTCNN rarely finds the synthetic renders' faces); one runs the whole command
with the real MTCNN and mediapipe on a real photo (scikit-image's astronaut)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from facelab.cli.main import main
from facelab.cli.reconstruct import FaceCropper, ReconstructOptions, run_reconstruct, smooth_sequence
from facelab.data.detect import Detections
from facelab.data.synthetic import SyntheticFaceDataset, SyntheticFaceSample
from facelab.data.video import probe_video
from facelab.errors import AssetFormatError, MissingAssetError
from facelab.io.obj import read_obj
from facelab.morphable import FlameParams
from facelab.reconstruction import Reconstructor, encoding_from_arrays, encoding_to_arrays, region_topology
from smirk.inference import SmirkReconstructor
from smirk.module import SmirkModule
from smirk.networks import SmirkGenerator

cv2 = pytest.importorskip("cv2")

SIZE, N_EXP, IMAGE = 64, 20, 64


def tiny_module(phase: str) -> SmirkModule:
    torch.manual_seed(0)
    generator = SmirkGenerator(channels=(8, 16, 32, 64), bottleneck_channels=64, n_res_blocks=1)
    return SmirkModule(phase=phase, image_size=SIZE, n_expression=N_EXP,
                       generator=generator if phase == "core" else None, log_images_every_n_steps=0)


@pytest.fixture(scope="module")
def samples() -> list[SyntheticFaceSample]:
    return SyntheticFaceDataset(num_samples=3, image_size=IMAGE, uv_size=32, seed=3).generate([0, 1, 2])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, samples) -> dict[str, Path]:
    """A pretraining checkpoint written as a plain dict and a core-phase one saved by a Lightning Trainer."""
    root = tmp_path_factory.mktemp("ckpt")
    pretrain = tiny_module("pretrain")
    torch.save({"state_dict": pretrain.state_dict(), "hyper_parameters": dict(pretrain.hparams)},
               root / "pretrain.ckpt")
    core = tiny_module("core")
    batch = SyntheticFaceSample.collate(samples[:2])
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(core, DataLoader([batch], batch_size=None))
    trainer.save_checkpoint(root / "core.ckpt")
    torch.save(pretrain.encoder.state_dict(), root / "encoder.pt")
    return {"pretrain": root / "pretrain.ckpt", "core": root / "core.ckpt", "encoder": root / "encoder.pt"}


@pytest.fixture(scope="module")
def core(checkpoints) -> SmirkReconstructor:
    return SmirkReconstructor.from_checkpoint(checkpoints["core"], translate=True)


def face_box(sample: SyntheticFaceSample, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The bounding box of a synthetic face's 68 landmarks, shifted by ``offset`` pixels."""
    pts = sample.landmarks68_pix.numpy()
    box = np.concatenate([pts.min(0), pts.max(0)])
    return (box + np.tile(offset, 2)).astype(np.float32)


class StubDetector:
    """Returns known boxes (a callable per image, or fixed boxes), like :class:`FaceDetector`."""

    def __init__(self, boxes):
        self.boxes = boxes

    def __call__(self, image: np.ndarray) -> Detections:
        boxes = np.asarray(self.boxes(image) if callable(self.boxes) else self.boxes, np.float32).reshape(-1, 4)
        n = len(boxes)
        return Detections(boxes, np.zeros((n, 5, 2), np.float32), np.ones(n, np.float32))


def to_uint8(sample: SyntheticFaceSample) -> np.ndarray:
    return (sample.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def cropper_for(boxes, reconstructor: SmirkReconstructor) -> FaceCropper:
    return FaceCropper(StubDetector(boxes), reconstructor.image_size, scale=1.6, landmarker=None, min_face=8)


# ------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------------------------


def test_both_phases_and_bare_encoder_load_weights_only(checkpoints, core):
    for name, phase, translator in (("pretrain", "pretrain", False), ("encoder", "encoder", False)):
        model = SmirkReconstructor.from_checkpoint(checkpoints[name], image_size=SIZE)
        assert (model.phase, model.has_translator, model.flame.n_expression) == (phase, translator, N_EXP)
    assert (core.phase, core.has_translator, core.image_size) == ("core", True, SIZE)
    assert isinstance(core, Reconstructor) and core.model is core.flame and set(core.meshes) == {"head", "face"}
    assert not core.training and not core.encoder.training and not core.generator.training
    raw = torch.load(checkpoints["core"], weights_only=True)  # no arbitrary unpickling needed
    for prefix, module in (("encoder.", core.encoder), ("generator.", core.generator)):
        for key, value in module.state_dict().items():
            torch.testing.assert_close(value, raw["state_dict"][prefix + key])


def test_mismatched_n_expression_is_a_clear_error(checkpoints, tmp_path, capsys):
    raw = torch.load(checkpoints["pretrain"], weights_only=True)
    raw["hyper_parameters"]["n_expression"] = 50
    bad = tmp_path / "bad.ckpt"
    torch.save(raw, bad)
    with pytest.raises(AssetFormatError, match=r"n_expression=50 is in its hyper_parameters.*n_expression=20"):
        SmirkReconstructor.from_checkpoint(bad)
    with pytest.raises(AssetFormatError, match="n_expression=10 was asked for"):
        SmirkReconstructor.from_checkpoint(checkpoints["pretrain"], n_expression=10)
    image = tmp_path / "in" / "x.png"
    image.parent.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    code = main(["reconstruct", "--method", "smirk", "--ckpt", str(bad), "--input", str(image), "--out",
                 str(tmp_path / "out"), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("facelab reconstruct: error:") and "n_expression" in err
    assert "Traceback" not in err


def test_missing_and_unreadable_checkpoints_name_the_flag(checkpoints, tmp_path, capsys):
    image = tmp_path / "in" / "x.png"
    image.parent.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    args = ["reconstruct", "--method", "smirk", "--input", str(image), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main([*args, "--ckpt", str(tmp_path / "missing.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "SMIRK checkpoint not found" in err and "--ckpt" in err and "missing.ckpt" in err
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    assert main([*args, "--ckpt", str(junk)]) == 2
    assert "weights_only=True" in capsys.readouterr().err
    assert main([*args, "--ckpt", str(checkpoints["pretrain"]), "--translator"]) == 2
    assert "--translator needs a checkpoint with the translator" in capsys.readouterr().err
    assert main([*args, "--ckpt", str(checkpoints["core"]), "--translater"]) == 2  # a typo of a method option
    err = capsys.readouterr().err
    assert "unrecognized arguments: --translater" in err and "--translator" in err
    assert not (tmp_path / "out").exists()
    raw = torch.load(checkpoints["pretrain"], weights_only=True)
    raw["hyper_parameters"]["flame_path"] = str(tmp_path / "cluster" / "generic_model.pkl")
    moved = tmp_path / "moved.ckpt"
    torch.save(raw, moved)
    with pytest.raises(MissingAssetError, match="pass --model-path PATH"):
        SmirkReconstructor.from_checkpoint(moved)
    assert SmirkReconstructor.from_checkpoint(moved, flame_path="synthetic").flame.n_expression == N_EXP


# ------------------------------------------------------------------------------------------------------------------
# The reconstructor
# ------------------------------------------------------------------------------------------------------------------


def test_face_region_topology_reindexes_vertices_and_uvs(core):
    flame, face = core.flame, core.face_topology
    face_ids = flame.region_faces("face")
    assert len(face.faces) == len(face_ids) < flame.num_faces and len(face.vertex_ids) < flame.num_verts
    assert torch.equal(face.vertex_ids[face.faces], flame.faces[face_ids])
    torch.testing.assert_close(face.uv[face.faces_uv], flame.uv[flame.faces_uv[face_ids]])
    head = region_topology(flame)
    assert torch.equal(head.faces, flame.faces) and len(head.vertex_ids) == flame.num_verts


def test_decode_is_deterministic_and_falls_back_to_predicted_landmarks(core, samples):
    crops = torch.stack([s.image for s in samples[:2]])
    hull = torch.zeros(2, 1, SIZE, SIZE)
    hull[0, :, 10:50, 12:52] = 1  # face 0 has a landmark hull, face 1 none (all zero)
    first = core.reconstruct(crops, face_hull=hull)
    second = core.reconstruct(crops, face_hull=hull)
    torch.testing.assert_close(first.translated, second.translated)
    torch.testing.assert_close(first.masked_image, second.masked_image)
    assert first.translated.shape == (2, 3, SIZE, SIZE) and first.overlay.shape == (2, 3, SIZE, SIZE)
    assert set(first.extra_images) == {"translator"} and not core.reconstruct(crops, translate=False).extra_images
    hole = (first.masked_image == 0).all(1)  # the hull (dilated by 10 px) is hidden, plus the render
    assert hole[0, 30, 30] and hole[1].any() and not hole.all()
    pretrain_like = SmirkReconstructor(core.encoder, core.flame, None, image_size=SIZE)
    with pytest.raises(ValueError, match="core-phase"):
        pretrain_like.reconstruct(crops, translate=True)
    with pytest.raises(ValueError, match="--translator needs"):
        SmirkReconstructor(core.encoder, core.flame, None, image_size=SIZE, translate=True)
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        core.encode(crops[:, :, :32])


def test_smooth_sequence():
    ramp = np.arange(10.0)[:, None] * np.ones((1, 3))
    torch.testing.assert_close(smooth_sequence(ramp, 5)[2:-2], ramp[2:-2])  # linear motion is kept
    assert smooth_sequence(ramp, 5)[0, 0] == pytest.approx(1.0)  # (0 + 1 + 2) / 3 at the edge
    np.testing.assert_array_equal(smooth_sequence(ramp, 1), ramp)
    noise = np.random.default_rng(0).normal(size=(50, 4))
    assert np.diff(smooth_sequence(noise, 5), axis=0).var() < 0.2 * np.diff(noise, axis=0).var()


# ------------------------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------------------------


def test_images_write_meshes_params_and_overlays(core, samples, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    left, right = to_uint8(samples[0]), to_uint8(samples[1])
    small = np.array(Image.fromarray(right).resize((IMAGE // 2, IMAGE // 2)))
    canvas = np.zeros((IMAGE, IMAGE + IMAGE // 2, 3), np.uint8)
    canvas[:, :IMAGE], canvas[:IMAGE // 2, IMAGE:] = left, small
    Image.fromarray(canvas).save(inputs / "two.png")
    boxes = [face_box(samples[1]) / 2 + np.array([IMAGE, 0, IMAGE, 0], np.float32), face_box(samples[0])]
    out = tmp_path / "out"
    options = ReconstructOptions(batch_size=1)  # one face per network call
    report = run_reconstruct([inputs], out, core, options, cropper_for(boxes, core))
    assert report["faces"] == 2 and not report["skipped"]
    names = {p.name for p in out.iterdir()}
    for k in (0, 1):
        for suffix in ("head.obj", "face.obj", "params.npz", "params.json", "overlay.png", "translator.png"):
            assert f"two_face{k}_{suffix}" in names
    assert "two_overlay.png" in names
    assert Image.open(out / "two_overlay.png").size == (canvas.shape[1], canvas.shape[0])
    assert Image.open(out / "two_face0_overlay.png").size == (SIZE, SIZE)

    flame = core.flame
    head, face = read_obj(out / "two_face0_head.obj"), read_obj(out / "two_face0_face.obj")
    assert head.verts.shape == (flame.num_verts, 3) and head.faces.shape == (flame.num_faces, 3)
    np.testing.assert_array_equal(head.faces, flame.faces.numpy())
    assert len(head.uv) == len(flame.uv) and head.faces_uv.shape == head.faces.shape
    assert len(face.faces) < len(head.faces) and len(face.verts) < len(head.verts) and len(face.uv) > 0
    np.testing.assert_allclose(face.verts, head.verts[core.face_topology.vertex_ids.numpy()])

    params = np.load(out / "two_face0_params.npz")
    doc = json.loads((out / "two_face0_params.json").read_text())
    # the FlameParams fields SMIRK predicts (neck and eye poses are None, so not written) and the camera's fields
    keys = ("identity", "expression", "jaw_pose", "eyelids", "global_pose", "camera_scale", "camera_translation")
    assert set(keys) <= set(params) and "neck_pose" not in params and "eye_pose" not in params
    for key in (*keys, "crop_matrix", "box"):
        np.testing.assert_allclose(params[key], np.asarray(doc[key]), rtol=1e-6)
    assert "Weak perspective" in doc["conventions"] and doc["method"] == "smirk" and doc["family"] == "flame"
    assert params["expression"].shape == (N_EXP,) and doc["face"] == 0 and doc["crop_method"] == "box"
    np.testing.assert_allclose(params["box"], boxes[1], atol=1e-4)  # face0 is the larger face
    back = params["crop_to_image"] @ np.append(params["crop_matrix"] @ [10.0, 20.0, 1.0], 1.0)
    np.testing.assert_allclose(back, [10.0, 20.0], atol=1e-6)

    # the parameters rebuild the written mesh, and the arrays round-trip through the encoding
    like = core.encode(torch.stack([samples[0].image]))
    encoding = encoding_from_arrays({k: params[k][None] for k in keys}, like)
    assert isinstance(encoding.params, FlameParams) and encoding.camera.depth_offset == like.camera.depth_offset
    with torch.no_grad():
        verts = core.flame(encoding.params).verts[0].numpy()
    np.testing.assert_allclose(head.verts, verts, atol=1e-6)
    again = encoding_to_arrays(encoding)
    assert set(again) == set(keys) and all(np.array_equal(again[k][0], params[k]) for k in keys)


def test_bad_files_and_faceless_images_are_skipped(core, samples, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(to_uint8(samples[2])).save(inputs / "face.png")
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(inputs / "gray.png")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    box = face_box(samples[2])
    detector_boxes = lambda image: [] if image.std() == 0 else [box]  # noqa: E731 - no face in the flat image
    report = run_reconstruct([inputs], tmp_path / "out", core, ReconstructOptions(),
                             cropper_for(detector_boxes, core))
    err = capsys.readouterr().err
    assert report["faces"] == 1 and [Path(r["input"]).name for r in report["reconstructed"]] == ["face.png"]
    reasons = {Path(s["input"]).name: s["reason"] for s in report["skipped"]}
    assert reasons["gray.png"] == "no_face" and reasons["broken.jpg"] in ("corrupt", "not_an_image")
    assert "no face found in" in err and "gray.png" in err and "broken.jpg" in err
    assert json.loads((tmp_path / "out" / "report.json").read_text())["faces"] == 1
    pretrain_like = SmirkReconstructor(core.encoder, core.flame, None, image_size=SIZE)  # no translator outputs
    plain = run_reconstruct([inputs / "face.png"], tmp_path / "out2", pretrain_like, ReconstructOptions(),
                            cropper_for([box], core))
    assert [Path(o).name for o in plain["reconstructed"][0]["outputs"]] == [
        "face_face0_head.obj", "face_face0_face.obj", "face_face0_params.npz", "face_face0_params.json",
        "face_face0_overlay.png", "face_overlay.png"]


# ------------------------------------------------------------------------------------------------------------------
# Video
# ------------------------------------------------------------------------------------------------------------------


def write_video(path: Path, sample: SyntheticFaceSample, frames: int, fps: float = 10.0) -> list[np.ndarray]:
    """A jittering synthetic face with per-frame noise (mp4v)."""
    rng = np.random.default_rng(0)
    base, shots = to_uint8(sample).astype(np.float64), []
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (IMAGE, IMAGE))
    for t in range(frames):
        frame = np.roll(base, (t % 3) - 1, axis=1) + rng.normal(0, 12, base.shape)
        shots.append(np.clip(frame, 0, 255).astype(np.uint8))
        writer.write(cv2.cvtColor(shots[-1], cv2.COLOR_RGB2BGR))
    writer.release()
    return shots


def test_video_sequence_overlay_and_smoothing(core, samples, tmp_path):
    video = tmp_path / "in" / "clip.mp4"
    video.parent.mkdir()
    frames = 7
    write_video(video, samples[0], frames)
    rng = np.random.default_rng(1)
    box = face_box(samples[0])
    jitter = lambda image: [box + rng.normal(0, 2.0, 4).astype(np.float32)]  # noqa: E731 - a noisy detector
    raw = run_reconstruct([video], tmp_path / "raw", core, ReconstructOptions(batch_size=4, save_meshes=True),
                          cropper_for(jitter, core))
    plain = SmirkReconstructor(core.encoder, core.flame, core.generator, image_size=SIZE)  # translate=False
    smooth = run_reconstruct([video], tmp_path / "smooth", plain, ReconstructOptions(batch_size=4, smooth=5),
                             cropper_for(jitter, core))
    assert raw["faces"] == smooth["faces"] == frames
    for out in (tmp_path / "raw", tmp_path / "smooth"):
        info = probe_video(out / "clip_overlay.mp4")
        assert (info.num_frames, info.width, info.height) == (frames, IMAGE, IMAGE)
    assert probe_video(tmp_path / "raw" / "clip_translator.mp4").num_frames == frames
    assert not (tmp_path / "smooth" / "clip_translator.mp4").exists()
    assert read_obj(tmp_path / "raw" / "clip_frame000006_face.obj").faces.shape == core.face_topology.faces.shape
    seq_raw = np.load(tmp_path / "raw" / "clip_params.npz")
    seq_smooth = np.load(tmp_path / "smooth" / "clip_params.npz")
    np.testing.assert_array_equal(seq_raw["frames"], np.arange(frames))
    assert seq_raw["expression"].shape == (frames, N_EXP) and seq_raw["crop_matrix"].shape == (frames, 2, 3)
    assert float(seq_raw["fps"]) == pytest.approx(10.0, rel=1e-3) and int(seq_smooth["smooth_window"]) == 5

    def roughness(seq) -> float:
        keys = ("expression", "global_pose", "camera_scale", "camera_translation", "identity")
        return float(np.mean([np.diff(seq[k], axis=0).var() for k in keys]))

    assert roughness(seq_smooth) < 0.5 * roughness(seq_raw)


# ------------------------------------------------------------------------------------------------------------------
# The whole command with the real detector
# ------------------------------------------------------------------------------------------------------------------


def test_cli_real_photo_with_mtcnn_and_mediapipe(checkpoints, tmp_path, capsys):
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip("facenet_pytorch")
    inputs = tmp_path / "in"
    inputs.mkdir()
    photo = np.array(Image.fromarray(skimage_data.astronaut()[:320, 90:410]).resize((200, 200)))
    Image.fromarray(photo).save(inputs / "astronaut.jpg", quality=92)
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(inputs / "gray.png")
    (inputs / "text.png").write_text("definitely not a PNG")
    out = tmp_path / "out"
    code = main(["reconstruct", "--method", "smirk", "--ckpt", str(checkpoints["core"]), "--input", str(inputs),
                 "--out", str(out), "--device", "cpu", "--translator", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err and f"no face found in {inputs / 'gray.png'}" in err and "text.png" in err
    doc = json.loads((out / "astronaut_face0_params.json").read_text())
    assert doc["crop_method"] in ("landmarks", "box") and doc["score"] > 0.9
    for name in ("astronaut_face0_head.obj", "astronaut_face0_face.obj", "astronaut_face0_translator.png",
                 "astronaut_overlay.png"):
        assert (out / name).is_file()
    # a face near the MTCNN box: the crop maps the box centre into the middle of the crop
    centre = np.append(0.5 * (np.asarray(doc["box"][:2]) + np.asarray(doc["box"][2:])), 1.0)
    assert np.abs(np.asarray(doc["crop_matrix"]) @ centre - SIZE / 2).max() < 0.15 * SIZE

    # nothing reconstructed at all: exit code 1
    assert main(["reconstruct", "--method", "smirk", "--ckpt", str(checkpoints["pretrain"]), "--input",
                 str(inputs / "gray.png"), "--out", str(tmp_path / "none"), "--device", "cpu", "--no-progress"]) == 1
    assert "nothing was reconstructed" in capsys.readouterr().err
