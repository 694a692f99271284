"""``facelab fit --model bfm|bilinear|flame|ict --input PHOTOS --out DIR``: fit a morphable model to photos.

Every face of every image (folders are scanned recursively) is detected (MTCNN), given mediapipe's 478 landmarks
and cropped (the landmarks' bounding box, side ``mean(w, h) * --scale``, ``--size`` pixels), then fitted by
:class:`facelab.fitting.MorphableFitter` in batches: closed-form pose, rigid, landmark and photometric stages
(SH lighting, the model's albedo where it has one). iBUG-68 targets come from mediapipe
(:func:`facelab.fitting.mediapipe_to_ibug68`) or from FAN with ``--fan-checkpoint``. Faces are numbered by
decreasing size. Written to ``--out`` per face, ``NAME = <stem>_face<k>``:

* ``NAME.obj``: the fitted mesh in the model frame (identity and expression, no head rotation; the model's units),
  with UVs and ``NAME.mtl`` -> ``NAME_texture.png`` where the model has a UV layout;
* ``NAME_params.npz``: every coefficient block, ``rotation`` (axis-angle about the model origin), ``camera``
  (``[s, tx, ty]`` weak perspective or ``[fx, fy, cx, cy, tx, ty, tz]``, crop pixels), ``sh`` (27, Deep3DFaceRecon
  layout), ``crop_matrix`` (image pixels -> crop pixels), ``box``, ``score``;
* ``NAME_texture.png`` / ``NAME_visibility.png``: the photo unwrapped into the UV layout and where it was seen;
* ``NAME_overlay.png``: the shaded mesh and the fitted landmarks over the crop; ``NAME_render.png``: the fitted
  albedo x SH rendering over the crop;

and ``report.json``: per face the convergence report (final energies, iterations, converged flag per stage), and
every skipped input or face with the reason (unreadable file, no face, no landmarks). Exit code 0 when a face was
fitted, 1 when none was, 2 for bad options or a missing model.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from facelab.cli.preprocess import check_output_location, collect_inputs
from facelab.cli.reconstruct import FaceCrop, FaceCropper, resolve_device
from facelab.data.crop import transform_points
from facelab.data.image_io import DataError, read_image
from facelab.fitting import FitSchedule, MorphableFitter
from facelab.fitting.photos import photo_targets

__all__ = ["FitOptions", "add_parser", "run_fit"]

MODELS = ("bfm", "bilinear", "flame", "ict")


@dataclass
class FitOptions:
    """Settings of a ``facelab fit`` run (its options).

    Attributes:
        size: crop side in pixels. scale: crop side relative to the face size.
        batch_size: faces fitted together. max_faces: per image, at most this many (largest first).
        min_face: ignore smaller faces (mean MTCNN box side, px).
        camera: ``weak`` or ``perspective``. render_size: side of the photometric renders. uv_size: texture side.
        iterations: budgets of the rigid, landmark and photometric stages.
        device: torch device.
    """

    size: int = 256
    scale: float = 1.6
    batch_size: int = 16
    max_faces: int | None = None
    min_face: int = 32
    camera: str = "weak"
    render_size: int = 128
    uv_size: int = 256
    iterations: tuple[int, int, int] = (50, 200, 60)
    device: str = "cpu"


@dataclass
class _Face:
    """A cropped face waiting to be fitted."""

    name: str
    source: Path
    crop: FaceCrop
    landmarks68: np.ndarray | None  # (68, 2) crop pixels from FAN, or None


def build_fitter(model: torch.nn.Module, options: FitOptions) -> MorphableFitter:
    """The run's fitter for ``model`` (on its device)."""
    rigid, landmarks, photometric = options.iterations
    schedule = FitSchedule(rigid_iterations=rigid, landmark_iterations=landmarks, photometric_iterations=photometric)
    return MorphableFitter(model, camera=options.camera, render_size=options.render_size, uv_size=options.uv_size,
                           schedule=schedule)


def _crop_faces(path: Path, stem: str, cropper: FaceCropper, options: FitOptions, fan, skipped: list) -> list[_Face]:
    image = read_image(path)
    crops = cropper(image, options.max_faces)
    if not crops:
        raise DataError("no_face", "no face found", path)
    fan_points = None
    if fan is not None:
        fan_points = fan(image, np.stack([c.box for c in crops]))[0]
    faces = []
    for k, crop in enumerate(crops):
        name = f"{stem}_face{k}"
        if crop.landmarks is None:
            skipped.append({"input": str(path), "face": name, "reason": "no_landmarks",
                            "detail": f"{path}: mediapipe found no face mesh for face {k}"})
            print(f"facelab fit: skipped {name}: no mediapipe landmarks", file=sys.stderr)
            continue
        lmk68 = None
        if fan_points is not None:
            lmk68 = transform_points(torch.from_numpy(fan_points[k]).double(),
                                     torch.from_numpy(crop.matrix)).float().numpy()
        faces.append(_Face(name=name, source=path, crop=crop, landmarks68=lmk68))
    return faces


