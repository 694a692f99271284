"""``facelab bench dualstream`` runs at a tiny size and reports the stage split and the throughput goal."""

from __future__ import annotations

import argparse

from dualstream import bench


def test_bench_rows_and_goal(capsys, monkeypatch):
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    bench.add_arguments(parser)
    args = parser.parse_args(["--size", "64", "--train-batch", "1", "--infer-batch", "1", "--repeat", "1",
                              "--warmup", "0", "--min-time", "0", "--stages", "texture"])
    rows = bench.run(args)
    impls = {r.impl for r in rows}
    assert {"train_texture", "train_texture/generator_forward", "train_texture/discriminator_step",
            "infer/encoder", "infer/reconstruction"} <= impls
    split = [r for r in rows if r.impl.startswith("train_texture/")]
    assert abs(sum(r.extra["share"] for r in split) - 1.0) < 1e-6
    whole = next(r for r in rows if r.impl == "infer/reconstruction").extra
    encoder = next(r for r in rows if r.impl == "infer/encoder").extra
    assert 0 < encoder["gflop_per_image"] < whole["gflop_per_image"]
    assert whole["flop_ceiling"] == encoder["gflop_per_image"] / whole["gflop_per_image"]
    bench.report(rows)
    out = capsys.readouterr().out
    assert "of the bare encoder >= 60% (FLOP ceiling: the encoder is" in out and "texture_generator" in out
