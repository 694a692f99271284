"""``facelab preprocess --input DIR_OR_FILE [...] --out DIR``: detect, crop and landmark faces into a cache.

For every image (folders are scanned recursively) and every ``--every-nth-frame`` frame of every video:
MTCNN finds the faces; each face is cropped loosely around its box and mediapipe's face mesh gives 478 landmarks;
the final crop is SMIRK's (bounding box of the mediapipe landmarks, side ``mean(w, h) * scale``) resampled to
``--size``; the face mask is the convex hull of the landmarks; FAN 68 landmarks are added when
``--fan-checkpoint`` is given. Results go to the cache format of :mod:`facelab.data.cache`, which
:class:`facelab.data.datasets.CachedFaceDataset` reads.

The run is resumable (finished items are skipped), never writes inside the inputs, never stops on a bad file:
every skipped item is listed with its reason in ``OUT/report.json`` and summarised at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from facelab.data.cache import CacheWriter, FaceRecord
from facelab.data.crop import crop_params, crop_uint8, mesh_landmarks_in_box, transform_points
from facelab.data.image_io import DataError, is_image_file, list_images, read_image
from facelab.data.video import VIDEO_EXTENSIONS, is_video_file, iter_frames

__all__ = ["FacePreprocessor", "PreprocessOptions", "add_parser", "collect_inputs", "run_preprocess"]

#: Loose crop used to run mediapipe on one detected face: box side times this, resampled to this many pixels.


@dataclass
class PreprocessOptions:
    """Settings of a preprocessing run (the ``facelab preprocess`` options).

    Attributes:
        size: crop side in pixels (SMIRK: 224).
        scale: crop side relative to the landmark box (SMIRK: 1.6 at test; store >= the largest training scale if
            the dataset re-crops with scale jitter).
        min_face: faces whose MTCNN box is smaller (mean side, px) are ignored; images smaller than this are skipped.
        max_faces: items with more faces than this (after ``min_face``) are skipped as ``too_many_faces``;
            None keeps every face as its own sample.
        min_score: MTCNN detection threshold.
        every_nth_frame: video frame sub-sampling.
        max_frames: at most this many sampled frames per video (None: all).
        fan_checkpoint: face_alignment's TorchScript FAN file, or None (FAN landmarks absent).
        device: torch device for MTCNN (and FAN).
    """

    size: int = 224
    scale: float = 1.6
    min_face: int = 40
    max_faces: int | None = None
    min_score: float = 0.9
    every_nth_frame: int = 1
    max_frames: int | None = None
    fan_checkpoint: str | None = None
    device: str = "cpu"


class FacePreprocessor:
    """Image in, cached face crops out: MTCNN → loose crop → mediapipe 478 → SMIRK crop → hull mask (→ FAN 68).

    Args:
        options: the run settings.
    """

    def __init__(self, options: PreprocessOptions):
        from facelab.data.detect import FaceDetector
        from facelab.data.landmarks import FanLandmarks, MediapipeFaceMesh

        self.options = options
        self.detector = FaceDetector(device=options.device, min_face_size=min(20, options.min_face),
                                     min_score=options.min_score)
        self.mesh = MediapipeFaceMesh(refine_landmarks=True)
        self.fan = FanLandmarks(options.fan_checkpoint, options.device) if options.fan_checkpoint else None

    def close(self) -> None:
        """Release mediapipe's graph."""
        self.mesh.close()

    def __call__(self, image: np.ndarray, source: str, frame: int = -1) -> tuple[list[FaceRecord], list[dict]]:
        """Crop and landmark every face of one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            source: recorded in each :class:`FaceRecord`.
            frame: video frame index, -1 for still images.

        Returns:
            ``(records, dropped)``: the kept faces and ``{"face", "reason", "detail"}`` for faces found but dropped.

        Raises:
            DataError: ``"no_face"``, ``"face_too_small"``, ``"too_many_faces"``, or the reason of the only face's
                failure (``"no_landmarks"``, ``"landmarks_mismatch"``).
        """
        opts = self.options
        dets = self.detector(image)
        if len(dets) == 0:
            raise DataError("no_face", "no face detected")
        big = dets.filter(min_size=opts.min_face)
        if len(big) == 0:
            raise DataError("face_too_small", f"{len(dets)} face(s), largest {dets.sizes.max():.0f} px < "
                                              f"--min-face {opts.min_face} px")
        if opts.max_faces is not None and len(big) > opts.max_faces:
            raise DataError("too_many_faces", f"{len(big)} faces, more than --max-faces {opts.max_faces}")
        src = torch.from_numpy(np.array(image, np.uint8)).permute(2, 0, 1)[None].float()
        records, dropped = [], []
        for i in range(len(big)):
            try:
                records.append(self._crop_face(image, src, big.boxes[i], float(big.scores[i]), source, frame,
                                               len(records)))
            except DataError as err:
                dropped.append({"face": i, "reason": err.reason, "detail": str(err)})
        if not records:
            raise DataError(dropped[0]["reason"], dropped[0]["detail"])
        return records, dropped

    def _crop_face(self, image: np.ndarray, src: torch.Tensor, box: np.ndarray, score: float, source: str,
                   frame: int, face: int) -> FaceRecord:
        from facelab.data.landmarks import hull_mask

        pts_src = mesh_landmarks_in_box(src.double(), torch.from_numpy(box.astype(np.float64)), self.mesh)
        matrix = crop_params(pts_src, self.options.scale, self.options.size)
        crop = crop_uint8(src.double(), matrix, self.options.size)
        lmk_mp = transform_points(pts_src, matrix).float().numpy()
        fan = None
        if self.fan is not None:
            fan_src, _ = self.fan(image, box[None])
            fan = transform_points(torch.from_numpy(fan_src[0]).double(), matrix).float().numpy()
        return FaceRecord(image=crop, landmarks_mp=lmk_mp, mask=hull_mask(lmk_mp, crop.shape[:2]),
                          matrix=matrix.float().numpy(), score=score, source=source, frame=frame, face=face,
                          landmarks_fan=fan)


