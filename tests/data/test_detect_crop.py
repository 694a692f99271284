"""MTCNN detection, crop matrices, warps and landmarks on a real portrait (skimage's astronaut)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facelab.data.crop import (
    crop_matrix,
    crop_params,
    invert_affine,
    normalize_points,
    paste_back,
    transform_points,
    unnormalize_points,
    warp_crop,
)

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def detections(astronaut):
    from facelab.data.detect import FaceDetector

    return FaceDetector()(astronaut)


def test_mtcnn_finds_astronaut(detections):
    assert len(detections) == 1 and detections.scores[0] > 0.99
    np.testing.assert_allclose(detections.boxes[0], [181, 62, 268, 172], atol=4)
    pts = detections.points[0]
    assert pts[0, 0] < pts[1, 0] and pts[2, 1] < pts[3, 1]  # left eye left of right eye; nose above mouth


def test_crop_keeps_whole_face(astronaut, detections):
    from facelab.data.landmarks import MediapipeFaceMesh

    box = torch.from_numpy(detections.boxes[0]).double()
    matrix = crop_params(box, 1.6, 224)
    src = torch.from_numpy(astronaut).permute(2, 0, 1)[None].double()
    crop = warp_crop(src, matrix[None], 224)[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
    with MediapipeFaceMesh() as mesh:
        lmk = mesh(crop)
        lmk_src = mesh(astronaut)
    assert lmk is not None and lmk.shape == (478, 2)
    assert lmk.min() > 10 and lmk.max() < 214  # the whole face mesh lies inside the 1.6 crop, with margin
    back = transform_points(torch.from_numpy(lmk).double(), invert_affine(matrix)).numpy()
    assert np.abs(back - lmk_src).mean() < 3.0  # same landmarks whether found in the crop or the full image


def test_five_point_and_rotated_crops(detections):
    pts = torch.from_numpy(detections.points[0]).double()
    m_box = crop_params(torch.from_numpy(detections.boxes[0]).double(), 1.6, 224)
    m_pts = crop_params(pts, 1.6, 224)
    assert abs(m_pts[0, 0] / m_box[0, 0] - 1) < 0.1  # similar face size from the 5 points as from the box
    angle = torch.tensor(0.3)
    rot = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    tilted = (pts - pts.mean(0)) @ rot.T.double() + pts.mean(0)
    eyes = transform_points(tilted, crop_params(tilted, 1.6, 224, rotate=True))[:2]
    assert abs(float(eyes[0, 1] - eyes[1, 1])) < 1e-6  # eye line levelled


def test_matrix_roundtrips():
    m = crop_matrix(torch.tensor([[100.0, 80.0]]), torch.tensor([50.0]), 64, torch.tensor([0.2]))
    p = torch.rand(1, 7, 2) * 200
    torch.testing.assert_close(transform_points(transform_points(p, m), invert_affine(m)), p)
    torch.testing.assert_close(transform_points(torch.tensor([[[100.0, 80.0]]]), m), torch.tensor([[[32.0, 32.0]]]))
    q = torch.rand(3, 5, 2) * 2 - 1
    torch.testing.assert_close(normalize_points(unnormalize_points(q, 224), 224), q)


def test_warp_and_paste_back_are_consistent():
    torch.manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 16, 16), size=(96, 128), mode="bilinear")
    m = crop_params(torch.tensor([[40.0, 20.0, 80.0, 60.0]]), 1.0, 40)  # exact 1:1 crop
    crop = warp_crop(image, m, 40)
    torch.testing.assert_close(crop, image[:, :, 20:60, 40:80])  # pixel-exact: half-pixel conventions agree
    pasted, cov = paste_back(crop, m, (96, 128))
    inside = cov[0, 0] > 0.999
    torch.testing.assert_close(pasted[..., inside], image[..., inside])
    assert int(inside.sum()) >= 38 * 38


def test_hull_mask():
    from facelab.data.landmarks import hull_mask

    square = np.array([[2.0, 2.0], [8.0, 2.0], [8.0, 8.0], [2.0, 8.0], [5.0, 5.0]])
    mask = hull_mask(square, (10, 10))
    # pixel centres inside the hull, grown by under one pixel so every pixel holding a landmark counts
    assert mask[2:8, 2:8].all() and 36 <= mask.sum() <= 64 and mask[0].sum() == 0 and mask[:, 0].sum() == 0
    assert mask[9].sum() == 0 and mask[:, 9].sum() == 0


def test_fan_missing_checkpoint_and_decoding(tmp_path):
    from facelab.data.landmarks import FanLandmarks, decode_heatmaps
    from facelab.errors import AssetFormatError, MissingAssetError

    with pytest.raises(MissingAssetError, match="--fan-checkpoint"):
        FanLandmarks(tmp_path / "2DFAN4.zip")
    torch.save({"w": torch.zeros(1)}, tmp_path / "state.pth")
    with pytest.raises(AssetFormatError, match="TorchScript"):
        FanLandmarks(tmp_path / "state.pth")
    hm = torch.zeros(1, 2, 8, 8)
    hm[0, 0, 3, 5] = 1.0
    hm[0, 0, 3, 6] = 0.5  # right neighbour larger: +0.25 in u
    hm[0, 1, 6, 1] = 1.0
    pts, peaks = decode_heatmaps(hm)
    torch.testing.assert_close(pts[0], torch.tensor([[5.75, 3.5], [1.5, 6.5]]))
    torch.testing.assert_close(peaks[0], torch.tensor([1.0, 1.0]))
