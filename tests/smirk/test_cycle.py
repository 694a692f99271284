"""SMIRK's augmented expression cycle path (reference "cycle path"): groups, jitter, templates, transfer pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facelab.data.wrinkles import ACTION_CHANNELS, ActionUnitMap
from facelab.errors import AssetFormatError, MissingAssetError
from facelab.morphable import FlameParams
from facelab.morphable.synthetic import synthetic_asset_dir
from smirk.cycle import (
    AUGMENTATION_GROUPS,
    FAMOS_TEMPLATE_NAMES,
    ExpressionTemplates,
    augment_expressions,
    build_templates,
    jitter_eyelids,
    jitter_jaw,
    permute_expression,
    random_expression,
    read_expression_fits,
    synthetic_templates,
    template_expression,
    transfer_pixels,
    zero_expression,
)
from smirk.masking import MeshPoints
from smirk.module import SmirkModule
from smirk.networks import SmirkGenerator


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


def test_read_expression_fits_pools_classes_over_subjects(tmp_path):
    for subject in ("s1", "s2"):
        (tmp_path / subject).mkdir()
        np.save(tmp_path / subject / "kissing.npy", np.ones((2, 50), np.float32))
    np.savez(tmp_path / "s1" / "jaw.npz", expression=np.zeros(50, np.float32), jaw=np.array([0.2, 0.0, 0.0]))
    templates = read_expression_fits(tmp_path)
    assert templates.names == ("jaw", "kissing") and templates.expression.shape == (5, 50)
    assert templates.of("kissing").shape == (4, 50) and templates.jaw[0].tolist() == pytest.approx([0.2, 0, 0])
    np.savez(tmp_path / "s2" / "bad.npz", exp=np.zeros(50))
    with pytest.raises(AssetFormatError, match="expression"):
        read_expression_fits(tmp_path)
    with pytest.raises(MissingAssetError, match="no expression fits"):
        read_expression_fits(tmp_path / "s3")


def test_synthetic_templates_cover_the_famos_classes(tmp_path):
    templates = synthetic_templates(50)
    assert templates.names == FAMOS_TEMPLATE_NAMES and len(templates) == 13  # mouth_side: left and right
    assert templates.expression.shape == (13, 50) and templates.jaw.shape == (13, 3)
    assert templates.eyelids.shape == (13, 2)
    assert torch.count_nonzero(templates.expression[:, 28:]) == 0  # only the head's named components
    assert (templates.expression.abs().amax(dim=1) >= 1.5).all()  # strong, like the world's N(0, 1) draws
    templates.save(tmp_path / "t.npz")
    assert torch.equal(ExpressionTemplates.load(tmp_path / "t.npz").expression, templates.expression)
    assert synthetic_templates(100, classes=("jaw", "kissing")).names == ("jaw", "kissing")
    with pytest.raises(ValueError, match="at least 28"):
        synthetic_templates(20)
    with pytest.raises(ValueError, match="subset"):
        synthetic_templates(50, classes=("yawn",))


def test_synthetic_templates_act_out_their_classes(flame):
    """Read back through the synthetic world's own action-unit map and the FLAME geometry."""
    templates = synthetic_templates(flame.n_expression)
    au_map = ActionUnitMap.for_model(flame, synthetic=True)
    channels = au_map.channels(templates.expression, templates.jaw)

    def strength(name: str, *channel_names: str) -> float:
        rows = channels[templates.labels == templates.names.index(name)]
        return float(rows[:, [ACTION_CHANNELS.index(c) for c in channel_names]].mean())

    assert strength("high_smile", "AU12_L", "AU12_R") > 0.8
    assert strength("kissing", "AU18") > 0.8
    assert strength("lips_back", "AU20") > 0.8
    assert strength("rolling_lips", "AU23") > 0.8
    assert strength("mouth_down", "AU15_L", "AU15_R") > 0.8
    assert strength("jaw", "AU26") > 0.5 and strength("jaw", "AU25") > 0.8

    n = len(templates)
    zero = torch.zeros(n, flame.n_shape)
    with torch.no_grad():
        neutral = flame(FlameParams(identity=zero, expression=torch.zeros(n, flame.n_expression)))
        acted = flame(FlameParams(identity=zero, expression=templates.expression))
        with_jaw = flame(FlameParams(identity=zero, expression=templates.expression, jaw_pose=templates.jaw))
    jaw = templates.names.index("jaw")
    row = int((templates.labels == jaw).nonzero()[0])

    def lip_gap(mesh) -> float:  # iBUG 62 / 66: inner upper / lower lip middle (metres, +y up)
        return float(mesh.landmarks68[row, 62, 1] - mesh.landmarks68[row, 66, 1])

    # the expression alone parts the lips (what the cycle path injects); the template's jaw opens the mouth
    assert lip_gap(acted) > lip_gap(neutral) + 1e-3 and lip_gap(with_jaw) > lip_gap(neutral) + 1e-2
    side = (templates.labels == templates.names.index("mouth_side")).nonzero()[:, 0]
    mouth = slice(48, 68)
    shift = (acted.landmarks68[side, mouth, 0] - neutral.landmarks68[side, mouth, 0]).mean(dim=1)
    assert shift[0] > 1e-3 and shift[1] < -1e-3  # to the subject's left (+x), then right