def collect_inputs(inputs: list[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Images and videos named by ``--input``: folders are scanned recursively, files are taken as they are.

    A file that is not a known video format is treated as an image (and skipped with a reason if it is not one).

    Returns:
        ``(images, videos)`` as sorted absolute paths, without duplicates.

    Raises:
        FileNotFoundError: an input does not exist.
    """
    images, videos = set(), set()
    for item in inputs:
        path = Path(item).expanduser().resolve()
        if path.is_dir():
            videos.update(p.resolve() for p in list_images(path, VIDEO_EXTENSIONS))
            images.update(p.resolve() for p in list_images(path) if is_image_file(p))
        elif path.is_file():
            (videos if is_video_file(path) else images).add(path)
        else:
            raise FileNotFoundError(f"--input {item}: no such file or directory")
    return sorted(images), sorted(videos)


def check_output_location(inputs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Refuse an output directory equal to, or inside, an input directory (inputs are never written to).

    Returns:
        The resolved output directory.

    Raises:
        ValueError: ``out`` is an input, or inside an input folder.
    """
    out_path = Path(out).expanduser().resolve()
    for item in inputs:
        inp = Path(item).expanduser().resolve()
        if out_path == inp or (inp.is_dir() and inp in out_path.parents):
            raise ValueError(f"--out {out} is inside --input {item}: choose an output folder outside the inputs "
                             "(facelab never writes into input folders)")
        if out_path.exists() and not out_path.is_dir():
            raise ValueError(f"--out {out} exists and is not a directory")
    return out_path


def run_preprocess(inputs: list[str | os.PathLike], out: str | os.PathLike, options: PreprocessOptions,
                   progress: bool = True) -> dict:
    """Preprocess images and videos into a cache directory (resumable); returns the report written to report.json.

    Args:
        inputs: folders, image files and video files.
        out: the cache directory.
        options: run settings.
        progress: show a tqdm progress bar (on stderr).
    """
    from tqdm import tqdm

    out_path = check_output_location(inputs, out)
    images, videos = collect_inputs(inputs)
    writer = CacheWriter(out_path)
    start, done_before = time.perf_counter(), len(writer.done_keys)
    todo_images = [p for p in images if not writer.is_done(str(p))]
    todo_videos = [p for p in videos if not writer.is_done(_video_key(p))]
    preprocessor = FacePreprocessor(options)
    bar = tqdm(total=len(todo_images) + len(todo_videos), disable=not progress, unit="file", desc="preprocess",
               initial=0, dynamic_ncols=True)
    try:
        for path in todo_images:
            _process_image(preprocessor, writer, path)
            bar.update()
        for path in todo_videos:
            _process_video(preprocessor, writer, path, bar)
            bar.update()
    finally:
        bar.close()
        preprocessor.close()
    elapsed = time.perf_counter() - start
    new_items = len(writer.done_keys) - done_before
    return writer.write_report(
        inputs=[str(Path(i).expanduser().resolve()) for i in inputs],
        options=asdict(options),
        last_run={"seconds": round(elapsed, 3), "new_items": new_items,
                  "already_done_files": len(images) + len(videos) - len(todo_images) - len(todo_videos)},
    )


def _video_key(path: Path) -> str:
    return f"{path}#video"


def _process_image(preprocessor: FacePreprocessor, writer: CacheWriter, path: Path) -> None:
    key = str(path)
    try:
        image = read_image(path, min_side=preprocessor.options.min_face)
        records, dropped = preprocessor(image, source=str(path))
    except DataError as err:
        writer.skip_item(key, str(path), -1, err.reason, str(err))
        return
    except Exception as err:  # one bad file must never stop a long run; it is reported
        writer.skip_item(key, str(path), -1, "error", f"{type(err).__name__}: {err}")
        return
    writer.write_item(key, str(path), -1, records, dropped)


def _process_video(preprocessor: FacePreprocessor, writer: CacheWriter, path: Path, bar) -> None:
    opts = preprocessor.options
    done_frames = {int(k.rsplit("#", 1)[1]) for k in writer.done_keys if k.startswith(f"{path}#") and
                   k.rsplit("#", 1)[1].isdigit()}
    frames = 0
    try:
        for index, frame in iter_frames(path, every_nth=opts.every_nth_frame, max_frames=opts.max_frames,
                                        skip=done_frames):
            key = f"{path}#{index}"
            try:
                records, dropped = preprocessor(frame, source=str(path), frame=index)
            except DataError as err:
                writer.skip_item(key, str(path), index, err.reason, str(err))
            except Exception as err:  # reported, never fatal
                writer.skip_item(key, str(path), index, "error", f"{type(err).__name__}: {err}")
            else:
                writer.write_item(key, str(path), index, records, dropped)
            frames += 1
            bar.set_postfix_str(f"{path.name} frame {index}", refresh=False)
    except DataError as err:
        writer.skip_item(_video_key(path), str(path), -1, err.reason, str(err))
        return
    except Exception as err:  # reported, never fatal
        writer.skip_item(_video_key(path), str(path), -1, "unreadable_video", f"{type(err).__name__}: {err}")
        return
    writer.mark_done(_video_key(path), str(path), frames_processed=frames + len(done_frames))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``facelab preprocess`` on the ``facelab`` command's subparsers."""
    parser = sub.add_parser("preprocess", help="detect, crop and landmark faces of images/videos into a cache",
                            description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", "-i", action="append", required=True, metavar="PATH",
                        help="image folder (scanned recursively), image file or video file; repeat for several")
    parser.add_argument("--out", "-o", required=True, help="cache directory (created; must not be inside an input)")
    parser.add_argument("--scale", type=float, default=1.6, help="crop side relative to the landmark box")
    parser.add_argument("--size", type=int, default=224, help="crop side in pixels")
    parser.add_argument("--min-face", type=int, default=40, help="ignore faces smaller than this (px)")
    parser.add_argument("--max-faces", type=int, default=None,
                        help="skip items with more faces than this (default: keep every face)")
    parser.add_argument("--min-score", type=float, default=0.9, help="MTCNN detection threshold")
    parser.add_argument("--every-nth-frame", type=int, default=1, help="video frame sub-sampling")
    parser.add_argument("--max-frames", type=int, default=None, help="at most this many sampled frames per video")
    parser.add_argument("--fan-checkpoint", default=None,
                        help="face_alignment's TorchScript FAN file (2DFAN4-*.zip); FAN 68 landmarks are absent "
                             "without it")
    parser.add_argument("--device", default="cpu", help="torch device for detection (cpu, cuda, cuda:1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.size < 16 or args.scale <= 0 or args.every_nth_frame < 1 or args.min_face < 1:
        raise ValueError("need --size >= 16, --scale > 0, --every-nth-frame >= 1, --min-face >= 1")
    options = PreprocessOptions(
        size=args.size, scale=args.scale, min_face=args.min_face, max_faces=args.max_faces, min_score=args.min_score,
        every_nth_frame=args.every_nth_frame, max_frames=args.max_frames, fan_checkpoint=args.fan_checkpoint,
        device=args.device,
    )
    report = run_preprocess(args.input, args.out, options, progress=not args.no_progress)
    _print_summary(report, Path(args.out))
    return 0


def _print_summary(report: dict, out: Path) -> None:
    run = report["last_run"]
    print(f"preprocess: {report['items_ok']} item(s) with faces, {report['faces']} face crop(s) "
          f"({report['faces_with_fan']} with FAN), {report['items_skipped']} skipped; this run: {run['new_items']} "
          f"new item(s) in {run['seconds']:.1f} s, {run['already_done_files']} file(s) already done", file=sys.stderr)
    for reason, count in report["skipped_by_reason"].items():
        print(f"  skipped {count:5d} × {reason}", file=sys.stderr)
    print(f"cache: {out}  (details: {out / 'report.json'})", file=sys.stderr)
