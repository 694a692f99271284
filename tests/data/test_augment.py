"""FaceAugment moves image, mask and landmarks together."""

from __future__ import annotations

import torch

from facelab.data.augment import FaceAugment
from facelab.data.crop import unnormalize_points


def test_landmarks_follow_bright_dots():
    torch.manual_seed(0)
    b, size = 6, 64
    pix = torch.tensor([[20.5, 30.5], [44.5, 16.5], [32.5, 48.5]]).expand(b, 3, 2).clone()
    image = torch.zeros(b, 3, size, size)
    for x, y in pix[0].long():
        image[:, :, y, x] = 1.0  # one bright pixel whose centre is at the landmark
    image = torch.nn.functional.avg_pool2d(image, 5, 1, 2) * 25 / 25  # small blob, centroid unchanged
    mask = image[:, :1].clone()
    points = 2 * pix / size - 1
    aug = FaceAugment(degrees=20, translate=0.1, scale=(0.8, 1.2), p_affine=1.0, p_color=0, p_gamma=0,
                      p_blur=0, p_noise=0)
    out, mask_out, (pts,) = aug(image, mask, [points])
    assert out.shape == image.shape and mask_out.shape == mask.shape and pts.shape == points.shape
    assert not torch.allclose(pts, points)
    assert (mask_out - out[:, :1]).abs().max() < 0.05  # same geometric transform on image and mask
    got = unnormalize_points(pts, size)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for i in range(b):
        for j in range(3):
            u, v = got[i, j]
            win = ((xs - u).abs() < 4) & ((ys - v).abs() < 4)
            w = out[i, 0] * win
            if w.sum() < 0.3:  # moved out of the crop
                continue
            centroid = torch.stack([(w * xs).sum(), (w * ys).sum()]) / w.sum()
            assert (centroid - got[i, j]).abs().max() < 0.6, (i, j, centroid, got[i, j])


def test_photometric_keeps_range_and_geometry():
    torch.manual_seed(1)
    image = torch.rand(4, 3, 32, 32)
    points = torch.rand(4, 10, 2) * 2 - 1
    aug = FaceAugment(p_affine=0.0, p_color=1.0, p_gamma=1.0, p_blur=1.0, p_noise=1.0)
    out, mask, (pts,) = aug(image, None, [points])
    assert mask is None and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, image)
    torch.testing.assert_close(pts, points)
