"""The PRNet UV weight mask on any layout: levels 16 / 4 / 3 / 0 where PRNet puts them."""

import pytest
import torch

from dualstream.uv_weights import LANDMARK_GROUPS, UVWeightLevels, UVWeightMask, uv_weight_mask, vertex_uv
from facelab.morphable import load_model
from facelab.uv import UVMapper


@pytest.fixture(scope="module")
def bfm():
    return load_model("bfm", "synthetic:tiny")


def test_levels_on_the_bfm_layout(bfm):
    mask = UVWeightMask.from_model(bfm, 64).mask
    assert mask.shape == (1, 1, 64, 64)
    assert set(mask.unique().tolist()) <= {0.0, 3.0, 4.0, 16.0}
    mapper = UVMapper(bfm.faces, bfm.uv, bfm.faces_uv, 64)
    assert torch.equal(mask > 0, mapper.mask > 0)  # every face texel weighted, nothing off the charts
    lmk_uv = vertex_uv(bfm.keypoints, mapper)
    cols = (lmk_uv[:, 0] * 64).long().clamp(0, 63)
    rows = ((1 - lmk_uv[:, 1]) * 64).long().clamp(0, 63)
    on_chart = mapper.mask[0, 0, rows, cols] > 0
    assert (mask[0, 0, rows, cols][on_chart] == 16).all()
    assert (mask == 3).sum() > (mask == 4).sum() > 0


def test_ratio_and_regions_on_a_square_layout():
    """A flat square of 2 triangles: features from the landmark hulls, zero faces are the neck."""
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    mapper = UVMapper(faces, uv, faces, 32)
    pts = torch.full((68, 2), 0.5)
    for k, ids in enumerate(LANDMARK_GROUPS.values()):
        centre = torch.tensor([[0.25, 0.75], [0.75, 0.75], [0.5, 0.5], [0.5, 0.25]])[k]
        ang = torch.linspace(0, 6.28, len(ids) + 1)[:-1]
        pts[list(ids)] = centre + 0.06 * torch.stack([ang.cos(), ang.sin()], 1)
    mask = uv_weight_mask(mapper, pts, levels=UVWeightLevels(16, 4, 3, 0))
    assert mask[0, 0, 31, 0] == 3  # corner: face only
    assert mask[0, 0, 8, 8] == 4  # inside the right-eye hull, away from its points
    assert mask.max() == 16
    neck = uv_weight_mask(mapper, pts, zero_faces=torch.tensor([0]))
    assert neck[0, 0, 31, 31] == 0 and neck[0, 0, 0, 0] == 3  # face 0 is the lower-right triangle


def test_bad_input(bfm):
    mapper = UVMapper(bfm.faces, bfm.uv, bfm.faces_uv, 16)
    with pytest.raises(ValueError, match="68"):
        uv_weight_mask(mapper, torch.zeros(5, 2))
    no_uv = load_model("bfm", "synthetic:tiny", uv_path=None)
    no_uv.keypoints = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="68 landmark"):
        UVWeightMask.from_model(no_uv, 16)
