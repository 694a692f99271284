"""``facelab bench fit`` runs and reports both modes (tiny budgets; the speed goal itself lives in the benchmark)."""

from __future__ import annotations

from facelab.cli.main import main


def test_bench_fit_rows(tmp_path, capsys):
    csv = tmp_path / "fit.csv"
    code = main(["bench", "fit", "--device", "cpu", "--family", "bilinear", "--batch", "4", "--single", "1",
                 "--iterations", "2", "3", "0", "--csv", str(csv)])
    assert code == 0
    out = capsys.readouterr().out
    assert "one_by_one" in out and "batched" in out and "goal >= 8x" in out
    rows = csv.read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 3 and "speedup" in header and "items_per_s" in header
    batched = dict(zip(header, rows[2].split(",")))
    assert batched["impl"] == "batched" and int(batched["batch"]) == 4 and float(batched["speedup"]) > 0
