"""The two console scripts: `lightning-cli` (training, any LightningModule, DDP) and `facelab` (the rest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
REPO = HERE.parents[1]
BIN = Path(sys.executable).parent
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.mark.parametrize("script", ["lightning-cli", "facelab"])
def test_console_scripts_have_help(script, tmp_path):
    out = run([str(BIN / script), "--help"], tmp_path).stdout
    assert "usage" in out.lower()
    if script == "lightning-cli":
        assert all(sub in out for sub in ("fit", "validate", "test", "predict"))
    else:
        assert all(sub in out for sub in ("assets", "bench"))


def test_print_config_resolves_demo(tmp_path):
    out = run([str(BIN / "lightning-cli"), "fit", "--config", str(HERE / "demo.yaml"), "--print_config"], tmp_path)
    cfg = yaml.safe_load(out.stdout)
    assert cfg["model"]["class_path"] == "demo_module.DemoRegression"
    assert cfg["model"]["init_args"]["lr"] == 0.05
    assert cfg["trainer"]["logger"]["class_path"].endswith("TensorBoardLogger")  # facelab's default logger


def test_overlay_config_overrides(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("model:\n  init_args:\n    lr: 0.5\n")
    out = run([str(BIN / "lightning-cli"), "fit", "--config", str(HERE / "demo.yaml"), "--config", str(overlay),
               "--print_config"], tmp_path)
    assert yaml.safe_load(out.stdout)["model"]["init_args"]["lr"] == 0.5


def test_unknown_config_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    learning_rate_typo: 0.5\n")
    env = dict(os.environ, PYTHONPATH=str(HERE))
    proc = subprocess.run([str(BIN / "lightning-cli"), "fit", "--config", str(HERE / "demo.yaml"), "--config",
                           str(bad), "--print_config"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "learning_rate_typo" in proc.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(REPO)) for c in CONFIGS])
def test_every_repo_config_resolves(config, tmp_path):
    out = run([str(BIN / "lightning-cli"), "fit", "--config", str(config), "--print_config"], REPO)
    assert "model" in yaml.safe_load(out.stdout)


def test_fit_writes_tensorboard_and_resolved_config(tmp_path):
    run([str(BIN / "lightning-cli"), "fit", "--config", str(HERE / "demo.yaml"), "--trainer.max_epochs=1"], tmp_path)
    version = tmp_path / "logs" / "default" / "version_0"
    assert (version / "config.yaml").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in version.iterdir())
    assert yaml.safe_load((version / "config.yaml").read_text())["model"]["init_args"]["in_features"] == 8


def test_ddp_two_cpu_processes(tmp_path):
    """Two gloo processes train through `lightning-cli` and exit cleanly (ddp, not ddp_spawn: see environment.md)."""
    proc = run([str(BIN / "lightning-cli"), "fit", "--config", str(HERE / "demo.yaml"),
                "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
                "--trainer.max_epochs=2"], tmp_path, timeout=600)
    assert "max_epochs=2` reached" in proc.stdout + proc.stderr
    ckpts = list((tmp_path / "logs").rglob("*.ckpt"))
    assert len(ckpts) == 1  # rank 0 alone writes the checkpoint


@pytest.mark.parametrize("family,main_file", [("flame", "generic_model.pkl"), ("bfm", "BFM_model_front.mat"),
                                              ("bilinear", "facescape_bm_v1.6_847_50_52_id_front.npz")])
def test_assets_synthetic_writes_loadable_official_files(family, main_file, tmp_path, capsys):
    from facelab.cli.main import main

    assert main(["assets", "synthetic", "--family", family, "--out", str(tmp_path), "--size", "tiny"]) == 0
    assert (tmp_path / main_file).is_file()
    target = tmp_path if family == "flame" else tmp_path / main_file
    assert main(["assets", "info", family, str(target)]) == 0
    assert "vertices" in capsys.readouterr().out


def test_missing_asset_is_a_clear_cli_error(tmp_path, capsys):
    from facelab.cli.main import main

    assert main(["assets", "info", "flame", str(tmp_path / "generic_model.pkl")]) == 2
    err = capsys.readouterr().err
    assert "FLAME model pickle not found" in err and "Traceback" not in err
