"""SMIRK's augmented expression cycle path (reference "cycle path"): groups, jitter, templates, transfer pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facelab.errors import MissingAssetError
from smirk.cycle import (
    AUGMENTATION_GROUPS,
    ExpressionTemplates,
    augment_expressions,
    build_templates,
    jitter_eyelids,
    jitter_jaw,
    permute_expression,
    random_expression,
    template_expression,
    transfer_pixels,
    zero_expression,
)
from smirk.masking import MeshPoints


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def estimates():
    g = gen(0)
    return torch.randn(16, 50, generator=g), torch.rand(16, 3, generator=g) * 0.2, torch.rand(16, 2, generator=g)


def test_random_group_perturbs_about_half_and_clamps(estimates):
    exp = estimates[0]
    out = random_expression(exp, gen(1))
    assert out.shape == exp.shape
    assert out.abs().max() <= 4.0 + 0.2 * 6  # clamp, then at most 0.2u * |randn| on top
    moved = ((out - exp).abs() > 0.3).float().mean()
    assert 0.25 < moved < 0.75


def test_permutation_group_uses_other_rows(estimates):
    exp = estimates[0]
    out = permute_expression(exp, gen(2))
    # each output row is (0.25..1.5) x some input row + small noise: best-matching correlation is high
    corr = torch.corrcoef(torch.cat([out, exp]))[:16, 16:]
    assert (corr.max(dim=1).values > 0.7).all()


def test_template_group_uses_a_template():
    templates = torch.eye(4, 50) * 3.0
    out = template_expression(templates, 32, gen(3))
    assert out.shape == (32, 50)
    best = out[:, :4].abs().argmax(dim=1)
    # the injected template dominates: 3 * (0.25..1.5) on its axis against noise of std <= 0.2
    assert (out[torch.arange(32), best].abs() > 0.5).all()
    assert (out[:, 4:].abs().max() < 1.2)


def test_zero_group():
    exp, jaw, lids = zero_expression(torch.randn(8, 50), torch.rand(8, 2), gen(4))
    assert exp.shape == (8, 50) and exp.abs().max() < 0.2 * 6
    assert torch.count_nonzero(jaw) == 0 and jaw.shape == (8, 3)
    assert ((lids >= 0) & (lids <= 1)).all()


def test_jaw_and_eyelid_jitter():
    jaw = torch.zeros(4000, 3)
    out = jitter_jaw(jaw, gen(5))
    assert ((out[:, 0] >= 0) & (out[:, 0] <= 0.5)).all()
    changed = (out != 0).any(dim=1).float().mean()
    assert 0.45 < changed < 0.55  # p = 0.5 per sample
    side = out[(out != 0).any(dim=1), 1:]
    assert abs(side.std().item() - 0.02) < 0.003  # 0.2 * 0.1
    lids = jitter_eyelids(torch.full((4000, 2), 0.5), gen(6))
    assert ((lids >= 0.25) & (lids <= 0.75)).all() and abs(lids.mean().item() - 0.5) < 0.01
    assert jitter_eyelids(torch.ones(10, 2), gen(7)).max() <= 1.0


def test_augment_expressions_groups(estimates):
    exp, jaw, lids = estimates
    templates = torch.randn(5, 50)
    out = augment_expressions(exp, jaw, lids, templates, gen(8))
    assert out.expression.shape == (16, 50) and out.jaw_pose.shape == (16, 3) and out.eyelids.shape == (16, 2)
    assert torch.equal(torch.bincount(out.group, minlength=4), torch.tensor([4, 4, 4, 4]))
    zero = out.group == AUGMENTATION_GROUPS.index("zero")
    assert torch.count_nonzero(out.jaw_pose[zero]) == 0
    assert ((out.eyelids >= 0) & (out.eyelids <= 1)).all()
    assert ((out.jaw_pose[:, 0] >= 0) & (out.jaw_pose[:, 0] <= 0.5)).all()
    assert out.expression[zero].abs().max() < 1.2
    assert not out.expression.requires_grad
    again = augment_expressions(exp, jaw, lids, templates, gen(8))
    assert torch.equal(again.expression, out.expression)  # one generator, one result


def test_augment_without_templates(estimates):
    with pytest.raises(ValueError, match="template"):
        augment_expressions(*estimates, templates=None, generator=gen(0))
    out = augment_expressions(*estimates, generator=gen(0), groups=("random", "permutation", "zero"))
    assert torch.equal(torch.bincount(out.group), torch.tensor([6, 5, 5]))


def test_templates_roundtrip(tmp_path):
    fits = {"high_smile": torch.randn(3, 50), "kissing": torch.randn(50)}
    templates = build_templates(fits, jaw={"high_smile": torch.rand(3, 3)})
    assert len(templates) == 4 and templates.names == ("high_smile", "kissing")
    assert torch.equal(templates.of("kissing"), fits["kissing"][None])
    assert torch.count_nonzero(templates.jaw[3]) == 0
    path = tmp_path / "templates.npz"
    templates.save(path)
    assert set(np.load(path, allow_pickle=False).files) == {"names", "labels", "expression", "jaw", "eyelids"}
    loaded = ExpressionTemplates.load(path)
    assert loaded.names == templates.names and torch.equal(loaded.expression, templates.expression)
    assert torch.equal(loaded.labels, templates.labels) and torch.equal(loaded.jaw, templates.jaw)
    assert loaded.expressions(20).shape == (4, 20) and loaded.expressions(60).shape == (4, 60)
    with pytest.raises(MissingAssetError, match="build_templates"):
        ExpressionTemplates.load(tmp_path / "missing.npz")


def test_transfer_pixels_moves_with_the_triangle():
    # one triangle; the destination mesh is the source shifted by (+7, +3) pixels
    verts_src = torch.tensor([[[4.0, 4.0], [20.0, 4.0], [4.0, 20.0]]])
    verts_dst = verts_src + torch.tensor([7.0, 3.0])
    faces = torch.tensor([[0, 1, 2]])
    image = torch.rand(1, 3, 32, 32, generator=gen(9))
    points = MeshPoints(face_idx=torch.zeros(1, 3, dtype=torch.long),
                        bary=torch.tensor([[[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]]]))
    moved, mask = transfer_pixels(image, points, verts_src, verts_dst, faces)
    assert mask.sum() == 3
    src = points.pixels(verts_src, faces).floor().long()[0]
    for u, v in src.tolist():
        torch.testing.assert_close(moved[0, :, v + 3, u + 7], image[0, :, v, u])
        assert mask[0, 0, v + 3, u + 7] == 1
    same, same_mask = transfer_pixels(image, points, verts_src, verts_src, faces)
    assert torch.equal(same * same_mask, image * same_mask)


def test_transfer_pixels_drops_points_leaving_the_image():
    verts = torch.tensor([[[1.0, 1.0], [5.0, 1.0], [1.0, 5.0]]])
    points = MeshPoints(torch.zeros(1, 1, dtype=torch.long), torch.tensor([[[1 / 3, 1 / 3, 1 / 3]]]))
    _, mask = transfer_pixels(torch.rand(1, 3, 8, 8), points, verts, verts + 50.0, torch.tensor([[0, 1, 2]]))
    assert mask.sum() == 0