def _save_png(path: Path, image: torch.Tensor) -> None:
    from PIL import Image

    array = (image.detach().float().clamp(0, 1).cpu() * 255).round().byte()
    array = array.permute(1, 2, 0).numpy() if array.dim() == 3 else array.numpy()
    Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array).save(path)


def _write_face(out: Path, face: _Face, result, index: int, model) -> list[str]:
    """All files of one fitted face; returns their names."""
    from facelab.io.obj import write_obj

    name = face.name
    written = []
    params = result.params
    rest = model(model.make_params(params.identity[index:index + 1], params.expression[index:index + 1]))
    verts = rest.verts[0].detach().cpu().numpy()
    faces = model.faces.cpu().numpy()
    if model.has_uv:
        (out / f"{name}.mtl").write_text(f"newmtl texture\nKd 1 1 1\nmap_Kd {name}_texture.png\n")
        write_obj(out / f"{name}.obj", verts, faces, model.uv.cpu().numpy(), model.faces_uv.cpu().numpy(),
                  mtl=f"{name}.mtl", material="texture")
        written += [f"{name}.obj", f"{name}.mtl"]
    else:
        write_obj(out / f"{name}.obj", verts, faces)
        written.append(f"{name}.obj")
    arrays = {k: v.numpy() for k, v in result.arrays(index).items()}
    arrays.update(crop_matrix=face.crop.matrix, box=face.crop.box, score=np.float32(face.crop.score),
                  image_size=np.asarray(result.image_size), camera_model=np.asarray(
                      "weak" if result.camera_vector.shape[1] == 3 else "perspective"), units=np.asarray(model.units))
    np.savez(out / f"{name}_params.npz", **arrays)
    written.append(f"{name}_params.npz")
    pngs = {"overlay": result.overlay[index]}
    if result.render is not None:
        crop = torch.from_numpy(face.crop.image).permute(2, 0, 1).float().div(255).to(result.render)
        mask = result.render_mask[index]
        pngs["render"] = result.render[index] * mask + crop * (1 - mask)
    if result.texture is not None:
        pngs["texture"] = result.texture.texture[index]
        pngs["visibility"] = result.texture.visibility[index]
    for suffix, image in pngs.items():
        _save_png(out / f"{name}_{suffix}.png", image)
        written.append(f"{name}_{suffix}.png")
    return written


