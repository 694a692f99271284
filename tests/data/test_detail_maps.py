"""Displacement maps of the synthetic bilinear world (facelab.data.detail_maps): units, wrinkles follow the expression,
detail follows the identity (deterministically and learnably), masks, resolutions, splits and sweeps."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from facelab.data.detail_maps import (
    DetailWorld,
    DisplacementMapModel,
    DisplacementSample,
    SyntheticDisplacementDataset,
    displacement_std_mm,
    full_expression,
)
from facelab.data.wrinkles import HEAD_EXPRESSION_NAMES


@pytest.fixture(scope="module")
def dataset() -> SyntheticDisplacementDataset:
    torch.set_num_threads(1)
    return SyntheticDisplacementDataset(num_identities=40, expressions_per_identity=5, resolution=64)


def _expression(name: str, weight: float = 1.5) -> torch.Tensor:
    """(1, 52) FaceScape vector with one head component of the stand-in active (its offset is 1 in the 51)."""
    b = torch.zeros(1, 51)
    b[0, 1 + HEAD_EXPRESSION_NAMES.index(name)] = weight
    return full_expression(b)


def test_maps_are_float_mm_in_a_realistic_range(dataset):
    samples = dataset.__getitems__(list(range(0, 60, 3)))
    maps = torch.stack([s.map for s in samples])
    assert maps.dtype == torch.float32 and maps.shape == (20, 1, 64, 64)
    assert torch.isfinite(maps).all()
    # grooves of 0.5-2 mm (x the identity's depth factor) and sub-0.3 mm skin grain: nothing beyond a few mm
    assert -6.0 < float(maps.min()) < -0.3 and 0.02 < float(maps.max()) < 1.5
    s = samples[0]
    assert s.identity.shape == (50,) and s.expression.shape == (52,) and float(s.expression[0]) == 1.0
    std = displacement_std_mm(dataset, 40)
    assert 0.02 < std < 1.0


def test_mask_marks_the_uv_charts(dataset):
    mask = dataset[0].mask
    assert mask.shape == (1, 64, 64) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert 0.5 < float(mask.mean()) < 0.95
    maps = torch.stack([s.map for s in dataset.__getitems__(list(range(10)))])
    support = dataset.maps.support[0]
    assert (maps * (1 - support)).abs().max() == 0  # nothing far outside the charts
    assert (support >= mask).all()


def test_expression_changes_only_its_wrinkle_regions(dataset):
    model = dataset.maps
    identity = dataset.identity(3)[None]
    neutral = model(identity, full_expression(torch.zeros(1, 51)))
    brows = model(identity, _expression("brows_up"))
    smile = model(identity, _expression("smile_left"))
    forehead = sum(model.patterns[i] for i, n in enumerate(model.names) if n.startswith("forehead")).view(64, 64) < 0
    diff_brows = (brows - neutral)[0, 0]
    assert float(diff_brows.min()) < -0.5  # forehead lines appear (grooves: negative)
    assert diff_brows[~forehead].abs().max() < 1e-5  # and nothing else changes
    smile_exp = _expression("smile_left")
    active = model.activations(smile_exp)[0] > 0
    assert not any(active[i] for i, n in enumerate(model.names) if n.startswith("forehead"))
    touched = (model.patterns[active] < 0).any(0).view(64, 64)
    diff_smile = (smile - neutral)[0, 0]
    cheek = model.patterns[model.names.index("nasolabial_left")].view(64, 64) < -0.05
    assert float(diff_smile[cheek].mean()) < -0.2  # the left nasolabial fold deepens
    assert diff_smile[~touched].abs().max() < 1e-5  # nothing outside the smile's patterns changes


def test_identity_changes_detail_deterministically(dataset):
    model = dataset.maps
    ids = torch.stack([dataset.identity(i) for i in range(4)])
    neutral = full_expression(torch.zeros(4, 51))
    maps = model(ids, neutral)
    again = model(ids.flip(0), neutral).flip(0)  # another batch composition
    assert torch.equal(maps, again)
    assert torch.allclose(dataset.__getitems__([7, 2])[0].map, dataset[7].map, atol=1e-6)  # up to summation order
    for i in range(1, 4):
        assert (maps[i] - maps[0]).abs().mean() > 0.01
    # age deepens the static lines: the oldest identity's neutral nasolabial fold is deeper than the youngest's
    ages = model.age(ids)
    old, young = int(ages.argmax()), int(ages.argmin())
    fold = model.patterns[model.names.index("nasolabial_left")].view(64, 64) < -0.1
    detail = model.identity_detail(ids)
    static = (detail.static @ model.patterns).view(4, 64, 64)
    assert float(static[old][fold].mean()) < float(static[young][fold].mean()) < 0.0


def test_identity_to_detail_is_learnable():
    """A linear fit of the log grain std and of the age-driven fold depth from the identity vector beats the mean."""
    ds = SyntheticDisplacementDataset(num_identities=200, expressions_per_identity=1, resolution=64, seed=3)
    ids = torch.stack([ds.identity(i) for i in range(200)]).double()
    detail = ds.maps.identity_detail(ids.float())
    mask = ds.maps.mask[0, 0] > 0
    targets = {"log_grain_std": detail.grain[:, 0][:, mask].std(dim=1).log().double(),
               "static_fold": detail.static[:, ds.maps.names.index("nasolabial_left")].double(),
               "wrinkle_gain": detail.gain[:, ds.maps.names.index("forehead_center")].double()}
    x = torch.cat([ids, torch.ones(200, 1, dtype=torch.float64)], dim=1)
    train, test = slice(0, 150), slice(150, 200)
    for name, y in targets.items():
        coef = torch.linalg.lstsq(x[train], y[train, None]).solution
        err = float(((x[test] @ coef)[:, 0] - y[test]).pow(2).mean())
        baseline = float((y[test] - y[train].mean()).pow(2).mean())
        print(f"{name}: linear fit mse {err:.3g} vs mean baseline {baseline:.3g}")
        assert err < 0.5 * baseline, name


def test_lower_resolution_is_the_area_average(dataset):
    flat = dataclasses.replace(DetailWorld(), grain_mm=0.0, depth_range=[0.6, 1.5])  # a list, as YAML gives it
    coarse = SyntheticDisplacementDataset(num_identities=4, resolution=32, world=flat, model=dataset.model)
    fine = SyntheticDisplacementDataset(num_identities=4, resolution=64, world=flat, model=dataset.model)
    a = torch.stack([s.map for s in coarse.__getitems__([1, 2, 3])])
    b = torch.stack([s.map for s in fine.__getitems__([1, 2, 3])])
    inside = coarse.maps.mask > 0
    assert torch.allclose(a[inside.expand_as(a)], F.avg_pool2d(b, 2)[inside.expand_as(a)], atol=0.03)


def test_splits_hold_disjoint_identities_and_the_first_expression_is_neutral(dataset):
    val = SyntheticDisplacementDataset(num_identities=40, expressions_per_identity=5, split="val", resolution=64,
                                       model=dataset.model)
    assert not torch.allclose(val.identity(0), dataset.identity(0))
    assert torch.equal(dataset[5].expression, full_expression(torch.zeros(51)))
    assert dataset[5].subject == 1 and dataset[6].expression[1:].abs().sum() > 0
    other_seed = SyntheticDisplacementDataset(num_identities=40, resolution=64, seed=1, model=dataset.model)
    assert not torch.allclose(other_seed.identity(0), dataset.identity(0))


def test_sweep_mode_gives_smooth_sequences(dataset):
    seq = SyntheticDisplacementDataset(num_identities=3, expressions_per_identity=2, resolution=64, sequence_length=8,
                                       model=dataset.model)
    batch = DisplacementSample.collate(seq.__getitems__([0, 3]))
    assert batch.map.shape == (2, 8, 1, 64, 64) and batch.expression.shape == (2, 8, 52)
    assert batch.expression[:, 0, 1:].abs().sum() == 0  # starts neutral
    steps = (batch.expression[:, 1:] - batch.expression[:, :-1]).abs().amax()
    jump = (batch.expression[:, -1] - batch.expression[:, 0]).abs().amax()
    assert steps < jump
    assert torch.isfinite(batch.map).all()


def test_bad_inputs_raise_clear_errors(dataset):
    with pytest.raises(ValueError, match="resolution"):
        DisplacementMapModel(dataset.model, resolution=16)
    with pytest.raises(ValueError, match="neutral weight"):
        dataset.maps(dataset.identity(0)[None], torch.zeros(1, 52))
    with pytest.raises(ValueError, match=r"\(B, 52\)"):
        dataset.maps(dataset.identity(0)[None], torch.zeros(1, 51))
    with pytest.raises(ValueError, match="non-finite"):
        dataset.maps(torch.full((1, 50), float("nan")), full_expression(torch.zeros(1, 51)))
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_bench_rows_report_maps_per_second(dataset):
    import argparse

    from facelab.bench import data as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--skip-images", "--detail-resolutions", "32", "--workers", "0",
                              "--detail-batches", "2", "--detail-batch-size", "4"])
    rows = bench.run(args)
    assert [r.impl for r in rows] == ["detail_maps_32"]
    assert rows[0].items_per_s > 0 and rows[0].extra["items_per_cpu_s"] > 0 and rows[0].extra["image_size"] == 32
