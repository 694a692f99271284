"""ArcFace five-point alignment (insightface's norm_crop), ArcFace ONNX embeddings, FaceID distance."""

from __future__ import annotations

import math
import shutil
import warnings

import numpy as np
import pytest
import skimage.data
import torch
from insightface.utils import face_align
from torch import nn

from facelab.errors import AssetFormatError, MissingAssetError
from facelab.metrics import (
    ARCFACE_TEMPLATE,
    ArcFaceOnnx,
    FaceIDDistance,
    arcface_crop,
    arcface_crop_batch,
    arcface_transform,
    faceid_distance,
)

SIGMA = 3.0  # px: the blobs marking the five points in the source image


def _similarity(scale: float, angle_deg: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def _points_and_blobs(height: int = 240, width: int = 240) -> tuple[np.ndarray, list[np.ndarray]]:
    """Five image points (the template under a known similarity; the whole crop lies inside the image) and two
    float (H, W, 3) images whose channels hold one Gaussian blob per point (points 0-2 in the first, 3-4 in the
    second)."""
    m = _similarity(1.6, 15.0, (55.0, 12.0))
    points = ARCFACE_TEMPLATE.astype(np.float64) @ m[:, :2].T + m[:, 2]
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    images = [np.zeros((height, width, 3), np.float32), np.zeros((height, width, 3), np.float32)]
    for k, (px, py) in enumerate(points):
        images[k // 3][..., k % 3] = np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * SIGMA**2))
    return points.astype(np.float32), images


def _centroids(crops: list[np.ndarray]) -> np.ndarray:
    """(5, 2) intensity centroids of the five blobs in the crops (pixel-centre coordinates, as cv2 and insightface)."""
    yy, xx = np.mgrid[: crops[0].shape[0], : crops[0].shape[1]].astype(np.float64)
    out = []
    for k in range(5):
        w = crops[k // 3][..., k % 3].astype(np.float64)
        out.append([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
    return np.array(out)


def test_template_is_insightfaces():
    assert np.array_equal(ARCFACE_TEMPLATE, face_align.arcface_dst)


def test_norm_crop_puts_the_five_points_on_the_arcface_template():
    points, images = _points_and_blobs()
    crops = [arcface_crop(img, points) for img in images]
    assert crops[0].shape == (112, 112, 3)
    assert np.abs(_centroids(crops) - ARCFACE_TEMPLATE).max() < 0.1  # px
    # the fitted transform is the inverse of the one that placed the points
    m = arcface_transform(points)
    assert np.allclose(points @ m[:, :2].T + m[:, 2], ARCFACE_TEMPLATE, atol=1e-3)


def test_batched_tensor_crop_matches_norm_crop():
    points, images = _points_and_blobs()
    tensors = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # two images, same points
    crops = arcface_crop_batch(tensors, torch.from_numpy(np.stack([points, points])))
    assert crops.shape == (2, 3, 112, 112)
    ours = [c.permute(1, 2, 0).numpy() for c in crops]
    assert np.abs(_centroids(ours) - ARCFACE_TEMPLATE).max() < 0.1
    ref = [arcface_crop(img, points) for img in images]
    assert max(np.abs(a - b).max() for a, b in zip(ours, ref)) < 0.01  # blobs peak at 1: within cv2's fixed point

    # on a photo (uint8): cv2 rounds its output (0.25 grey levels on average) and quantizes the sampling position
    # to 1/32 pixel (a few levels at sharp edges); otherwise the two crops are the same
    photo = skimage.data.astronaut()[40:280, 150:390].copy()
    ref = arcface_crop(photo, points).astype(np.float64)
    ours = arcface_crop_batch(torch.from_numpy(photo).permute(2, 0, 1)[None].double(), torch.from_numpy(points[None]))
    diff = np.abs(ours[0].permute(1, 2, 0).numpy() - ref)
    assert diff.mean() < 0.3 and diff.max() < 4.0


def test_crops_check_their_points():
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        arcface_crop(np.zeros((64, 64, 3), np.uint8), np.zeros((68, 2)))
    with pytest.raises(ValueError, match=r"\(B, 5, 2\)"):
        arcface_crop_batch(torch.zeros(2, 3, 64, 64), torch.zeros(1, 5, 2))


class TinyRecognizer(nn.Module):
    """A 112x112 'recognition model' small enough to export: strided conv, flatten, linear to 16 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=8, stride=8)
        self.fc = nn.Linear(4 * 14 * 14, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def _export(module: nn.Module, path, size: int = 112) -> None:
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; it needs no onnxscript (offline)
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.rand(1, 3, size, size),), str(path), dynamo=False, input_names=["data"],
                          output_names=["embedding"], dynamic_axes={"data": {0: "batch"}, "embedding": {0: "batch"}})


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    net = TinyRecognizer().eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny_arcface.onnx"
    _export(net, path)
    return net, path


def test_arcface_onnx_runs_the_model_with_insightfaces_normalization(tiny_onnx):
    net, path = tiny_onnx
    model = ArcFaceOnnx(str(path))
    assert model.input_size == 112
    crops = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(2 * crops - 1)  # insightface: (255 x - 127.5) / 127.5
    got = model(crops)
    assert got.shape == (3, 16) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-4)
    with pytest.raises(ValueError, match="aligned crops"):
        model(torch.rand(1, 3, 64, 64))


def test_arcface_model_pack_folder_and_missing_model(tiny_onnx, tmp_path):
    _, path = tiny_onnx
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    with pytest.raises(MissingAssetError, match="w600k_r50.onnx"):
        ArcFaceOnnx(str(pack))
    shutil.copy(path, pack / "w600k_r50.onnx")
    assert ArcFaceOnnx(str(pack)).path == pack / "w600k_r50.onnx"
    with pytest.raises(MissingAssetError, match="arcface_model") as err:
        ArcFaceOnnx(str(tmp_path / "absent.onnx"))
    assert "buffalo_l" in str(err.value)


def test_non_recognition_onnx_is_refused(tmp_path):
    small = tmp_path / "small.onnx"
    _export(nn.Sequential(nn.Conv2d(3, 2, 8, 8), nn.Flatten()), small, size=64)  # 64x64 input: not ArcFace
    with pytest.raises(AssetFormatError, match="ArcFace"):
        ArcFaceOnnx(str(small))


def test_faceid_distance_hand_computed():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [-1.0, -1.0], [5.0, 0.0]])
    assert torch.allclose(faceid_distance(a, b), torch.tensor([1.0, 2.0, 0.0]), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        faceid_distance(a, b[:2])


def test_faceid_distance_with_an_injected_embedder_and_five_point_crops():
    torch.manual_seed(0)
    embedder = TinyRecognizer().train()
    metric = FaceIDDistance(embedder=embedder)
    assert not embedder.training
    points, _ = _points_and_blobs()
    g = torch.Generator().manual_seed(2)
    pred, target = torch.rand(2, 3, 240, 240, generator=g), torch.rand(2, 3, 240, 240, generator=g)
    pts = torch.from_numpy(np.stack([points, points]))
    dist = metric(pred, target, pts)
    with torch.no_grad():
        expected = faceid_distance(embedder(arcface_crop_batch(pred, pts)), embedder(arcface_crop_batch(target, pts)))
    assert torch.allclose(dist, expected, atol=1e-6) and float(dist.min()) > 0
    assert torch.allclose(metric(pred, pred.clone(), pts), torch.zeros(2), atol=1e-6)


def test_faceid_distance_with_arcface_onnx(tiny_onnx):
    net, path = tiny_onnx
    metric = FaceIDDistance(arcface_model=str(path))
    g = torch.Generator().manual_seed(3)
    pred, target = torch.rand(2, 3, 112, 112, generator=g), torch.rand(2, 3, 112, 112, generator=g)
    with torch.no_grad():
        expected = faceid_distance(net(2 * pred - 1), net(2 * target - 1))
    assert torch.allclose(metric(pred, target), expected, atol=1e-5)


def test_faceid_without_a_network_says_where_to_get_one():
    with pytest.raises(MissingAssetError, match="arcface_model") as err:
        FaceIDDistance()
    assert "buffalo_l" in str(err.value)
