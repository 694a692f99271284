"""The method registry (:mod:`facelab.methods`): methods plug into ``facelab reconstruct``, ``evaluate``, ``bench``
and ``methods`` through ``facelab.methods`` entry points, and no core file names any of them.

A second method (``tests/cli/plugins/fakerecon_method.py``, on BFM) is registered at test time by a real entry point:
a tiny ``*.dist-info`` written to ``tmp_path`` and put on ``sys.path``, which ``importlib.metadata`` reads like an
installed distribution's."""

from __future__ import annotations

import ast
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import facelab
from facelab.cli.main import main
from facelab.cli.reconstruct import FaceCropper
from facelab.data.detect import Detections
from facelab.io.obj import read_obj
from facelab.methods import (
    ENTRY_POINT_GROUP,
    Benchmark,
    Method,
    MethodLoadError,
    ReconstructEntry,
    UnknownMethodError,
    default_method,
    get_method,
    installed_methods,
    load_methods,
    parse_method_options,
)
from facelab.morphable import load_model
from facelab.reconstruction import FaceEncoding, encoding_from_arrays, encoding_to_arrays, region_topology
from facelab.render import PerspectiveCamera

PLUGINS = Path(__file__).parent / "plugins"
#: The methods of this repository and the ones that follow; the core must name none of them.
METHOD_NAMES = ("smirk", "facedet3d", "dualstream", "dnpm")


def register(root: Path, monkeypatch, entries: dict[str, str], dist: str = "fakerecon") -> None:
    """Install ``entries`` (name -> ``module:attr``) as ``facelab.methods`` entry points of a distribution
    ``dist`` made of a dist-info folder in ``root`` (put on ``sys.path`` with the test plugins)."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "fakerecon_method", raising=False)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake method installed beside SMIRK; yields its module."""
    register(tmp_path / "site", monkeypatch, {"fakerecon": "fakerecon_method:method"})
    import fakerecon_method

    yield fakerecon_method
    sys.modules.pop("fakerecon_method", None)


@pytest.fixture
def fake_ckpt(fake, tmp_path) -> Path:
    torch.manual_seed(0)
    regressor = fake.ColourRegressor(load_model("bfm", "synthetic:tiny").num_expression)
    path = tmp_path / "fake.pt"
    torch.save(regressor.state_dict(), path)
    return path


# ------------------------------------------------------------------------------------------------------------------
# Discovery and listings
# ------------------------------------------------------------------------------------------------------------------


def test_smirk_is_installed_through_its_entry_point():
    assert "smirk" in installed_methods()
    smirk = get_method("smirk")
    assert smirk.family == "flame" and smirk.commands == ("reconstruct", "evaluate", "bench", "prepare")
    assert set(smirk.benchmarks) == {"smirk"} and smirk.benchmarks["smirk"].load().__name__ == "smirk.bench"
    assert all((Path(__file__).parents[2] / path).is_file() for path in smirk.configs.values())


def _repo_methods() -> list[str]:
    """This repository's installed methods (entry-point metadata of the editable install)."""
    return [name for name in installed_methods() if name != "fakerecon"]


def _supporting(command: str) -> list[str]:
    return [name for name in _repo_methods() if command in get_method(name).commands]


def test_every_method_of_the_repository_is_installed_and_loads():
    assert set(METHOD_NAMES) <= set(installed_methods())
    for name in METHOD_NAMES:
        method = get_method(name)
        assert method.name == name and all((Path(__file__).parents[2] / p).is_file() for p in method.configs.values())


def test_a_method_registered_at_test_time_is_listed_everywhere(fake, tmp_path, capsys):
    assert installed_methods() == sorted(["fakerecon", *_repo_methods()])
    assert get_method("fakerecon") is fake.method
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"fakerecon\s+bfm\s+reconstruct/bench/animate", listing) and "smirk" in listing
    assert main(["methods", "fakerecon"]) == 0
    details = capsys.readouterr().out
    assert "--gain" in details and "crop: box, scale 1.25" in details and "fakerecon-speed" in details
    assert main(["bench"]) == 0
    bench = capsys.readouterr().out
    for name, source in (("flame", "core"), ("raster", "core"), ("smirk", "smirk"), ("fakerecon-speed", "fakerecon")):
        assert re.search(rf"^\s+{re.escape(name)}\s+\[{source}\]", bench, re.M), (name, bench)
    # the method's benchmark runs through the core's bench command
    out = tmp_path / "b.csv"
    assert main(["bench", "fakerecon-speed", "--batch", "3", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["bench"], r["batch"]) for r in rows] == [("fakerecon-speed", "3")] and float(rows[0]["ms"]) > 0
    # and the core names it nowhere
    assert not any("fakerecon" in p.read_text() for p in Path(facelab.__file__).parent.rglob("*.py"))


