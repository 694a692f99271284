"""``facelab evaluate --method smirk --data DIR`` on real-data folders (issue 9): landmark NME against mediapipe's
detections and the translator's L1 (Table 4), each beside its trivial baseline."""

from __future__ import annotations

import json

import pytest
import torch

from facelab.cli.main import main
from smirk.module import SmirkModule
from smirk.networks import SmirkGenerator

SIZE = 64  # the cache fixture's crop side (tests/smirk/conftest.py)


def _save(module: SmirkModule, path) -> str:
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return str(path)


@pytest.fixture(scope="module")
def core_ckpt(tmp_path_factory) -> str:
    torch.manual_seed(0)
    module = SmirkModule(phase="core", image_size=SIZE, log_images_every_n_steps=0, generator=SmirkGenerator(
        channels=(8, 16, 32, 64), bottleneck_channels=64, n_res_blocks=1))
    return _save(module, tmp_path_factory.mktemp("ckpt") / "core.ckpt")


def test_a_cache_folder_is_evaluated_beside_its_baselines(core_ckpt, synthetic_cache, tmp_path, capsys):
    out = tmp_path / "real.json"
    assert main(["evaluate", "--method", "smirk", "--ckpt", core_ckpt, "--data", str(synthetic_cache), "--num", "4",
                 "--batch-size", "2", "--device", "cpu", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "landmark NME (mediapipe)" in table and "mean landmarks of the set" in table
    assert "copy the masked input" in table and "--vgg-weights" in table
    result = json.loads(out.read_text())
    assert result["num_images"] == 4 and result["phase"] == "core"
    assert result["nme_mp"] > 0 and result["nme_mp_mean_landmarks"] > 0
    assert 0 < result["translator_l1"] < 1 and 0 < result["copy_masked_l1"] < 1 and result["translator_vgg"] is None


def test_a_pretraining_checkpoint_has_no_translator_columns(synthetic_cache, tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = _save(SmirkModule(phase="pretrain", image_size=SIZE, log_images_every_n_steps=0), tmp_path / "p.ckpt")
    assert main(["evaluate", "--method", "smirk", "--ckpt", ckpt, "--data", str(synthetic_cache), "--num", "2"]) == 0
    assert "translator: not measured (pretrain checkpoint" in capsys.readouterr().out


def test_bad_folders_fail_clearly(core_ckpt, tmp_path, capsys):
    assert main(["evaluate", "--method", "smirk", "--ckpt", core_ckpt, "--data", str(tmp_path / "nope")]) == 2
    assert "not a folder, nor one of synthetic" in capsys.readouterr().err
    assert main(["evaluate", "--method", "smirk", "--init", "--data", str(tmp_path)]) == 2
    assert "give --ckpt" in capsys.readouterr().err
    empty = tmp_path / "photos"
    empty.mkdir()
    (empty / "broken.jpg").write_bytes(b"not an image")
    assert main(["evaluate", "--method", "smirk", "--ckpt", core_ckpt, "--data", str(empty),
                 "--cache", str(tmp_path / "cache")]) == 2
    assert "no usable face crop" in capsys.readouterr().err
