"""``facelab reconstruct --method dualstream``: checkpoint -> textured meshes, ASMs, parameters, overlays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dualstream.inference import DualStreamReconstructor
from dualstream.module import DualStreamModule
from facelab.cli.reconstruct import FaceCropper, ReconstructOptions, run_reconstruct
from facelab.data.detect import Detections
from facelab.errors import AssetFormatError, MissingAssetError
from facelab.reconstruction import Reconstructor

SIZE = 32
GEN = dict(generator_channels=(8, 16, 16, 16), region_level=2, stylize_levels=(2, 3))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    module = DualStreamModule(**GEN, geometry_args=dict(width=0.0625, decoder_width=0.0625), image_size=SIZE,
                              uv_size=SIZE, allow_random_init=True,
                              loss_weights={"pixel": 0.1, "identity": 0.0, "landmark": 0.01})
    path = tmp_path_factory.mktemp("ckpt") / "dualstream.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


class StubDetector:
    def __init__(self, boxes):
        self.boxes = boxes

    def __call__(self, image: np.ndarray) -> Detections:
        boxes = np.asarray(self.boxes(image), np.float32).reshape(-1, 4)
        return Detections(boxes, np.zeros((len(boxes), 5, 2), np.float32), np.ones(len(boxes), np.float32))


def test_reconstructor_protocol_and_outputs(checkpoint):
    rec = DualStreamReconstructor.from_checkpoint(checkpoint)
    assert isinstance(rec, Reconstructor) and rec.image_size == SIZE
    crops = torch.rand(2, 3, SIZE, SIZE)
    result = rec.decode(rec.encode(crops), crops)
    v = rec.num_verts
    assert result.verts.shape == (2, 2 * v, 3) and result.overlay.shape == (2, 3, SIZE, SIZE)
    assert set(result.extra_images) >= {"texture", "albedo_map", "asm_identity", "asm_expression"}
    assert result.extra_arrays["asm_identity"].shape == (2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="crops"):
        rec.encode(torch.rand(1, 3, 16, 16))


def test_bad_checkpoints(tmp_path):
    with pytest.raises(MissingAssetError):
        DualStreamReconstructor.from_checkpoint(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {"encoder.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(AssetFormatError, match="geometry / generator"):
        DualStreamReconstructor.from_checkpoint(tmp_path / "other.ckpt")


def test_facelab_reconstruct_writes_textured_meshes_and_skips_faceless_images(checkpoint, tmp_path):
    rec = DualStreamReconstructor.from_checkpoint(checkpoint)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(inputs / "face.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(inputs / "blank.png")
    boxes = lambda image: [[16, 16, 48, 48]] if image.max() > 0 else []  # noqa: E731
    cropper = FaceCropper(StubDetector(boxes), SIZE, scale=1.6, landmarker=None, min_face=8)
    out = tmp_path / "out"
    report = run_reconstruct([inputs], out, rec, ReconstructOptions(), cropper)
    assert report["faces"] == 1 and [s["reason"] for s in report["skipped"]] == ["no_face"]
    for name in ("full.obj", "full.mtl", "identity.obj", "texture.png", "asm_identity.npy", "asm_expression.npy",
                 "asm_identity.png", "asm_expression.png", "params.npz", "overlay.png"):
        assert (out / f"face_face0_{name}").is_file(), name
    assert "map_Kd face_face0_texture.png" in (out / "face_face0_full.mtl").read_text()
    assert "mtllib face_face0_full.mtl" in (out / "face_face0_full.obj").read_text()
    assert np.load(out / "face_face0_asm_expression.npy").shape == (3, SIZE, SIZE)
    params = np.load(out / "face_face0_params.npz")
    assert params["identity"].shape == (512,) and params["sh"].shape == (27,)
    json.loads((out / "face_face0_params.json").read_text())
