"""``facelab bench dnpm`` (``dnpm.bench``) at tiny sizes: every row, the speed-up column and the goal line (no timing
asserts)."""

from __future__ import annotations

import argparse
import csv
import math

import pytest
import torch

from dnpm import bench

TINY = ["--resolutions", "8", "16", "--batch", "4", "--channel-base", "64", "--channel-max", "8", "--z-dim", "8",
        "--modconv-shapes", "4x4", "2x8", "--modconv-batch", "3", "--repeat", "1", "--warmup", "0", "--threads", "1"]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def test_run_gives_network_and_modconv_rows(restore_threads, capsys):
    rows = bench.run(parse(TINY))
    by_impl = {row.impl: row for row in rows}
    expected = {f"modconv/{impl}@{shape}" for impl in ("grouped", "nonfused", "reference") for shape in ("4x4", "2x8")}
    expected |= {f"{net}@{r}" for net in ("G/grouped", "G/nonfused", "D") for r in (8, 16)}
    assert set(by_impl) == expected
    assert all(row.ms > 0 and row.device == "cpu" and row.batch == (3 if "modconv" in row.impl else 4) for row in rows)
    assert by_impl["modconv/reference@2x8"].extra["speedup_vs_reference"] == 1.0
    assert by_impl["G/grouped@16"].extra["kimg_per_s"] == pytest.approx(4 / by_impl["G/grouped@16"].ms)
    assert math.isnan(by_impl["D@8"].extra["speedup_vs_reference"])  # every row has every column
    assert by_impl["G/grouped@16"].extra["params_m"] == by_impl["G/nonfused@16"].extra["params_m"]
    assert isinstance(bench.report(rows), bool)
    assert "grouped modulated conv 4x4 (B=3)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="multiple of the minibatch-stddev group"):
        bench.run(parse([*TINY, "--batch", "6"]))
    with pytest.raises(ValueError, match="CHANNELSxSIDE"):
        bench.run(parse([*TINY, "--modconv-shapes", "big"]))


def test_main_writes_the_csv(tmp_path, restore_threads):
    out = tmp_path / "dnpm.csv"
    assert bench.main(["--device", "cpu", *TINY, "--skip-networks", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["impl"] for r in rows][:3] == ["modconv/grouped@4x4", "modconv/nonfused@4x4", "modconv/reference@4x4"]
    assert float(rows[0]["speedup_vs_reference"]) > 0


def test_facelab_bench_dnpm_when_registered(tmp_path, restore_threads):
    from dnpm.plugin import method

    if "dnpm" not in method.benchmarks:
        pytest.skip("the dnpm plugin does not register its benchmark yet")
    from facelab.cli.main import main

    out = tmp_path / "dnpm.csv"
    assert main(["bench", "dnpm", "--device", "cpu", *TINY, "--skip-networks", "--csv", str(out)]) == 0
    assert out.exists()