def _core_module(**kwargs) -> SmirkModule:
    generator = SmirkGenerator(channels=(8, 16, 32, 64), bottleneck_channels=64, n_res_blocks=1)
    return SmirkModule(phase="core", image_size=32, generator=generator, **kwargs)


def test_module_uses_synthetic_templates_only_with_the_synthetic_flame(capsys):
    module = _core_module(flame_path="synthetic", templates_path="synthetic")
    assert module.cycle_groups == AUGMENTATION_GROUPS
    assert module.templates.shape == (13, 50)
    assert torch.equal(module.templates, synthetic_templates(50).expression)
    # the same model read from its folder counts as a user's FLAME: the synthetic components mean nothing there
    folder = str(synthetic_asset_dir("flame"))
    with pytest.raises(ValueError, match="templates_path"):
        _core_module(flame_path=folder, templates_path="synthetic")
    capsys.readouterr()
    module = _core_module(flame_path=folder, templates_path=None)
    assert module.cycle_groups == ("random", "permutation", "zero") and module.templates.shape == (0, 50)
    err = capsys.readouterr().err
    assert "WARNING" in err and "template-injection augmentation group is dropped" in err


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


def test_templates_from_facelab_fit_folders(tmp_path, capsys):
    """`facelab prepare --method smirk` turns `facelab fit --model flame` output (one folder per class) into the
    template file of model.init_args.templates_path (issue 9: real FLAME had no way to get templates)."""
    from facelab.cli.main import main
    from smirk.cycle import ExpressionTemplates

    rng = np.random.default_rng(0)
    for cls, n in (("high_smile", 2), ("kissing", 1)):
        for i in range(n):
            folder = tmp_path / "fits" / cls
            folder.mkdir(parents=True, exist_ok=True)
            np.savez(folder / f"img{i}_params.npz", identity=rng.normal(size=300).astype(np.float32),
                     expression=rng.normal(size=50).astype(np.float32), jaw_pose=np.full(3, 0.1 * (i + 1), np.float32),
                     rotation=np.zeros(3, np.float32), camera=np.ones(3, np.float32))
    out = tmp_path / "templates.npz"
    assert main(["prepare", "--method", "smirk", "--fits", str(tmp_path / "fits"), "--out", str(out)]) == 0
    assert "3 template rows of 50 components in 2 classes (high_smile 2, kissing 1)" in capsys.readouterr().out
    templates = ExpressionTemplates.load(out)
    assert templates.names == ("high_smile", "kissing") and templates.expression.shape == (3, 50)
    assert torch.allclose(templates.jaw[:2, 0], torch.tensor([0.1, 0.2]))
    assert main(["prepare", "--method", "smirk", "--fits", str(tmp_path / "fits"), "--out", str(out)]) == 2
    assert "exists; give --force" in capsys.readouterr().err
    missing = ["--fits", str(tmp_path / "none"), "--out", str(tmp_path / "b.npz")]
    assert main(["prepare", "--method", "smirk", *missing]) == 2
    assert "no expression fits" in capsys.readouterr().err and not (tmp_path / "b.npz").exists()
