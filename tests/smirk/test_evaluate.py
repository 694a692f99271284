"""SMIRK evaluation: its metric functions against hand-computed values, the probe's re-rendering, ``facelab evaluate``.

The generic metrics SMIRK uses (landmark NME, per-vertex distances, the Table 2 summary) are tested in tests/metrics.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import facelab.metrics
import smirk.metrics
from facelab.cli.main import main
from facelab.data.synthetic import SyntheticFaceDataset, SyntheticFaceSample
from facelab.data.synthetic_module import SyntheticFaceDataModule
from smirk.data import FlameGroundTruth, as_smirk_batch
from smirk.evaluate import (
    ConstantExpression,
    ExpressionTweak,
    _TweakedFaces,
    evaluate_encoder,
    train_statistics,
)
from smirk.metrics import ExpressionVertexError, expression_mse, probe_statistics
from smirk.module import SmirkModule
from smirk.networks import SmirkEncoder

SIZE = 32  # tiny crops: the MobileNets' last feature map is 1x1


# ------------------------------------------------------------------------------------------------------ metrics
def test_generic_metrics_are_the_cores():
    """SMIRK's validation and ``facelab evaluate`` use the core's NME and vertex errors, not copies."""
    for name in ("landmark_nme", "vertex_distances", "vertex_error_stats", "VertexErrorStats"):
        assert getattr(smirk.metrics, name) is getattr(facelab.metrics, name)


def test_expression_mse_compares_the_models_components_only():
    pred = torch.zeros(2, 3)
    true = torch.tensor([[1.0, 2.0, 2.0, 9.0], [0.0, 0.0, 3.0, 9.0]])  # column 3 is beyond the model
    assert torch.allclose(expression_mse(pred, true), torch.tensor([3.0, 3.0]))


def test_probe_statistics_hand_computed():
    target = torch.zeros(1, 2, 1, 3)
    target[0, 1] = 2.0  # two copies at 0 and 2: sample std sqrt(2) per coordinate
    pred = torch.ones(1, 2, 1, 3)  # an encoder that ignores the tweaks: std 0
    l1, abs_std = probe_statistics(target, pred)
    assert float(l1) == pytest.approx(1.0)
    assert float(abs_std) == pytest.approx(math.sqrt(2.0))
    l1, abs_std = probe_statistics(target, target.clone())
    assert float(l1) == 0.0 and float(abs_std) == 0.0


def test_probe_statistics_rejects_a_single_copy():
    with pytest.raises(ValueError, match="N>=2"):
        probe_statistics(torch.zeros(1, 1, 4, 3), torch.zeros(1, 1, 4, 3))


def test_expression_vertex_error_zero_for_the_truth_and_extra_components(flame):
    error = ExpressionVertexError(flame, "synthetic")
    gen = torch.Generator().manual_seed(0)
    exp = torch.randn(2, 50, generator=gen)
    jaw, lids = torch.tensor([[0.1, 0.0, 0.0], [0.2, 0.01, 0.0]]), torch.rand(2, 2, generator=gen)
    truth = FlameGroundTruth(shape=torch.zeros(2, 300), expression=torch.cat([exp, torch.zeros(2, 50)], dim=1),
                             jaw_pose=jaw, eyelids=lids, global_pose=torch.zeros(2, 3))
    with torch.no_grad():
        same = error(exp, jaw, lids, truth)
        closed = error(exp, jaw * 0, lids, truth)
    assert same.shape == (2, len(flame.regions["face"]))
    assert float(same.abs().max()) < 1e-3  # mm: the 100-component truth with zero extras is the same mesh
    assert float(closed.mean()) > 0.1


# ------------------------------------------------------------------------------------------------------ probe
def test_expression_tweak_is_small_clamped_and_reproducible():
    tweak = ExpressionTweak(num_copies=5)
    exp, jaw, lids = torch.zeros(100), torch.tensor([0.34, 0.0, 0.0]), torch.tensor([0.0, 0.95])
    a = tweak.apply(exp, jaw, lids, 50, torch.Generator().manual_seed(3))
    b = tweak.apply(exp, jaw, lids, 50, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    e, j, lid = a
    assert e.shape == (5, 100) and j.shape == (5, 3) and lid.shape == (5, 2)
    assert torch.all(e[:, 50:] == 0) and e[:, :50].abs().max() > 0  # only the model's components move
    assert j[:, 0].min() >= 0 and j[:, 0].max() <= tweak.jaw_open_max
    assert lid.min() >= 0 and lid.max() <= 1
    with pytest.raises(ValueError, match="num_copies"):
        ExpressionTweak(num_copies=1)


def test_tweaked_faces_render_the_requested_expressions():
    base = SyntheticFaceDataset(num_samples=3, split="test", image_size=SIZE, uv_size=32)
    faces = _TweakedFaces(base)
    exp, jaw, lids = faces.truth(1)
    tweaked = ExpressionTweak(num_copies=2).apply(exp, jaw, lids, 50, torch.Generator().manual_seed(0))
    batch = faces.render(1, *tweaked)
    assert batch.image.shape == (2, 3, SIZE, SIZE)
    assert torch.allclose(batch.expression, tweaked[0]) and torch.allclose(batch.eyelids, tweaked[2])
    assert torch.equal(batch.shape[0], batch.shape[1])  # same identity in every copy
    assert not torch.allclose(batch.image[0], batch.image[1])
    plain = base.generate([1])[0]
    assert torch.equal(faces.generate([1])[0].image, plain.image)  # no overrides: the dataset's own sample


# ------------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    """A checkpoint in Lightning's layout (state_dict, hyper_parameters, datamodule_hyper_parameters)."""
    torch.manual_seed(0)
    module = SmirkModule(phase="pretrain", image_size=SIZE, log_images_every_n_steps=0)
    data = SyntheticFaceDataModule(image_size=SIZE, uv_size=32, num_workers=0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": dict(data.hparams)}, path)
    return str(path)


FAST = ["--num", "3", "--batch-size", "3", "--probe-faces", "1", "--probe-copies", "2", "--device", "cpu",
        "--baseline-samples", "4"]


def test_cli_on_a_checkpoint_writes_json(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--method", "smirk", "--ckpt", tiny_ckpt, "--data", "synthetic", *FAST,
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"source", "phase", "image_size", "split", "num_images", "nme_mp", "nme_fan", "expression_mse",
            "expression_vertex_error", "probe"} <= set(result)
    assert set(result["expression_vertex_error"]) >= {"mean_mm", "median_mm", "max_mm"}
    assert set(result["probe"]) >= {"vert_l1_mm", "vert_abs_std_mm", "num_faces", "num_copies", "tweak"}
    assert result["phase"] == "pretrain" and result["image_size"] == SIZE and result["split"] == "test"
    assert result["num_images"] == 3 and result["probe"]["num_copies"] == 2
    assert all(math.isfinite(result[k]) for k in ("nme_mp", "nme_fan", "expression_mse"))
    printed = capsys.readouterr().out
    assert "Table 2" in printed and "Table 4" in printed and "median" in printed
    assert "zero exp" in printed and "train mean" in printed and "mean lmk" in printed
    base = result["baselines"]
    assert base["num_train"] == 4 and base["zero"]["name"] == "zero expression"
    assert base["zero"]["probe"]["num_copies"] == 2 and math.isfinite(base["nme_mp"])


def test_cli_init_baseline(tmp_path):
    out = tmp_path / "init.json"
    assert main(["evaluate", "--method", "smirk", "--init", "--image-size", str(SIZE), *FAST, "--probe-faces", "0",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["source"] == "init" and result["phase"] == "init" and result["probe"] is None


def test_cli_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    assert main(["evaluate", "--method", "smirk", "--ckpt", str(missing), *FAST]) == 2
    first, *rest = capsys.readouterr().err.strip().splitlines()
    assert first.startswith("facelab evaluate: error: SMIRK checkpoint not found") and "nope.ckpt" in first
    assert "--ckpt" in " ".join(rest)  # MissingAssetError names the option that set the path


def test_cli_rejects_another_image_size_and_non_checkpoints(tiny_ckpt, tmp_path, capsys):
    assert main(["evaluate", "--method", "smirk", "--ckpt", tiny_ckpt, "--image-size", "64", *FAST]) == 2
    assert "trained on 32x32" in capsys.readouterr().err
    plain = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(1)}, plain)
    assert main(["evaluate", "--method", "smirk", "--ckpt", str(plain), *FAST]) == 2
    assert "not a Lightning checkpoint" in capsys.readouterr().err


def test_cli_needs_ckpt_or_init():
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", "synthetic"])


# ------------------------------------------------------------------------------------------------------ baselines
def test_baselines_are_the_constant_predictors_scored_on_the_same_faces(flame):
    """The zero baseline is ExpressionVertexError of zeros; the train-set mean is the mean of the train split's
    truth and scores its own constant; the mean-landmark NME is that of the mean train landmarks; a constant's
    probe std term is the mean std of the tweaked truth; ratios divide by them."""
    train = SyntheticFaceDataset(num_samples=4, split="train", image_size=SIZE, uv_size=32)
    test = SyntheticFaceDataset(num_samples=3, split="test", image_size=SIZE, uv_size=32)
    stats = train_statistics(train, flame.n_expression, batch_size=2)
    truth = as_smirk_batch(SyntheticFaceSample.collate(train.generate([0, 1, 2, 3])))
    torch.testing.assert_close(stats.mean_expression.expression, truth.ground_truth.expression[:, :50].mean(0))
    torch.testing.assert_close(stats.landmarks_mp, truth.landmarks_mp.mean(0))
    torch.manual_seed(0)
    result = evaluate_encoder(SmirkEncoder(300, 50), flame, test, flame_path="synthetic", batch_size=2,
                              probe_faces=1, tweak=ExpressionTweak(num_copies=2), train_stats=stats)
    held = as_smirk_batch(SyntheticFaceSample.collate(test.generate([0, 1, 2])))
    error = ExpressionVertexError(flame, "synthetic")
    with torch.no_grad():
        zero = error(*ConstantExpression.zero(50).expand(3, held.image), held.ground_truth).mean(1).mean()
        mean = error(*stats.mean_expression.expand(3, held.image), held.ground_truth).mean(1).mean()
    b = result.baselines
    assert b.zero.expression_vertex_error.mean_mm == pytest.approx(float(zero), rel=1e-4)
    assert b.train_mean.expression_vertex_error.mean_mm == pytest.approx(float(mean), rel=1e-4)
    nme = facelab.metrics.landmark_nme(stats.landmarks_mp.expand(3, -1, -1), held.landmarks_mp).mean()
    assert b.nme_mp == pytest.approx(float(nme), rel=1e-5)
    assert b.zero.expression_mse == pytest.approx(float(held.ground_truth.expression[:, :50].pow(2).mean()),
                                                  rel=1e-5)
    assert b.zero.probe.vert_abs_std_mm > 0 and b.best_expression in (b.zero, b.train_mean)
    ratios = result.ratios()
    assert ratios["vertex_error_vs_zero"] == pytest.approx(result.expression_vertex_error.mean_mm / float(zero),
                                                           rel=1e-4)
    assert ratios["nme_mp_vs_mean_landmarks"] == pytest.approx(result.nme_mp / b.nme_mp)