def run_fit(inputs: list[str], out: str, model, options: FitOptions, cropper: FaceCropper, fan=None) -> dict:
    """Fit every face of the images named by ``inputs``; write the results and ``report.json`` into ``out``.

    Args:
        inputs: folders (scanned recursively) and image files.
        out: output folder (created; not inside an input).
        model: the morphable model (on ``options.device``).
        options: the run settings.
        cropper: detection and cropping (tests inject a stub detector).
        fan: optional :class:`facelab.data.landmarks.FanLandmarks` for the 68 targets.

    Returns:
        The report: ``fitted`` (per face: input, name, outputs, convergence report), ``skipped``, ``faces``.
    """
    out_path = check_output_location(inputs, out)
    images, videos = collect_inputs(inputs)
    skipped = [{"input": str(v), "reason": "video", "detail": f"{v}: videos are not fitted (extract frames)"}
               for v in videos]
    if not images:
        raise ValueError(f"--input {' '.join(map(str, inputs))}: no images found")
    out_path.mkdir(parents=True, exist_ok=True)
    faces: list[_Face] = []
    stems: dict[str, int] = {}
    for path in images:
        stem = path.stem if path.stem not in stems else f"{path.stem}_{stems[path.stem] + 1}"
        stems[path.stem] = stems.get(path.stem, 0) + 1
        try:
            faces += _crop_faces(path, stem, cropper, options, fan, skipped)
        except DataError as err:
            skipped.append({"input": str(path), "reason": err.reason, "detail": str(err)})
            print(f"facelab fit: skipped: {err}", file=sys.stderr)
    fitter = build_fitter(model, options)
    fitted = []
    for start in range(0, len(faces), options.batch_size):
        chunk = faces[start:start + options.batch_size]
        crops = torch.from_numpy(np.stack([f.crop.image for f in chunk])).to(options.device)
        mp = torch.from_numpy(np.stack([f.crop.landmarks for f in chunk])).to(options.device)
        lmk68 = None
        if all(f.landmarks68 is not None for f in chunk):
            lmk68 = torch.from_numpy(np.stack([f.landmarks68 for f in chunk])).to(options.device)
        result = fitter.fit(photo_targets(crops, mp, lmk68))
        for i, face in enumerate(chunk):
            outputs = _write_face(out_path, face, result, i, model)
            fitted.append({"input": str(face.source), "name": face.name, "outputs": outputs,
                           "fit": result.report.face(i)})
    report = {"model": type(model).__name__, "options": asdict(options), "faces": len(fitted), "fitted": fitted,
              "skipped": skipped}
    (out_path / "report.json").write_text(json.dumps(report, indent=1))
    return report


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``facelab fit`` on the ``facelab`` command's subparsers."""
    parser = sub.add_parser("fit", help="fit a morphable model to photos (mesh, parameters, texture, overlay)",
                            description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    parser.add_argument("--model", required=True, choices=MODELS, help="morphable model family")
    parser.add_argument("--model-path", default=None,
                        help="the model's asset as downloaded (file or folder); default: the synthetic stand-in "
                             "(ICT needs its FaceXModel folder)")
    parser.add_argument("--input", "-i", action="append", required=True, metavar="PATH",
                        help="image folder (scanned recursively) or image file; repeat for several")
    parser.add_argument("--out", "-o", required=True, help="output folder (created; must not be inside an input)")
    parser.add_argument("--iterations", type=int, nargs=3, default=[50, 200, 60], metavar=("RIGID", "LMK", "PHOTO"),
                        help="iteration budgets of the rigid, landmark and photometric stages (0 skips one)")
    parser.add_argument("--camera", choices=["weak", "perspective"], default="weak")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--size", type=int, default=256, help="crop side (px)")
    parser.add_argument("--scale", type=float, default=1.6, help="crop side relative to the face size")
    parser.add_argument("--render-size", type=int, default=128, help="side of the photometric renders")
    parser.add_argument("--uv-size", type=int, default=256, help="side of the unwrapped texture")
    parser.add_argument("--batch-size", type=int, default=16, help="faces fitted together")
    parser.add_argument("--max-faces", type=int, default=None, help="per image, at most this many faces")
    parser.add_argument("--min-face", type=int, default=32, help="ignore faces smaller than this (px)")
    parser.add_argument("--fan-checkpoint", default=None,
                        help="FAN TorchScript file (face_alignment's 2DFAN4) for the 68 targets; default: mediapipe")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from facelab.data.detect import FaceDetector
    from facelab.data.landmarks import FanLandmarks, MediapipeFaceMesh
    from facelab.morphable import load_model

    if args.batch_size < 1 or args.size < 32 or args.scale <= 0 or min(args.iterations) < 0:
        raise ValueError("need --batch-size >= 1, --size >= 32, --scale > 0 and --iterations >= 0")
    if args.model == "ict" and args.model_path is None:
        raise ValueError("--model ict needs --model-path (ICT-FaceKit's FaceXModel folder; it has no stand-in)")
    options = FitOptions(size=args.size, scale=args.scale, batch_size=args.batch_size, max_faces=args.max_faces,
                         min_face=args.min_face, camera=args.camera, render_size=args.render_size,
                         uv_size=args.uv_size, iterations=tuple(args.iterations), device=resolve_device(args.device))
    check_output_location(args.input, args.out)
    collect_inputs(args.input)  # missing inputs fail before the model loads
    model = load_model(args.model, args.model_path or "synthetic").to(options.device).eval()
    fan = FanLandmarks(args.fan_checkpoint, device=options.device) if args.fan_checkpoint else None
    landmarker = MediapipeFaceMesh(refine_landmarks=True)
    detector = FaceDetector(device=options.device, min_face_size=min(20, options.min_face))
    try:
        report = run_fit(args.input, args.out, model, options,
                         FaceCropper(detector, options.size, options.scale, landmarker, options.min_face), fan)
    finally:
        landmarker.close()
    print(f"fit: {report['faces']} face(s), {len(report['skipped'])} skipped; results in {args.out} "
          f"(details: {Path(args.out) / 'report.json'})", file=sys.stderr)
    return 0 if report["faces"] else 1
