"""``facelab bench facedet3d``: the R step split covers the step (stages + other = step) and reports the UV-raster
share against its goal; the benchmark is registered with the method."""

from __future__ import annotations

import argparse

import pytest

from facedet3d import bench, method


@pytest.mark.slow
def test_render_step_split_adds_up(capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--parts", "render", "--small", "--size", "32", "--map-size", "64", "--batch", "2",
                              "--warmup", "0", "--repeat", "1"])
    rows = bench.run(args)
    by_name = {r.impl: r for r in rows}
    assert {"inputs", "uv_raster", "ntex", "tex2im", "discriminators", "losses", "backward_step", "other",
            "step"} == set(by_name)
    assert all(r.ms >= 0 for r in rows) and by_name["uv_raster"].ms > 0 and by_name["tex2im"].ms > 0
    stages = sum(r.ms for r in rows if r.impl != "step")
    assert stages == pytest.approx(by_name["step"].ms, rel=1e-6)
    bench.report(rows)
    assert "UV rasterizations" in capsys.readouterr().out


def test_registered():
    assert method.benchmarks["facedet3d"].load() is bench