def test_a_method_defined_action_runs_through_the_core_command(fake, tmp_path, capsys):
    out = tmp_path / "frames.txt"
    assert main(["animate", "--method", "fakerecon", "--device", "cpu", "--frames", "3", "--out", str(out)]) == 0
    assert out.read_text().splitlines() == [f"frame {i} on cpu" for i in range(3)]
    assert main(["animate", "--method", "fakerecon", "--frames", "0", "--out", str(out)]) == 2
    assert "--frames must be >= 1" in capsys.readouterr().err
    assert main(["animate", "--method", "fakerecon", "--frames", "1", "--out", str(out), "--bogus", "1"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert main(["methods", "fakerecon"]) == 0
    assert "animate: test-only: frame lines" in capsys.readouterr().out
    assert main(["detail", "--method", "fakerecon"]) == 2
    assert "no `facelab detail` support" in capsys.readouterr().err


def test_unknown_method_lists_the_installed_ones(fake, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["reconstruct", "--method", "nope", "--ckpt", "c", "--input", str(image), "--out",
                 str(tmp_path / "o")]) == 2
    installed = ", ".join(sorted(["fakerecon", *_repo_methods()]))
    err = capsys.readouterr().err
    assert err.startswith(f"facelab reconstruct: error: --method nope: unknown method; installed: {installed}")
    assert main(["evaluate", "--method", "nope", "--init"]) == 2
    assert f"installed: {installed}" in capsys.readouterr().err
    assert main(["evaluate", "--method", "fakerecon", "--init"]) == 2  # installed, but no evaluation
    assert f"no `facelab evaluate` support; methods that do: {', '.join(_supporting('evaluate'))}" in \
        capsys.readouterr().err
    assert main(["bench", "nope"]) == 2
    available = re.search(r"available: ([a-z0-9_, \-]+)", capsys.readouterr().err).group(1).split(", ")
    assert {"data", "fakerecon-speed", "fit", "flame", "raster", "smirk"} <= set(available)
    with pytest.raises(UnknownMethodError, match=f"installed: {installed}"):
        get_method("nope")
    assert not (tmp_path / "o").exists()


def test_default_method_is_the_only_one_that_supports_the_command(fake, monkeypatch):
    evaluating = _supporting("evaluate")  # fakerecon has no evaluation
    if len(evaluating) == 1:
        assert default_method("evaluate").name == evaluating[0]
    else:
        with pytest.raises(UnknownMethodError, match="several methods support `facelab evaluate`"):
            default_method("evaluate")
    with pytest.raises(UnknownMethodError, match="several methods support `facelab reconstruct`.*fakerecon"):
        default_method("reconstruct")


def test_broken_entry_points_are_reported_and_do_not_hide_the_others(tmp_path, monkeypatch, capsys):
    register(tmp_path / "site", monkeypatch, {"broken": "no_such_module_for_facelab:method",
                                              "wrongtype": "fakerecon_method:NOT_A_METHOD",
                                              "renamed": "fakerecon_method:method"})
    methods, failures = load_methods()
    assert "smirk" in methods and set(failures) == {"broken", "renamed", "wrongtype"}
    assert "ModuleNotFoundError" in failures["broken"] and "no_such_module_for_facelab" in failures["broken"]
    assert "names a str, not a facelab.methods.Method" in failures["wrongtype"]
    assert "names the method 'fakerecon'" in failures["renamed"]
    with pytest.raises(MethodLoadError, match="method 'broken'"):
        get_method("broken")
    assert main(["methods"]) == 0
    assert re.search(r"^broken\s+\(does not load: ", capsys.readouterr().out, re.M)
    assert main(["bench"]) == 0
    assert "(method wrongtype did not load:" in capsys.readouterr().out


def test_two_distributions_registering_one_name_differently_is_an_error(tmp_path, monkeypatch):
    register(tmp_path / "a", monkeypatch, {"fakerecon": "fakerecon_method:method"}, dist="fake_a")
    register(tmp_path / "b", monkeypatch, {"fakerecon": "fakerecon_method:other"}, dist="fake_b")
    with pytest.raises(MethodLoadError, match="two installed distributions register the method 'fakerecon'"):
        installed_methods()


def test_descriptors_check_their_fields(fake):
    with pytest.raises(ValueError, match="lower-case"):
        Method(name="Bad Name", description="", family="bfm")
    with pytest.raises(ValueError, match="benchmark 'x'"):
        Method(name="ok", description="", family="bfm", benchmarks={"x": "some.module"})
    with pytest.raises(ValueError, match="crop must be"):
        ReconstructEntry(from_checkpoint=fake.from_checkpoint, crop="mesh")
    with pytest.raises(TypeError, match="callable"):
        ReconstructEntry(from_checkpoint="fakerecon_method:from_checkpoint")
    with pytest.raises(MethodLoadError, match="has no add_arguments / run"):
        Benchmark("facelab.errors", "not a benchmark").load()


def test_method_options_are_parsed_by_the_method(fake):
    entry = fake.method.reconstruct
    assert parse_method_options(fake.method, "reconstruct", entry.add_arguments, ["--gain", "2.5"]).gain == 2.5
    assert parse_method_options(fake.method, "reconstruct", entry.add_arguments, []).gain == 1.0
    with pytest.raises(ValueError, match=r"unrecognized arguments: --translator .*--gain"):
        parse_method_options(fake.method, "reconstruct", entry.add_arguments, ["--translator"])
    with pytest.raises(ValueError, match="invalid float value: 'x'"):
        parse_method_options(fake.method, "reconstruct", entry.add_arguments, ["--gain", "x"])


def test_commands_without_method_options_still_reject_unknown_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["assets", "info", "flame", "synthetic", "--bogus"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------------
# A non-FLAME method through the whole command
# ------------------------------------------------------------------------------------------------------------------


class StubDetector:
    """One fixed box per image (MTCNN rarely finds faces in tiny synthetic images)."""

    def __call__(self, image: np.ndarray) -> Detections:
        h, w = image.shape[:2]
        return Detections(np.array([[w * 0.2, h * 0.2, w * 0.8, h * 0.8]], np.float32),
                          np.zeros((1, 5, 2), np.float32), np.ones(1, np.float32))


def test_fake_bfm_method_reconstructs_through_the_cli(fake, fake_ckpt, tmp_path, monkeypatch, capsys):
    seen = {}

    def stub_cropper(options, size, detector=None, landmarker="auto"):
        seen.update(scale=options.scale, crop=options.crop)
        return FaceCropper(StubDetector(), size, options.scale, None, min_face=8)

    monkeypatch.setattr("facelab.cli.reconstruct.build_cropper", stub_cropper)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(inputs / "a.png")
    out = tmp_path / "out"
    assert main(["reconstruct", "--method", "fakerecon", "--ckpt", str(fake_ckpt), "--input", str(inputs),
                 "--out", str(out), "--device", "cpu", "--no-progress", "--gain", "2"]) == 0, capsys.readouterr().err
    assert seen == {"scale": 1.25, "crop": "box"}  # the method's crop defaults
    model = load_model("bfm", "synthetic:tiny")
    mesh = read_obj(out / "a_face0_mesh.obj")
    assert mesh.verts.shape == (model.num_verts, 3)
    np.testing.assert_array_equal(mesh.faces, model.faces.numpy())
    assert len(mesh.uv) == len(model.uv) and mesh.faces_uv.shape == mesh.faces.shape
    assert Image.open(out / "a_face0_mean_colour.png").size == (32, 32)
    assert (out / "a_face0_overlay.png").is_file() and (out / "a_overlay.png").is_file()

    params = np.load(out / "a_face0_params.npz")
    doc = json.loads((out / "a_face0_params.json").read_text())
    # the BfmParams fields (albedo included) and the camera's, whatever the family
    assert {"identity", "expression", "albedo", "camera_scale", "camera_translation"} <= set(params)
    assert params["expression"].shape == (model.num_expression,) and doc["family"] == "bfm" and doc["gain"] == 2.0
    assert "(dm," in doc["conventions"]
    # the written parameters rebuild the written mesh
    reconstructor = fake.from_checkpoint(str(fake_ckpt))
    crop = torch.rand(1, 3, 32, 32)
    like = reconstructor.encode(crop)
    arrays = {k: params[k][None] for k in encoding_to_arrays(like)}
    with torch.no_grad():
        verts = model(encoding_from_arrays(arrays, like).params).verts[0].numpy()
    np.testing.assert_allclose(mesh.verts, verts, atol=1e-5)
    # the gain reached the reconstructor: twice the regressor's expression of the same crop
    with torch.no_grad():
        expected = 2.0 * reconstructor.regressor(reconstructor_crop(inputs / "a.png", params))
    np.testing.assert_allclose(params["expression"], expected[0].numpy(), rtol=1e-4, atol=1e-5)


def test_fake_bfm_method_smooths_a_video(fake, fake_ckpt, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from facelab.cli.reconstruct import ReconstructOptions, run_reconstruct

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (48, 48))
    rng = np.random.default_rng(1)
    for _ in range(5):
        writer.write(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    writer.release()
    reconstructor = fake.from_checkpoint(str(fake_ckpt))
    cropper = FaceCropper(StubDetector(), 32, 1.25, None, min_face=8)
    raw = run_reconstruct([video], tmp_path / "raw", reconstructor, ReconstructOptions(batch_size=2), cropper)
    smooth = run_reconstruct([video], tmp_path / "smooth", reconstructor,
                             ReconstructOptions(batch_size=2, smooth=3, save_meshes=True), cropper)
    assert raw["faces"] == smooth["faces"] == 5
    outputs = set(smooth["reconstructed"][0]["outputs"])
    assert {"clip_overlay.mp4", "clip_mean_colour.mp4", "clip_frame000004_mesh.obj"} <= outputs
    seq_raw = np.load(tmp_path / "raw" / "clip_params.npz")
    seq_smooth = np.load(tmp_path / "smooth" / "clip_params.npz")
    assert seq_raw["albedo"].shape == (5, 80) and seq_raw["camera_translation"].shape == (5, 2)
    assert np.diff(seq_smooth["expression"], axis=0).var() < np.diff(seq_raw["expression"], axis=0).var()
    # the smoothed mesh of a frame is the model's mesh of that frame's smoothed parameters
    like = reconstructor.encode(torch.rand(1, 3, 32, 32))
    frame = encoding_from_arrays({k: seq_smooth[k][4:5] for k in encoding_to_arrays(like)}, like)
    with torch.no_grad():
        verts = reconstructor.model(frame.params).verts[0].numpy()
    np.testing.assert_allclose(read_obj(tmp_path / "smooth" / "clip_frame000004_mesh.obj").verts, verts, atol=1e-5)


class TwoFaces:
    """Two fixed boxes per image: the left half and the right half."""

    def __call__(self, image: np.ndarray) -> Detections:
        h, w = image.shape[:2]
        boxes = np.array([[0, h * 0.2, w * 0.5, h * 0.8], [w * 0.5, h * 0.2, w, h * 0.8]], np.float32)
        return Detections(boxes, np.zeros((2, 5, 2), np.float32), np.ones(2, np.float32))


class DarkFacesUnusable:
    """The fake method, except that it cannot encode dark crops (as a landmark fit finds no landmarks)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, crops: torch.Tensor):
        from facelab.data.image_io import UnusableFacesError

        dark = [k for k, c in enumerate(crops) if float(c.mean()) < 0.05]
        if dark:
            raise UnusableFacesError("no_landmarks", f"no landmarks in crop(s) {dark}", dark)
        return self.inner.encode(crops)


def test_a_face_the_method_cannot_encode_is_skipped_alone(fake, fake_ckpt, tmp_path, capsys):
    from facelab.cli.reconstruct import ReconstructOptions, run_reconstruct

    inputs = tmp_path / "in"
    inputs.mkdir()
    image = np.zeros((48, 96, 3), np.uint8)
    image[:, 48:] = np.random.default_rng(0).integers(60, 255, (48, 48, 3), dtype=np.uint8)  # the right face
    Image.fromarray(image).save(inputs / "two.png")
    Image.fromarray(np.zeros((48, 96, 3), np.uint8)).save(inputs / "dark.png")
    reconstructor = DarkFacesUnusable(fake.from_checkpoint(str(fake_ckpt)))
    cropper = FaceCropper(TwoFaces(), 32, 1.0, None, min_face=8)
    report = run_reconstruct([inputs], tmp_path / "out", reconstructor, ReconstructOptions(batch_size=4), cropper)
    (entry,) = report["reconstructed"]
    assert entry["input"].endswith("two.png") and entry["faces"] == 1
    (skipped_face,) = entry["skipped_faces"]
    assert skipped_face["reason"] == "no_landmarks"
    kept = 1 - skipped_face["face"]
    assert f"two_face{kept}_mesh.obj" in entry["outputs"] and (tmp_path / "out" / "two_overlay.png").is_file()
    assert not any(f"face{skipped_face['face']}_" in name for name in entry["outputs"])
    # an image whose every face is unusable is skipped with that reason
    (skipped,) = report["skipped"]
    assert skipped["input"].endswith("dark.png") and skipped["reason"] == "no_landmarks"
    assert "face 0 skipped (no_landmarks)" in capsys.readouterr().err


def reconstructor_crop(path: Path, params) -> torch.Tensor:
    """The (1, 3, 32, 32) crop the command made (from the written crop matrix)."""
    from facelab.data.crop import crop_uint8

    image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].double()
    crop = crop_uint8(image, torch.from_numpy(params["crop_matrix"]), 32)
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float().div(255.0)


# ------------------------------------------------------------------------------------------------------------------
# Encodings as arrays, any family and camera
# ------------------------------------------------------------------------------------------------------------------


def test_encoding_arrays_round_trip_for_bilinear_params_and_a_pinhole_camera():
    model = load_model("bilinear", "synthetic:tiny")
    params = model.random_params(2, generator=torch.Generator().manual_seed(0))
    camera = PerspectiveCamera.deep3d(2, image_size=64)
    encoding = FaceEncoding(params=params, camera=camera)
    arrays = encoding_to_arrays(encoding)
    assert set(arrays) == {*params.tensors(), *(f"camera_{k}" for k in ("focal", "principal_point", "rotation",
                                                                         "translation"))}
    assert all(a.dtype == np.float32 and a.shape[0] == 2 for a in arrays.values())
    back = encoding_from_arrays({k: v * 1 for k, v in arrays.items()}, encoding)
    assert type(back.params) is type(params) and back.camera.image_size == camera.image_size
    for name, value in params.tensors().items():
        torch.testing.assert_close(getattr(back.params, name), value.float())
    with pytest.raises(KeyError, match="camera_focal"):
        encoding_from_arrays({k: v for k, v in arrays.items() if k != "camera_focal"}, encoding)


def test_region_topology_of_a_bfm():
    model = load_model("bfm", "synthetic:tiny")
    full = region_topology(model)
    assert torch.equal(full.faces, model.faces) and full.has_uv
    part = region_topology(model, torch.arange(10))
    assert torch.equal(part.vertex_ids[part.faces], model.faces[:10])
    torch.testing.assert_close(part.uv[part.faces_uv], model.uv[model.faces_uv[:10]])


# ------------------------------------------------------------------------------------------------------------------
# The core names no method
# ------------------------------------------------------------------------------------------------------------------


def method_mentions(source: str, names: tuple[str, ...]) -> list[tuple[int, str]]:
    """``(line, what)`` for every identifier, import or string literal of ``source`` that contains one of
    ``names`` (case-insensitive). Docstrings (any string statement) and comments are documentation, left out."""
    pattern = re.compile("|".join(map(re.escape, names)), re.I)
    tree = ast.parse(source)
    docs = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str) and id(node) not in docs and pattern.search(node.value):
                found.append((node.lineno, f"string {node.value[:60]!r}"))
            continue
        for field, value in ast.iter_fields(node):
            if isinstance(value, str) and field != "type_comment" and pattern.search(value):
                found.append((getattr(node, "lineno", 0), f"{type(node).__name__}.{field} {value!r}"))
    return found


def test_the_mention_finder_sees_code_not_docs():
    source = ('"""SMIRK docs."""\nimport smirk.inference  # smirk comment\nfrom x import smirk_lights as l\n'
              'def f(dnpm_arg):\n    """Such as DualStream."""\n    return {"FaceDet3D": facelab.smirk}\n')
    whats = [what for _, what in method_mentions(source, METHOD_NAMES)]
    assert len(whats) == 5 and not any("docs" in w or "Such as" in w or "comment" in w for w in whats)
    assert any("smirk.inference" in w for w in whats) and any("dnpm_arg" in w for w in whats)


def test_the_core_names_no_method():
    names = tuple(sorted({*METHOD_NAMES, *installed_methods()}))
    root = Path(facelab.__file__).parent
    offenders = [f"{path.relative_to(root.parent)}:{line}: {what}" for path in sorted(root.rglob("*.py"))
                 for line, what in method_mentions(path.read_text(), names)]
    assert not offenders, "the core names methods outside docs (move it into the method package):\n" + "\n".join(
        offenders)
