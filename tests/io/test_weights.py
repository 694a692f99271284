import os

import pytest
import torch

from facelab.errors import AssetFormatError, MissingAssetError
from facelab.io.weights import load_state_dict_strict, read_state_dict


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_round_trip_and_lightning_nesting(tmp_path):
    net = torch.nn.Linear(3, 2)
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "a.ckpt")
    other = torch.nn.Linear(3, 2)
    load_state_dict_strict(other, read_state_dict(tmp_path / "a.ckpt", what="test weights"), "a.ckpt")
    assert torch.equal(other.weight, net.weight)


def test_mismatch_lists_keys(tmp_path):
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "w.pt")
    with pytest.raises(AssetFormatError, match=r"1 shape mismatches \['weight'\].*set by x.y"):
        load_state_dict_strict(torch.nn.Linear(3, 2), read_state_dict(tmp_path / "w.pt", what="w"), "w.pt",
                               hint="set by x.y")


def test_missing_and_malicious_files(tmp_path):
    with pytest.raises(MissingAssetError, match="model.init_args.vgg_weights"):
        read_state_dict(tmp_path / "nope.pt", what="VGG16 weights", config_key="model.init_args.vgg_weights")
    marker = tmp_path / "pwned"
    torch.save({"w": _RunsShell(marker)}, tmp_path / "evil.pt")
    with pytest.raises(AssetFormatError, match="weights_only=True"):
        read_state_dict(tmp_path / "evil.pt", what="weights")
    assert not marker.exists()
