"""ARKit names, the ARKit -> FaceScape / stand-in / ICT mappings and the Live Link Face CSV layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dnpm.arkit import (
    ARKIT_NAMES,
    ARKIT_TO_FACESCAPE,
    ARKIT_TO_STANDIN,
    FACESCAPE_EXPRESSION_NAMES,
    LIVE_LINK_NAMES,
    LiveLinkFormatError,
    arkit_index,
    arkit_to_expression_matrix,
    arkit_to_facescape_matrix,
    arkit_to_names_matrix,
    canonical_name,
    read_live_link_csv,
    write_live_link_csv,
)


def test_names_and_spellings():
    assert len(ARKIT_NAMES) == 52 and len(set(ARKIT_NAMES)) == 52
    assert LIVE_LINK_NAMES[0] == "EyeBlinkLeft" and LIVE_LINK_NAMES[-1] == "TongueOut"
    assert canonical_name("eyeBlink_L") == canonical_name("eyeBlinkLeft") == canonical_name("EyeBlinkLeft")
    assert arkit_index("JawOpen") == arkit_index("jawOpen") == ARKIT_NAMES.index("jawOpen")
    with pytest.raises(KeyError):
        arkit_index("notAShape")


def test_facescape_map_covers_all_52():
    assert len(FACESCAPE_EXPRESSION_NAMES) == 52 and FACESCAPE_EXPRESSION_NAMES[0] == "Neutral"
    assert set(ARKIT_TO_FACESCAPE) == set(ARKIT_NAMES) and set(ARKIT_TO_STANDIN) == set(ARKIT_NAMES)
    m = arkit_to_facescape_matrix()
    assert m.shape == (52, 51)
    # one-to-one for the 51 FaceScape blendshapes; tongueOut (no FaceScape counterpart) drives nothing
    assert torch.equal(m.sum(0), torch.ones(51))
    assert m[arkit_index("tongueOut")].abs().sum() == 0
    assert (m.sum(1) == 1).sum() == 51
    assert m[arkit_index("jawOpen"), FACESCAPE_EXPRESSION_NAMES.index("JawOpen") - 1] == 1


def test_standin_and_ict_maps():
    class StandIn:
        is_synthetic = True
        num_expression = 51
        synthetic_expression_offset = None
        _synthetic_expression_start = 1
        jaw_open_component = (0, 0.3)

    m = arkit_to_expression_matrix(StandIn())
    assert m.shape == (52, 51) and m[arkit_index("jawOpen"), 0] == 1
    assert m[arkit_index("mouthPucker")].sum() == 1
    ict = ["browInnerUp_L", "browInnerUp_R", "jawOpen", "eyeBlink_L", "cheekPuff_L", "cheekPuff_R", "PupilDilate_L"]
    mi = arkit_to_names_matrix(ict)
    assert mi[arkit_index("browInnerUp"), :2].tolist() == [1.0, 1.0]
    assert mi[arkit_index("cheekPuff"), 4:6].tolist() == [1.0, 1.0]
    assert mi[arkit_index("eyeBlinkLeft"), 3] == 1 and mi[:, 6].sum() == 0


def test_live_link_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    c = rng.uniform(0, 1, (130, 52)).astype(np.float32)
    rot = rng.uniform(-1, 1, (130, 9)).astype(np.float32)
    path = write_live_link_csv(tmp_path / "take.csv", c, fps=60, rotations=rot, start_seconds=3661)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:3] == ["Timecode", "BlendShapeCount", "EyeBlinkLeft"] and len(header) == 2 + 61
    assert path.read_text().splitlines()[1].startswith("01:01:01:00.000,61,")
    take = read_live_link_csv(path)  # fps inferred from the timecodes
    assert take.fps == 60
    np.testing.assert_allclose(take.coefficients, c, atol=1e-6)
    np.testing.assert_allclose(take.rotations, rot, atol=1e-6)
    np.testing.assert_allclose(take.times, np.arange(130) / 60, atol=1e-9)


def test_live_link_column_order_and_case_do_not_matter(tmp_path):
    c = np.linspace(0, 1, 52, dtype=np.float32)[None].repeat(3, 0)
    names = list(reversed(LIVE_LINK_NAMES))
    rows = ["timecode," + ",".join(n.lower() for n in names)]
    rows += [f"00:00:00:0{i}.000," + ",".join(str(v) for v in c[i][::-1]) for i in range(3)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    take = read_live_link_csv(tmp_path / "t.csv", fps=30)
    np.testing.assert_allclose(take.coefficients, c, atol=1e-7)
    assert take.rotations is None


def test_live_link_bad_inputs(tmp_path):
    write_live_link_csv(tmp_path / "ok.csv", np.zeros((5, 52)), fps=30)
    lines = (tmp_path / "ok.csv").read_text().splitlines()
    cols = lines[0].split(",")
    drop = [cols.index("JawOpen"), cols.index("MouthClose")]
    cut = [",".join(v for i, v in enumerate(line.split(",")) if i not in drop) for line in lines]
    (tmp_path / "missing.csv").write_text("\n".join(cut) + "\n")
    with pytest.raises(LiveLinkFormatError, match="JawOpen.*MouthClose") as err:
        read_live_link_csv(tmp_path / "missing.csv", fps=30)
    assert err.value.reason == "missing_columns"
    with pytest.raises(LiveLinkFormatError) as err:
        read_live_link_csv(tmp_path / "nope.csv")
    assert err.value.reason == "not_found"
    bad = lines[:1] + ["garbage" + lines[1][lines[1].index(",") :]]
    (tmp_path / "bad.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(LiveLinkFormatError) as err:
        read_live_link_csv(tmp_path / "bad.csv", fps=30)
    assert err.value.reason == "bad_timecode"
    with pytest.raises(LiveLinkFormatError, match="shorter than one second"):
        read_live_link_csv(tmp_path / "ok.csv")
    with pytest.raises(ValueError, match="52"):
        write_live_link_csv(tmp_path / "x.csv", np.zeros((5, 51)), fps=30)
    assert not (tmp_path / "x.csv").exists()


def test_ict_facekit_names_from_the_asset_folder():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[3] / "shared" / "assets" / "ict-facekit" / "FaceXModel"
    if not folder.is_dir():
        pytest.skip("ICT-FaceKit is not in shared/assets")
    names = sorted(p.stem for p in folder.glob("*.obj") if not p.stem.startswith(("identity", "generic")))
    m = arkit_to_names_matrix(names)
    driven = {names[j] for j in range(len(names)) if m[:, j].any()}
    assert driven == set(names) - {"cheekRaiser_L", "cheekRaiser_R", "PupilDilate_L", "PupilDilate_R"}
    assert (m.sum(1) > 0).sum() == 51 and m[arkit_index("tongueOut")].sum() == 0
