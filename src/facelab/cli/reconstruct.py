"""``facelab reconstruct --method NAME --ckpt CKPT --input PATH [...] --out DIR``: 3D faces of images and videos.

Methods plug in through :mod:`facelab.methods` (``--method`` names an installed one; an unknown name lists them);
a method's own options follow the common ones (``facelab methods NAME`` lists them). Every face of every image
(folders are scanned recursively) is detected (MTCNN), cropped the way the method was trained (``--crop
landmarks``: the bounding box of mediapipe's 478 landmarks, side ``mean(w, h) * --scale``; the MTCNN box when
mediapipe is unavailable or finds no mesh, or with ``--crop box``) and reconstructed. Faces are numbered by
decreasing size (``face0`` is the largest). Written to ``--out`` per face, with ``NAME = <stem>_face<k>``:

* ``NAME_<mesh>.obj`` for each mesh the method declares (:attr:`Reconstructor.meshes`; e.g. ``head`` for the whole
  model in its vertex order and ``face`` for a region, vertices and UVs re-indexed), with UVs where the model has
  them;
* ``NAME_params.npz`` / ``NAME_params.json``: the model's parameters, one array per field of its params dataclass
  (``identity``, ``expression``, the family's poses...), the camera's fields as ``camera_<field>``, the crop
  (``crop_matrix`` maps image pixels to crop pixels, ``crop_to_image`` back; ``box``, ``score``) and a
  ``conventions`` text saying how to map them back to the image;
* ``NAME_overlay.png``: the rendered face over the crop; ``NAME_<image>.png`` for each extra image the method
  returns (:attr:`Reconstruction.extra_images`, such as SMIRK's translator output), ``NAME_<array>.npy`` for each
  extra array and a single-channel 16-bit ``NAME_<map>.png`` for each 16-bit map (:attr:`Reconstruction.extra_png16`,
  such as DNPM's displacement maps in FaceScape's encoding);

and per image ``<stem>_overlay.png``: every face's render pasted back into the full image. Per video (the largest
face of the first frame, followed by box overlap; frames where it is lost take the largest face again):
``<stem>_overlay.mp4`` (every processed frame, faces overlaid), ``<stem>_params.npz`` / ``.json`` with (T, ...)
arrays, the frame indices and fps (``<stem>_<image>.mp4`` for the extra images, per-frame OBJs with
``--save-meshes``). ``--smooth N`` averages the parameters and the crop matrices over a centred window of N
processed frames before meshes and overlays are made (see :func:`smooth_sequence`).

Bad inputs never stop a run: unreadable files and images without a face are reported (``no face found in X``),
skipped and listed in ``OUT/report.json``. A face the method cannot encode (it raises
:class:`facelab.data.image_io.UnusableFacesError`, e.g. no landmarks found in that crop) is dropped alone: the
other faces of the image are reconstructed and the entry lists it under ``skipped_faces`` (in a video, such a frame
counts as one without the face). Exit code: 0 when at least one face was reconstructed, 1 when nothing was
(every input skipped), 2 for errors that stop the run (unknown method, missing or unreadable checkpoint or model,
bad options).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from facelab.cli.preprocess import (
    check_output_location,
    collect_inputs,
)
from facelab.data.crop import (
    crop_params,
    crop_uint8,
    invert_affine,
    mesh_landmarks_in_box,
    paste_back,
    transform_points,
    warp_crop,
)
from facelab.data.image_io import DataError, UnusableFacesError, read_image
from facelab.data.video import iter_frames, probe_video
from facelab.masks import convex_hull_mask
from facelab.methods import Method, parse_method_options, resolve_method
from facelab.reconstruction import (
    FaceEncoding,
    Reconstruction,
    Reconstructor,
    describe_conventions,
    encoding_from_arrays,
    encoding_to_arrays,
)

__all__ = ["FaceCrop", "FaceCropper", "ReconstructOptions", "Reconstructor", "add_parser", "load_reconstructor",
           "run_reconstruct", "smooth_sequence"]

#: Faces whose detection box overlaps the previous frame's by at least this IoU continue a video's track.
TRACK_MIN_IOU = 0.3


@dataclass
class ReconstructOptions:
    """Settings of a reconstruction run (the ``facelab reconstruct`` options).

    Attributes:
        batch_size: crops per network call.
        smooth: video: centred moving-average window in processed frames (0 or 1: off).
        max_faces: images: reconstruct at most this many faces, the largest (None: all).
        min_face: ignore faces whose MTCNN box is smaller (mean side, px).
        min_score: MTCNN detection threshold.
        scale: crop side relative to the face size (the method's, e.g. 1.6).
        crop: ``"landmarks"`` (the bounding box of mediapipe's landmarks; falls back to the detection box per face)
            or ``"box"``.
        every_nth_frame: video frame sub-sampling.
        max_frames: at most this many processed frames per video (None: all).
        save_meshes: video: also write the OBJs of every processed frame.
        device: torch device of the networks and the detector.
    """

    batch_size: int = 16
    smooth: int = 0
    max_faces: int | None = None
    min_face: int = 32
    min_score: float = 0.9
    scale: float = 1.6
    crop: str = "landmarks"
    every_nth_frame: int = 1
    max_frames: int | None = None
    save_meshes: bool = False
    device: str = "cpu"


# ------------------------------------------------------------------------------------------------------------------
# Detection and cropping
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class FaceCrop:
    """One detected face, cropped.

    Attributes:
        image: (S, S, 3) uint8 RGB crop.
        matrix: (2, 3) float64 similarity mapping image pixels to crop pixels (:mod:`facelab.data.crop`).
        box: (4,) float32 MTCNN box ``[u0, v0, u1, v1]`` in image pixels.
        score: detection probability.
        landmarks: (478, 2) float32 mediapipe landmarks in crop pixels (their convex hull is the face hull some
            methods use), or None (box crops).
        method: ``"landmarks"`` (from the landmarks' bounding box) or ``"box"`` (from the detection box).
    """

    image: np.ndarray
    matrix: np.ndarray
    box: np.ndarray
    score: float
    landmarks: np.ndarray | None
    method: str


class FaceCropper:
    """Detect faces and crop them the way the method was trained (preprocessing's crop).

    Args:
        detector: ``image (H, W, 3) uint8 -> Detections`` (:class:`facelab.data.detect.FaceDetector`, or a stub).
        size: crop side ``S``.
        scale: crop side relative to the face size.
        landmarker: ``image -> (478, 2) pixels or None`` (:class:`facelab.data.landmarks.MediapipeFaceMesh`) for
            the landmark crop; None: crops from the detection boxes (MTCNN's box and mediapipe's landmark box
            have about the same size, the box is centred a little higher).
        min_face: smaller faces (mean box side, px) are ignored.
    """

    def __init__(self, detector: Callable, size: int, scale: float = 1.6, landmarker: Callable | None = None,
                 min_face: int = 32):
        self.detector, self.landmarker = detector, landmarker
        self.size, self.scale, self.min_face = int(size), float(scale), min_face

    def detect(self, image: np.ndarray):
        """Detections of ``image`` at least ``min_face`` px, largest first (``Detections``)."""
        return self.detect_many([image])[0]

    def detect_many(self, images: list[np.ndarray]) -> list:
        """:meth:`detect` of several images of one size (one MTCNN batch when the detector has ``detect_batch``)."""
        batch = getattr(self.detector, "detect_batch", None)
        found = batch(images) if batch is not None else [self.detector(image) for image in images]
        found = [dets.filter(min_size=self.min_face) for dets in found]
        return [dets.select(np.argsort(-dets.sizes, kind="stable")) for dets in found]

    def __call__(self, image: np.ndarray, max_faces: int | None = None) -> list[FaceCrop]:
        """Crops of every face (largest first; at most ``max_faces``). An empty list when none is found."""
        dets = self.detect(image)
        count = len(dets) if max_faces is None else min(max_faces, len(dets))
        return [self.crop(image, dets.boxes[i], float(dets.scores[i])) for i in range(count)]

    def crop(self, image: np.ndarray, box: np.ndarray, score: float = 1.0) -> FaceCrop:
        """Crop one face given its detection box (same steps as ``facelab preprocess``).

        Args:
            image: (H, W, 3) uint8 RGB.
            box: (4,) ``[u0, v0, u1, v1]`` pixels.
            score: the detection score (recorded).
        """
        src = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].double()
        box_t = torch.as_tensor(np.asarray(box, np.float64))
        landmarks = self._landmarks(src, box_t) if self.landmarker is not None else None
        matrix = crop_params(landmarks if landmarks is not None else box_t, self.scale, self.size)
        crop = crop_uint8(src, matrix, self.size)
        if landmarks is not None:
            landmarks = transform_points(landmarks, matrix).float().numpy()
        return FaceCrop(image=crop, matrix=matrix.numpy(), box=np.asarray(box, np.float32), score=score,
                        landmarks=landmarks, method="box" if landmarks is None else "landmarks")

    def _landmarks(self, src: torch.Tensor, box: torch.Tensor) -> torch.Tensor | None:
        """(478, 2) float64 mediapipe landmarks in image pixels of the face in ``box``, or None (no mesh found, or
        the mesh found belongs to a neighbouring face: the crop then falls back to the box)."""
        try:
            return mesh_landmarks_in_box(src, box, self.landmarker)
        except DataError:
            return None


def build_cropper(options: ReconstructOptions, size: int, detector: Callable | None = None,
                  landmarker: Callable | str | None = "auto") -> FaceCropper:
    """The run's :class:`FaceCropper`: MTCNN unless ``detector`` is given; mediapipe when ``options.crop`` is
    ``"landmarks"`` and ``landmarker`` is ``"auto"`` (with a note if mediapipe is not installed)."""
    if detector is None:
        from facelab.data.detect import FaceDetector

        detector = FaceDetector(device=options.device, min_face_size=min(20, options.min_face),
                                min_score=options.min_score)
    if landmarker == "auto":
        landmarker = None
        if options.crop == "landmarks":
            try:
                from facelab.data.landmarks import MediapipeFaceMesh

                landmarker = MediapipeFaceMesh(refine_landmarks=True)
            except ImportError as err:
                print(f"facelab reconstruct: note: {err}; cropping from the MTCNN boxes instead", file=sys.stderr)
    return FaceCropper(detector, size, options.scale, landmarker, options.min_face)


# ------------------------------------------------------------------------------------------------------------------
# The method
# ------------------------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu (or auto)")
    return device


def load_reconstructor(method: str | Method | None, ckpt: str, model_path: str | None = None, device: str = "cpu",
                       method_options: list[str] | argparse.Namespace | None = None) -> Reconstructor:
    """Build an installed method's reconstructor from a checkpoint (:mod:`facelab.methods`).

    Args:
        method: the method's name, the :class:`~facelab.methods.Method` itself, or None for the only installed
            method with ``facelab reconstruct`` support.
        ckpt: its checkpoint.
        model_path: the morphable model asset (``--model-path``); None: the one the checkpoint was trained with.
        device: where it runs.
        method_options: the method's own options, as command-line words or already parsed; None: its defaults.

    Raises:
        UnknownMethodError: unknown method (the message lists the installed ones) or one without reconstruction.
        MissingAssetError / AssetFormatError / ValueError: from the method's checkpoint loading.
    """
    entry_method = method if isinstance(method, Method) else resolve_method(method, "reconstruct")
    entry = entry_method.reconstruct
    if entry is None:
        raise ValueError(f"--method {entry_method.name}: it has no `facelab reconstruct` support")
    if not isinstance(method_options, argparse.Namespace):
        method_options = parse_method_options(entry_method, "reconstruct", entry.add_arguments,
                                              list(method_options or []))
    return entry.from_checkpoint(ckpt, model_path=model_path, device=device, options=method_options,
                                 config_key="--ckpt")


def smooth_sequence(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along the first (time) axis; the window shrinks at the ends.

    Used on the parameters (identity, expression, poses, camera: every array of :func:`encoding_to_arrays`) and
    the crop matrices. Every output is a convex combination of nearby frames, so box constraints (e.g. eyelids or
    blendshape weights in [0, 1], a jaw's clamps) still hold. Poses are axis-angle vectors: averaging them is a good
    approximation of rotation averaging for the small rotation differences within a short window (not across the
    +-pi wrap-around, which faces do not reach). Crop matrices are similarities ``[[a, b, tu], [-b, a, tv]]``; their
    average is again one, and smoothing them with the camera keeps each camera consistent with its crop.

    Args:
        values: (T, ...) per-frame values.
        window: frames averaged (an even window is widened by one to stay centred); <= 1 returns a copy.

    Returns:
        (T, ...) float64.
    """
    values = np.asarray(values, np.float64)
    if window <= 1 or len(values) < 2:
        return values.copy()
    half = window // 2
    padded = np.concatenate([np.zeros_like(values[:1]), np.cumsum(values, axis=0)])
    t = np.arange(len(values))
    lo, hi = np.clip(t - half, 0, len(values)), np.clip(t + half + 1, 0, len(values))
    counts = (hi - lo).reshape(-1, *([1] * (values.ndim - 1)))
    return (padded[hi] - padded[lo]) / counts


# ------------------------------------------------------------------------------------------------------------------
# Writing results
# ------------------------------------------------------------------------------------------------------------------


def _image_tensor(images: list[np.ndarray], device) -> torch.Tensor:
    """(N, H, W, 3) uint8 list -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float().div(255.0)


def _uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def _save_png16(path: Path, levels: torch.Tensor) -> None:
    """(H, W) integer levels in [0, 65535] -> a lossless single-channel 16-bit PNG."""
    array = levels.detach().cpu().numpy()
    if array.ndim != 2 or not np.isfinite(array).all() or array.min() < 0 or array.max() > 65535:
        raise ValueError(f"{path.name}: a 16-bit map must be (H, W) levels in [0, 65535], got {array.shape} in "
                         f"[{array.min()}, {array.max()}]")
    _save_png(path, np.rint(array).astype(np.uint16))


def composite_overlays(image: np.ndarray, renders: torch.Tensor, masks: torch.Tensor, matrices: np.ndarray,
                       alpha: float = 0.6) -> np.ndarray:
    """Paste crop-space renders back into the full image, blended like the crop overlays.

    Args:
        image: (H, W, 3) uint8.
        renders: (N, 3, S, S) renders in [0, 1], 0 on the background. masks: (N, 1, S, S) their coverage.
        matrices: (N, 2, 3) image-to-crop matrices.
        alpha: opacity of the meshes.

    Returns:
        (H, W, 3) uint8.
    """
    out = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)
    size = image.shape[:2]
    for render, mask, matrix in zip(renders.float().cpu(), masks.float().cpu(), np.asarray(matrices)):
        rgba = torch.cat([render * mask, mask])[None]  # colour premultiplied by coverage
        pasted, _ = paste_back(rgba, torch.from_numpy(matrix)[None].float(), size)
        colour, cover = pasted[0, :3], pasted[0, 3:].clamp(0, 1)
        out = out * (1 - alpha * cover) + alpha * colour
    return _uint8(out)


def _write_meshes(out: Path, name: str, verts: np.ndarray, reconstructor: Reconstructor) -> list[str]:
    """``name_<mesh>.obj`` for each of the method's meshes (with UVs where the model has them). Returns the names."""
    from facelab.io.obj import write_obj

    written = []
    for suffix, topo in reconstructor.meshes.items():
        uv = topo.uv.numpy() if topo.uv.numel() else None
        mtl = None
        if getattr(topo, "texture", None) is not None and uv is not None:
            mtl = f"{name}_{suffix}.mtl"
            (out / mtl).write_text(f"newmtl texture\nKd 1 1 1\nmap_Kd {name}_{topo.texture}.png\n")
            written.append(mtl)
        write_obj(out / f"{name}_{suffix}.obj", verts[topo.vertex_ids.numpy()], topo.faces.numpy(), uv,
                  topo.faces_uv.numpy() if uv is not None else None,
                  **({"mtl": mtl, "material": "texture"} if mtl else {}))
        written.append(f"{name}_{suffix}.obj")
    return written


def _write_params(out: Path, name: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """``name_params.npz`` (arrays and scalar metadata) and ``name_params.json`` (the same, as lists)."""
    clash = set(arrays) & set(meta)
    if clash:
        raise ValueError(f"parameter arrays {sorted(clash)} collide with the metadata keys of {name}_params")
    np.savez(out / f"{name}_params.npz", **arrays,
             **{k: np.asarray(v) for k, v in meta.items() if isinstance(v, (int, float, str))})
    doc = {**meta, **{k: np.asarray(v).tolist() for k, v in arrays.items()}}
    (out / f"{name}_params.json").write_text(json.dumps(doc, indent=1))


def _conventions(reconstructor: Reconstructor, encoding: FaceEncoding) -> str:
    return describe_conventions(encoding, str(getattr(reconstructor.model, "units", "model units")))


def _crop_arrays(crops: list[FaceCrop]) -> dict[str, np.ndarray]:
    matrices = np.stack([c.matrix for c in crops])
    return {"crop_matrix": matrices, "crop_to_image": invert_affine(torch.from_numpy(matrices)).numpy(),
            "box": np.stack([c.box for c in crops]), "score": np.asarray([c.score for c in crops], np.float32)}


def _hull_batch(crops: list[FaceCrop], size: int, device, needed: bool = True) -> torch.Tensor | None:
    """(N, 1, S, S) convex hulls of the crops' mediapipe landmarks (the face hull); all-zero rows for box crops
    (the method then uses its own estimate). None when not ``needed`` (the method does not use it)."""
    if not needed:
        return None
    hulls = torch.zeros(len(crops), 1, size, size, device=device)
    rows = [i for i, c in enumerate(crops) if c.landmarks is not None]
    if rows:
        points = torch.from_numpy(np.stack([crops[i].landmarks for i in rows])).to(device)
        hulls[rows] = convex_hull_mask(points, (size, size)).to(hulls)
    return hulls


# ------------------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class _Report:
    """What happened to every input (written to ``OUT/report.json``)."""

    reconstructed: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    @property
    def faces(self) -> int:
        return sum(item["faces"] for item in self.reconstructed)

    def skip(self, path: Path, reason: str, detail: str) -> None:
        self.skipped.append({"input": str(path), "reason": reason, "detail": detail})
        print(f"facelab reconstruct: skipped: {detail}", file=sys.stderr)


def run_reconstruct(inputs: list[str | os.PathLike], out: str | os.PathLike, reconstructor: Reconstructor,
                    options: ReconstructOptions, cropper: FaceCropper, progress: bool = False) -> dict:
    """Reconstruct every face of the images and videos named by ``inputs`` into ``out``.

    Args:
        inputs: folders (scanned recursively), image files and video files.
        out: output folder (created; not inside an input).
        reconstructor: the method (:func:`load_reconstructor`).
        options: the run settings.
        cropper: detection and cropping (:func:`build_cropper`; tests inject a stub detector here).
        progress: show a progress bar on stderr.

    Returns:
        The report written to ``out/report.json``: ``reconstructed`` (input, faces, outputs, and
        ``skipped_faces`` when some faces of it could not be encoded) and ``skipped``
        (input, reason, detail) lists, ``faces``.

    Raises:
        FileNotFoundError: an input does not exist. ValueError: no images or videos found, or a bad output
            folder.
    """
    from tqdm import tqdm

    out_path = check_output_location(inputs, out)
    images, videos = collect_inputs(inputs)
    if not images and not videos:
        raise ValueError(f"--input {' '.join(map(str, inputs))}: no images or videos found")
    out_path.mkdir(parents=True, exist_ok=True)
    names = {**_output_names(images), **_output_names(videos)}  # image and video outputs never share a name
    work = [(path, _reconstruct_image) for path in images] + [(path, _reconstruct_video) for path in videos]
    report = _Report()
    for path, reconstruct_file in tqdm(work, disable=not progress, unit="file", desc="reconstruct",
                                       dynamic_ncols=True):
        try:
            outputs, faces, skipped_faces = reconstruct_file(path, names[path], out_path, reconstructor, options,
                                                             cropper)
        except DataError as err:
            report.skip(path, err.reason, str(err))
        except Exception as err:  # one bad file must never stop a long run; it is reported
            report.skip(path, "error", f"{path}: {type(err).__name__}: {err}")
        else:
            entry = {"input": str(path), "faces": faces, "outputs": outputs}
            report.reconstructed.append({**entry, "skipped_faces": skipped_faces} if skipped_faces else entry)
    result = {"settings": reconstructor.settings(), "options": asdict(options), "faces": report.faces,
              "reconstructed": report.reconstructed, "skipped": report.skipped}
    (out_path / "report.json").write_text(json.dumps(result, indent=1))
    return result


def _output_names(paths: list[Path]) -> dict[Path, str]:
    """File stems, made unique (``<stem>_2``, ...) when inputs from different folders share one."""
    names, used = {}, set()
    for path in paths:
        name, k = path.stem, 1
        while name in used:
            k += 1
            name = f"{path.stem}_{k}"
        used.add(name)
        names[path] = name
    return names


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last may be shorter) of any iterable."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _reconstruct_image(path: Path, stem: str, out: Path, reconstructor: Reconstructor, options: ReconstructOptions,
                       cropper: FaceCropper) -> tuple[list[str], int, list[dict]]:
    """All faces of one image. Returns the written file names, the face count and the faces the method could not
    encode (face index, reason, detail); DataError when no face is found or none could be encoded."""
    image = read_image(path, min_side=16)
    crops = cropper(image, options.max_faces)
    if not crops:
        raise DataError("no_face", f"no face found in {path}")
    device, size = _device(reconstructor), reconstructor.image_size
    written, renders, masks, used, unusable = [], [], [], [], []
    for first, batch in zip(range(0, len(crops), options.batch_size), _chunks(crops, options.batch_size)):
        keep, encoding, dropped = _encode_usable(reconstructor, batch, device)
        for k, err in dropped:
            unusable.append((first + k, err))
            print(f"facelab reconstruct: {path}: face {first + k} skipped ({err.reason}): {err}", file=sys.stderr)
        if encoding is None:
            continue
        numbers, batch = [first + k for k in keep], [batch[k] for k in keep]
        used += batch
        images = _image_tensor([c.image for c in batch], device)
        hull = _hull_batch(batch, size, device, reconstructor.uses_face_hull)
        result = reconstructor.decode(encoding, images, hull)
        arrays, crop_arrays = encoding_to_arrays(encoding), _crop_arrays(batch)
        conventions = _conventions(reconstructor, encoding)
        verts = result.verts.float().cpu().numpy()
        for i, crop in enumerate(batch):
            name = f"{stem}_face{numbers[i]}"
            meta = {"source": str(path), "face": numbers[i], "crop_size": size, "crop_method": crop.method,
                    "image_height": image.shape[0], "image_width": image.shape[1], **reconstructor.settings(),
                    "conventions": conventions}
            _write_params(out, name, {**{k: v[i] for k, v in arrays.items()},
                                      **{k: v[i] for k, v in crop_arrays.items()}}, meta)
            written += _write_meshes(out, name, verts[i], reconstructor)
            _save_png(out / f"{name}_overlay.png", _uint8(result.overlay[i]))
            written += [f"{name}_{s}" for s in ("params.npz", "params.json", "overlay.png")]
            for key, extra in _extra_images(result, reconstructor).items():
                _save_png(out / f"{name}_{key}.png", _uint8(extra[i]))
                written.append(f"{name}_{key}.png")
            for key, array in _extra_arrays(result, reconstructor).items():
                np.save(out / f"{name}_{key}.npy", array[i].detach().float().cpu().numpy())
                written.append(f"{name}_{key}.npy")
            for key, levels in _extra_png16(result, reconstructor).items():
                _save_png16(out / f"{name}_{key}.png", levels[i])
                written.append(f"{name}_{key}.png")
        renders.append(result.render.cpu())
        masks.append(result.render_mask.cpu())
    if not used:
        k, err = unusable[0]
        raise DataError(err.reason, f"no face of {path} could be reconstructed (face {k}: {err})")
    overlay = composite_overlays(image, torch.cat(renders), torch.cat(masks), np.stack([c.matrix for c in used]))
    _save_png(out / f"{stem}_overlay.png", overlay)
    skipped = [{"face": k, "reason": err.reason, "detail": str(err)} for k, err in unusable]
    return [*written, f"{stem}_overlay.png"], len(used), skipped


def _encode_usable(reconstructor: Reconstructor, crops: list[FaceCrop], device: torch.device
                   ) -> tuple[list[int], FaceEncoding | None, list[tuple[int, UnusableFacesError]]]:
    """Encode a batch of crops, dropping the faces the method reports unusable (:class:`UnusableFacesError`).

    Returns:
        ``(kept, encoding, dropped)``: indices of the encoded crops, their encoding (None when none is usable), and
        ``(index, error)`` of each dropped crop.
    """
    keep, dropped = list(range(len(crops))), []
    while keep:
        try:
            return keep, reconstructor.encode(_image_tensor([crops[k].image for k in keep], device)), dropped
        except UnusableFacesError as err:
            bad = {keep[j] for j in err.faces if 0 <= j < len(keep)}
            if not bad:
                raise
            dropped += [(k, err) for k in sorted(bad)]
            keep = [k for k in keep if k not in bad]
    return keep, None, dropped


def _device(reconstructor: Reconstructor) -> torch.device:
    return getattr(reconstructor, "device", torch.device("cpu"))


def _extra_images(result: Reconstruction, reconstructor: Reconstructor) -> dict[str, torch.Tensor]:
    """The method's extra images, their names checked (they become file names)."""
    reserved = {"overlay", "params", *reconstructor.meshes}
    for key in result.extra_images:
        if not key.replace("_", "").isalnum() or key in reserved:
            raise ValueError(f"extra image name {key!r}: use letters, digits and '_' (not {sorted(reserved)})")
    return result.extra_images


def _extra_arrays(result: Reconstruction, reconstructor: Reconstructor) -> dict[str, torch.Tensor]:
    """The method's extra arrays (``getattr``: reconstructions built before the field existed have none), names
    checked like the images' (an array may share an image's name: ``NAME_asm.npy`` beside ``NAME_asm.png``)."""
    arrays = getattr(result, "extra_arrays", None) or {}
    reserved = {"overlay", "params", *reconstructor.meshes}  # an image of the same name is a .png: no clash
    for key in arrays:
        if not key.replace("_", "").isalnum() or key in reserved:
            raise ValueError(f"extra array name {key!r}: use letters, digits and '_' (not {sorted(reserved)})")
    return arrays


def _extra_png16(result: Reconstruction, reconstructor: Reconstructor) -> dict[str, torch.Tensor]:
    """The method's 16-bit maps (``getattr``: reconstructions built before the field existed have none), names
    checked like the images' and distinct from them (both are ``NAME_<key>.png``)."""
    maps = getattr(result, "extra_png16", None) or {}
    reserved = {"overlay", "params", *reconstructor.meshes, *result.extra_images}
    for key in maps:
        if not key.replace("_", "").isalnum() or key in reserved:
            raise ValueError(f"16-bit map name {key!r}: use letters, digits and '_' (not {sorted(reserved)})")
    return maps


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``[u0, v0, u1, v1]`` boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union) if union > 0 else 0.0


def _track_face(dets, previous_box: np.ndarray | None) -> int | None:
    """Index of the face continuing the track: the best overlap with the previous box, else the largest."""
    if len(dets) == 0:
        return None
    if previous_box is not None:
        overlaps = [_iou(box, previous_box) for box in dets.boxes]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= TRACK_MIN_IOU:
            return best
    return 0  # detections are sorted largest first


def _reconstruct_video(path: Path, stem: str, out: Path, reconstructor: Reconstructor, options: ReconstructOptions,
                       cropper: FaceCropper) -> tuple[list[str], int, list[dict]]:
    """One face track of a video: encode every processed frame, smooth, then render and write (a second pass)."""
    info = probe_video(path)
    frames, crops, encodings, like = _encode_track(path, reconstructor, options, cropper)
    if not frames:
        raise DataError("no_face", f"no face found in {path} (any processed frame)")
    arrays = {k: np.concatenate([e[k] for e in encodings]) for k in encodings[0]}
    crop_arrays = _crop_arrays(crops)
    if options.smooth > 1:
        arrays = {k: smooth_sequence(v, options.smooth).astype(np.float32) for k, v in arrays.items()}
        crop_arrays["crop_matrix"] = smooth_sequence(crop_arrays["crop_matrix"], options.smooth)
        crop_arrays["crop_to_image"] = invert_affine(torch.from_numpy(crop_arrays["crop_matrix"])).numpy()
    fps = (info.fps if info.fps > 0 else 25.0) / options.every_nth_frame
    meta = {"source": str(path), "fps": fps, "num_frames": len(frames), "smooth_window": options.smooth,
            "crop_size": reconstructor.image_size, "image_height": info.height, "image_width": info.width,
            **reconstructor.settings(), "conventions": _conventions(reconstructor, like)}
    _write_params(out, stem, {**arrays, **crop_arrays, "frames": np.asarray(frames, np.int64),
                              "crop_method_is_landmarks": np.asarray([c.method == "landmarks" for c in crops])},
                  meta)
    written = [f"{stem}_params.npz", f"{stem}_params.json"]
    written += _render_track(path, stem, out, reconstructor, options, frames, crops, arrays, like,
                             crop_arrays["crop_matrix"], fps)
    return written, len(frames), []


def _encode_track(path: Path, reconstructor: Reconstructor, options: ReconstructOptions, cropper: FaceCropper
                  ) -> tuple[list[int], list[FaceCrop], list[dict[str, np.ndarray]], FaceEncoding | None]:
    """First pass: the tracked face's crop and parameters in every processed frame that has it.

    Returns:
        ``(frames, crops, encodings, like)``: frame indices, their crops (geometry and landmarks only), the
        parameter arrays of consecutive chunks of them, and the first chunk's encoding (the types and non-tensor
        fields the arrays are decoded with; None when no frame has the face).
    """
    device = _device(reconstructor)
    frames, crops, encodings, previous, like = [], [], [], None, None
    for chunk in _chunks(iter_frames(path, every_nth=options.every_nth_frame, max_frames=options.max_frames),
                         options.batch_size):
        found = []
        for (index, frame), dets in zip(chunk, cropper.detect_many([frame for _, frame in chunk])):
            k = _track_face(dets, previous)
            if k is not None:
                previous = dets.boxes[k]
                frames.append(index)
                found.append(cropper.crop(frame, dets.boxes[k], float(dets.scores[k])))
        keep, encoding, _ = _encode_usable(reconstructor, found, device)  # unusable faces: as frames without one
        if encoding is not None:
            frames = frames[: len(frames) - len(found)] + [frames[len(frames) - len(found) + k] for k in keep]
            like = encoding if like is None else like
            encodings.append(encoding_to_arrays(encoding))
            crops += [_drop_pixels(found[k]) for k in keep]  # the second pass re-makes the crops from the matrices
        else:
            del frames[len(frames) - len(found):]
    return frames, crops, encodings, like


def _drop_pixels(crop: FaceCrop) -> FaceCrop:
    """Keep a video crop's geometry and landmarks, not its pixels, until the second pass."""
    return FaceCrop(image=np.zeros((0, 0, 3), np.uint8), matrix=crop.matrix, box=crop.box, score=crop.score,
                    landmarks=crop.landmarks, method=crop.method)


def _render_track(path: Path, stem: str, out: Path, reconstructor: Reconstructor, options: ReconstructOptions,
                  frames: list[int], crops: list[FaceCrop], arrays: dict[str, np.ndarray], like: FaceEncoding,
                  matrices: np.ndarray, fps: float) -> list[str]:
    """Second pass: meshes of the (smoothed) parameters, rendered over each frame, written as mp4 (+ OBJs)."""
    size, device = reconstructor.image_size, _device(reconstructor)
    row_of = {frame: row for row, frame in enumerate(frames)}
    overlay_video = _Mp4Writer(out / f"{stem}_overlay.mp4", fps)
    extra_videos: dict[str, _Mp4Writer] = {}  # one per extra image of the method, opened at its first frame
    meshes: list[str] = []
    try:
        for chunk in _chunks(iter_frames(path, every_nth=options.every_nth_frame, max_frames=options.max_frames),
                             options.batch_size):
            with_face = [(index, frame) for index, frame in chunk if index in row_of]
            overlays = {}
            if with_face:
                rows = [row_of[index] for index, _ in with_face]
                src = torch.from_numpy(np.stack([frame for _, frame in with_face])).permute(0, 3, 1, 2).double()
                images = warp_crop(src, torch.from_numpy(matrices[rows]), size).div(255.0).clamp(0, 1).float()
                hull = _hull_batch([crops[r] for r in rows], size, device, reconstructor.uses_face_hull)
                encoding = encoding_from_arrays({name: value[rows] for name, value in arrays.items()}, like)
                result = reconstructor.decode(encoding, images.to(device), hull)
                extras = _extra_images(result, reconstructor)
                verts = result.verts.float().cpu().numpy()
                for k, (index, frame) in enumerate(with_face):
                    overlays[index] = composite_overlays(frame, result.render[k:k + 1], result.render_mask[k:k + 1],
                                                         matrices[rows[k]][None])
                    for key, extra in extras.items():
                        if key not in extra_videos:
                            extra_videos[key] = _Mp4Writer(out / f"{stem}_{key}.mp4", fps)
                        extra_videos[key].write(_uint8(extra[k]))
                    if options.save_meshes:
                        meshes += _write_meshes(out, f"{stem}_frame{index:06d}", verts[k], reconstructor)
            for index, frame in chunk:  # frames without the face are kept, so the video keeps its timing
                overlay_video.write(overlays.get(index, frame))
    finally:
        overlay_video.close()
        for video in extra_videos.values():
            video.close()
    return [f"{stem}_overlay.mp4", *(f"{stem}_{key}.mp4" for key in extra_videos), *meshes]


class _Mp4Writer:
    """``cv2.VideoWriter`` ('mp4v') of RGB uint8 frames, opened at the first frame (its size)."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self._writer = path, fps, None

    def write(self, frame: np.ndarray) -> None:
        import cv2

        if self._writer is None:
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                           (frame.shape[1], frame.shape[0]))
            if not self._writer.isOpened():
                raise DataError("unwritable_video", "OpenCV cannot write an mp4v video here", self.path)
        self._writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


# ------------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``facelab reconstruct`` on the ``facelab`` command's subparsers."""
    parser = sub.add_parser("reconstruct", help="3D faces (meshes, parameters, overlays) of images and videos",
                            description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                            epilog="A method's own options follow these (`facelab methods NAME` lists them).",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    parser.add_argument("--method", default=None,
                        help="an installed method (`facelab methods` lists them); default: the only one installed")
    parser.add_argument("--ckpt", required=True, help="checkpoint of the method (`facelab methods NAME` says which)")
    parser.add_argument("--input", "-i", action="append", required=True, metavar="PATH",
                        help="image folder (scanned recursively), image file or video file; repeat for several")
    parser.add_argument("--out", "-o", required=True, help="output folder (created; must not be inside an input)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--model-path", default=None,
                        help="the morphable model asset (file or folder as downloaded, or 'synthetic'); default: the "
                             "one stored in the checkpoint")
    parser.add_argument("--batch-size", type=int, default=16, help="crops per network call")
    parser.add_argument("--smooth", type=int, default=0, metavar="N",
                        help="video: average parameters over a centred window of N processed frames (0: off)")
    parser.add_argument("--max-faces", type=int, default=None, help="images: at most this many faces, the largest")
    parser.add_argument("--min-face", type=int, default=32, help="ignore faces smaller than this (px)")
    parser.add_argument("--min-score", type=float, default=0.9, help="MTCNN detection threshold")
    parser.add_argument("--scale", type=float, default=None,
                        help="crop side relative to the face size; default: the method's")
    parser.add_argument("--crop", choices=["landmarks", "box"], default=None,
                        help="landmarks: the bounding box of mediapipe's landmarks (the box where none); box: the "
                             "MTCNN box; default: the method's")
    parser.add_argument("--every-nth-frame", type=int, default=1, help="video frame sub-sampling")
    parser.add_argument("--max-frames", type=int, default=None, help="at most this many processed frames per video")
    parser.add_argument("--save-meshes", action="store_true", help="video: also write every frame's OBJs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run, takes_method_options=True)


def _run(args: argparse.Namespace) -> int:
    method = resolve_method(args.method, "reconstruct")
    entry = method.reconstruct
    method_options = parse_method_options(method, "reconstruct", entry.add_arguments,
                                          list(getattr(args, "method_options", [])))
    scale = entry.crop_scale if args.scale is None else args.scale
    if args.batch_size < 1 or scale <= 0 or args.every_nth_frame < 1 or args.smooth < 0 or args.min_face < 1:
        raise ValueError("need --batch-size >= 1, --scale > 0, --every-nth-frame >= 1, --smooth >= 0, --min-face >= 1")
    if args.max_faces is not None and args.max_faces < 1:
        raise ValueError("--max-faces must be >= 1")
    options = ReconstructOptions(
        batch_size=args.batch_size, smooth=args.smooth, max_faces=args.max_faces, min_face=args.min_face,
        min_score=args.min_score, scale=scale, crop=entry.crop if args.crop is None else args.crop,
        every_nth_frame=args.every_nth_frame, max_frames=args.max_frames, save_meshes=args.save_meshes,
        device=resolve_device(args.device),
    )
    check_output_location(args.input, args.out)
    collect_inputs(args.input)  # missing inputs fail before the checkpoint loads
    reconstructor = load_reconstructor(method, args.ckpt, args.model_path, options.device, method_options)
    cropper = build_cropper(options, reconstructor.image_size)
    try:
        report = run_reconstruct(args.input, args.out, reconstructor, options, cropper,
                                 progress=not args.no_progress)
    finally:
        if hasattr(cropper.landmarker, "close"):
            cropper.landmarker.close()  # mediapipe's graph
    skipped, faces = len(report["skipped"]), report["faces"]
    print(f"reconstruct: {faces} face(s) from {len(report['reconstructed'])} input(s), {skipped} skipped; "
          f"results in {args.out} (details: {Path(args.out) / 'report.json'})", file=sys.stderr)
    if faces == 0:
        print("facelab reconstruct: nothing was reconstructed", file=sys.stderr)
        return 1
    return 0
