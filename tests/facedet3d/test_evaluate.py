"""FaceDet3D evaluation: the AugW detail probe scores a renderer that ignores the geometry 0 and an exact one 1;
``facelab evaluate --method facedet3d`` prints FID / FaceID across expression edits beside ordinary rendering and
copy-the-input (random weights warned), on the synthetic world and on a prepared folder."""

from __future__ import annotations

import argparse
from dataclasses import replace

import pytest
import torch

from facedet3d.data import SyntheticDetailDataset
from facedet3d.evaluate import add_arguments, detail_response, evaluate
from facedet3d.prepare import DetailCacheWriter
from facelab.methods import EvaluateRequest


def test_detail_probe_separates_ignoring_from_rendering():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 16, 16, generator=g)
    image_fake = image * (1 + 0.2 * torch.randn(2, 3, 16, 16, generator=g))
    mask = torch.ones(2, 1, 16, 16)
    exact = detail_response(image, image_fake, image, image_fake, mask)
    ignore = detail_response(image, image, image, image_fake, mask)
    assert exact["detail_gain"] == pytest.approx(1) and exact["detail_r2"] == pytest.approx(1)
    assert ignore["detail_gain"] == 0 and ignore["detail_r2"] == pytest.approx(0)
    half = detail_response(image, (image + image_fake) / 2, image, image_fake, mask)
    assert half["detail_gain"] == pytest.approx(0.5) and half["detail_corr"] == pytest.approx(1)


def _options(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.slow
@pytest.mark.parametrize("data", ["synthetic", "folder"])
def test_evaluate_prints_every_row(tmp_path, capsys, data):
    argv = ["--render-mode", "ordinary", "--edits", "2"]
    if data == "folder":
        faces = SyntheticDetailDataset(num_samples=4, pairs=False, image_size=32, texture_size=32, map_size=64,
                                       seed=4).__getitems__(list(range(4)))
        writer = DetailCacheWriter(tmp_path / "cache")
        for i, face in enumerate(faces):
            writer.write_faces(f"p/{i}.png", f"p/{i}.png", [(face, {"face": 0, "identity": ""})], [])
        argv += ["--folder", str(tmp_path / "cache")]
    result = evaluate(EvaluateRequest(ckpt=None, data=data, num_images=2 if data == "folder" else 3, image_size=32),
                      _options(*argv))
    table = result.format_table()
    assert "ordinary rendering" in table and "copy the input" in table
    rows = {r["renderer"].split(" (")[0]: r for r in result.rows}
    assert rows["copy the input"]["faceid_mean"] == pytest.approx(0, abs=1e-5)
    assert rows["ordinary rendering"]["faceid_mean"] > rows["copy the input"]["faceid_mean"]
    assert rows["ordinary rendering"]["detail_gain"] > 0.9  # renders details exactly: the probe's ceiling
    assert all(r["fid"] == r["fid"] for r in result.rows)  # finite
    assert "`--inception-weights`" in capsys.readouterr().err
    result.write_json(tmp_path / "eval.json")


def test_edit_targets_carry_the_target_expression():
    """With --deth the edits' geometry takes the AU -> expression map's alpha^_e (Eq. 3); without it, another face's."""
    from facedet3d.data import FaceDetailBatch
    from facedet3d.evaluate import _targets
    from facedet3d.expression import AUExpressionMap
    from facedet3d.networks import DetH
    from facedet3d.presets import EMOTION_PRESETS, preset_vector

    faces = FaceDetailBatch.collate(SyntheticDetailDataset(num_samples=2, pairs=False, image_size=32, texture_size=32,
                                                           map_size=32, seed=5).__getitems__([0, 1]))
    faces = replace(faces, face_id=torch.zeros(2, 512), age=torch.zeros(2, 64))
    options = _options("--edits", "2")
    rolled = _targets(faces, options, None, None, "cpu")
    torch.testing.assert_close(rolled[0][2], faces.expression.roll(1, 0))
    g = torch.Generator().manual_seed(0)
    fit = AUExpressionMap()
    aus = torch.rand(40, 17, generator=g)
    fit.update(aus, aus @ torch.randn(17, faces.expression.shape[1], generator=g))
    edits = _targets(faces, options, DetH(base_channels=4, max_channels=8, num_bottleneck=1).eval(), fit, "cpu")
    for (_, y, e), name in zip(edits, EMOTION_PRESETS):
        torch.testing.assert_close(y[0], preset_vector(name))
        torch.testing.assert_close(e, fit.predict(y))
    assert not torch.allclose(edits[0][2], edits[1][2])
