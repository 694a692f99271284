"""``facelab bench smirk`` runs through the CLI at tiny sizes and writes the expected rows (no timing asserts)."""

from __future__ import annotations

import csv

import pytest
import torch

from facelab.cli.bench import all_benchmarks
from facelab.cli.main import main


def test_registered_benchmarks_follow_the_protocol():
    benchmarks, failures = all_benchmarks()
    assert not failures and benchmarks["smirk"][0] == "smirk"  # registered by the smirk method, not the core
    for _source, bench in benchmarks.values():
        module = bench.load()  # checks add_arguments / run
        assert callable(module.add_arguments) and callable(module.run)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_smirk_cli_writes_the_profile_and_inference_rows(tmp_path, capsys, restore_threads):
    out = tmp_path / "smirk.csv"
    # tiny sizes, one timed batch / call; 1 thread: fast even on a busy CPU
    code = main(["bench", "smirk", "--device", "cpu", "--size", "32", "--train-batch", "2", "--infer-batch", "1",
                 "--repeat", "1", "--warmup", "0", "--min-time", "0", "--threads", "1", "--csv", str(out)])
    assert code == 0
    rows = {row["impl"]: row for row in csv.DictReader(out.open())}
    core_stages = ["encoders", "flame", "render", "masking", "translator", "losses", "backward_step", "other"]
    expected = ({"train_core", "train_pretrain", "infer/encoders", "infer/reconstruction"}
                | {f"train_core/{s}" for s in core_stages}
                | {f"train_pretrain/{s}" for s in ("encoders", "flame", "losses", "backward_step", "other")})
    assert expected <= set(rows)
    for phase, stages in (("core", core_stages), ("pretrain", ["encoders", "flame", "losses", "backward_step"])):
        assert float(rows[f"train_{phase}"]["items_per_s"]) > 0
        assert all(float(rows[f"train_{phase}/{s}"]["ms"]) > 0 for s in stages)
        shares = [float(row["pct"]) for impl, row in rows.items() if impl.startswith(f"train_{phase}/")]
        assert sum(shares) == pytest.approx(100.0)  # the stages partition the step
    assert float(rows["train_core/masking"]["recon_ms"]) > 0 and float(rows["train_core/masking"]["cycle_ms"]) > 0
    assert float(rows["infer/reconstruction"]["ratio_vs_encoders"]) > 0
    printed = capsys.readouterr().out
    assert "goals" in printed and "render + masking" in printed and "reconstruction at B=1" in printed
