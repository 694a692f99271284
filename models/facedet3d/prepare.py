"""``facelab prepare --method facedet3d --input PHOTOS --out CACHE``: FaceDet3D's inputs (Eq. 1) of real photos.

For every face of every image (folders are scanned recursively): MTCNN + mediapipe crop it
(:class:`facelab.cli.reconstruct.FaceCropper`, as ``facelab fit``), :class:`facelab.fitting.MorphableFitter` fits
the BFM (identity, expression, albedo, SH, camera; the proxy geometry) and unwraps the photo into the BFM UV layout
(``T(I_x)``); the detail map ``D(I_x)`` is the user's FDS map (``--detail-maps``: ``<stem>.png`` or
``<stem>_face<k>.png``, optional ``*_mask.png``; other UV layouts via ``--detail-layout``) or, without one, the
prediction of the detail regressor (``--regressor``, :mod:`facedet3d.regressor`, which stands in for FDS); the AU
vector comes from OpenFace CSVs (``--action-units``: ``<stem>.csv``, one row per face); the FaceNet embedding and
age features from their local weights (``--facenet-weights``, ``--age-weights``; random frozen networks with a
WARNING when absent).

The cache is the :mod:`facelab.data.cache` layout (``index.jsonl``, ``report.json``) with one
:func:`facedet3d.data.save_detail_npz` file per face under ``faces/``. It is resumable (finished images are not
redone), writes atomically (face files first, then the image's index line), never writes into its inputs and never
stops on a bad file: non-face images, corrupt files, missing or invalid detail maps (wrong size / dtype / layout,
NaN) and missing AUs are skipped with their reason in ``report.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facedet3d.data import (
    DetailMapError,
    FaceDetailBatch,
    downsample_map,
    read_fds_map,
    read_openface_action_units,
    remap_uv_layout,
    save_detail_npz,
)
from facelab.cli.preprocess import check_output_location, collect_inputs
from facelab.data.cache import CacheWriter, read_index
from facelab.data.image_io import DataError, read_image
from facelab.log import get_logger, warn_missing_weights

__all__ = ["CacheEntry", "DetailCacheWriter", "add_arguments", "cache_entries", "prepare_faces", "run"]

_log = get_logger(__name__)


@dataclass(frozen=True)
class CacheEntry:
    """One prepared face: its ``.npz``, source image, face index and identity key ("" when unknown)."""

    path: Path
    source: str
    face: int
    identity: str
    detail_source: str


def cache_entries(root: str | Path) -> list[CacheEntry]:
    """Every prepared face of a cache, sorted by (source, face)."""
    root = Path(root)
    out = [CacheEntry(root / f["file"], item["source"], int(f["face"]), f.get("identity", ""),
                      f.get("detail_source", ""))
           for item in read_index(root) if item["status"] == "ok" for f in item["faces"]]
    return sorted(out, key=lambda e: (e.source, e.face))


class DetailCacheWriter(CacheWriter):
    """:class:`facelab.data.cache.CacheWriter` whose face files are FaceDet3D inputs (:func:`save_detail_npz`)."""

    def write_faces(self, key: str, source: str, faces: list[tuple[FaceDetailBatch, dict]],
                    dropped: list[dict]) -> None:
        """Store one image's faces (each a single :class:`FaceDetailBatch` and its index info), then its line."""
        listed = []
        for sample, info in faces:
            path = self.face_path(key, info["face"])
            save_detail_npz(path, sample, source)
            listed.append({"file": path.relative_to(self.root).as_posix(), "score": 1.0, "has_fan": False, **info})
        if not listed:
            reason = dropped[0]["reason"] if dropped else "no_face"
            self.skip_item(key, source, -1, reason, "; ".join(d["detail"] for d in dropped))
            return
        self._append({"key": key, "source": source, "frame": -1, "status": "ok", "faces": listed,
                      "dropped": dropped})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``facelab prepare --method facedet3d`` (``--device`` comes from the core command)."""
    parser.add_argument("--input", "-i", action="append", required=True, metavar="PATH",
                        help="photo folder (scanned recursively) or image file; repeat for several")
    parser.add_argument("--out", "-o", required=True, help="cache directory (created; must not be inside an input)")
    parser.add_argument("--detail-maps", default=None, metavar="DIR",
                        help="FDS detail maps: <stem>.png or <stem>_face<k>.png (uint16, (d+1)/2*65535), optional "
                             "<name>_mask.png; float .npy in mm also accepted")
    parser.add_argument("--detail-size", type=int, default=4096, help="required side of the detail maps (0: any)")
    parser.add_argument("--detail-scale-mm", type=float, default=1.0, help="millimetres per FDS displacement unit")
    parser.add_argument("--detail-layout", default=None, metavar="NPZ",
                        help="the detail maps' UV layout if not the BFM's: .npz with uv (T, 2, v up) and faces_uv "
                             "(F, 3) of the BFM triangles")
    parser.add_argument("--regressor", default=None, metavar="CKPT",
                        help="detail regressor checkpoint (facedet3d_regressor.yaml), used where no FDS map exists; "
                             "it stands in for FDS")
    parser.add_argument("--action-units", default=None, metavar="DIR",
                        help="OpenFace CSVs <stem>.csv (AUxx_r columns, one row per face, largest face first)")
    parser.add_argument("--facenet-weights", default=None, help="facenet-pytorch InceptionResnetV1 state dict")
    parser.add_argument("--age-weights", default=None, help="age network state dict (facedet3d.networks.AgeNet)")
    parser.add_argument("--model-path", default="synthetic", help="the BFM asset (default: the synthetic stand-in)")
    parser.add_argument("--identity-from", choices=["none", "parent"], default="parent",
                        help="identity key of a face (pairs of one identity give DetH's weak supervision): the "
                             "image's parent folder, or none")
    parser.add_argument("--size", type=int, default=256, help="crop side (px)")
    parser.add_argument("--scale", type=float, default=1.6, help="crop side relative to the face size")
    parser.add_argument("--texture-size", type=int, default=256, help="side of T(I_x)")
    parser.add_argument("--map-size", type=int, default=256, help="side of the stored D(I_x) (DetH's input)")
    parser.add_argument("--iterations", type=int, nargs=3, default=[50, 200, 60], metavar=("RIGID", "LMK", "PHOTO"))
    parser.add_argument("--batch-size", type=int, default=8, help="faces fitted together")
    parser.add_argument("--max-faces", type=int, default=None, help="per image, at most this many faces")
    parser.add_argument("--no-progress", action="store_true")


def run(options: argparse.Namespace, cropper=None) -> int:
    """Run the prepare action (``options`` from :func:`add_arguments` plus ``device``). Returns the exit code:
    0 when the cache holds faces, 1 when none was prepared.

    Args:
        cropper: face detection and cropping (tests inject a stub); None builds MTCNN + mediapipe.
    """
    if options.detail_maps is None and options.regressor is None:
        raise ValueError("facedet3d prepare needs --detail-maps (FDS maps) or --regressor (the detail regressor that "
                         "stands in for FDS) to give every face its detail map")
    for name in ("detail_maps", "action_units"):
        value = getattr(options, name)
        if value is not None and not Path(value).is_dir():
            raise FileNotFoundError(f"--{name.replace('_', '-')} {value}: no such folder")
    report = prepare_faces(options, cropper)
    print(f"prepare facedet3d: {report['faces']} face(s) from {report['items_ok']} image(s), {report['items_skipped']} "
          f"skipped; this run {report['last_run']['new_items']} new item(s) in {report['last_run']['seconds']:.1f} s",
          file=sys.stderr)
    for reason, count in report["skipped_by_reason"].items():
        print(f"  skipped {count:5d} x {reason}", file=sys.stderr)
    print(f"cache: {options.out}  (details: {Path(options.out) / 'report.json'})", file=sys.stderr)
    return 0 if report["faces"] else 1


class _Preparer:
    """The per-run networks: cropper, BFM fitter, feature networks, optional regressor and layout remap."""

    def __init__(self, options: argparse.Namespace, cropper) -> None:
        from facedet3d.networks import FaceFeatures
        from facelab.cli.fit import FitOptions, build_fitter
        from facelab.morphable import load_model
        from facelab.uv import UVMapper

        self.o, self.device = options, getattr(options, "device", "cpu") or "cpu"
        self.model = load_model("bfm", options.model_path).to(self.device).eval()
        fit = FitOptions(size=options.size, scale=options.scale, uv_size=options.texture_size,
                         iterations=tuple(options.iterations), device=self.device, render_size=min(128, options.size))
        self.fitter = build_fitter(self.model, fit)
        self.cropper = cropper if cropper is not None else self._cropper()
        self.features = FaceFeatures(facenet_weights=options.facenet_weights, age_weights=options.age_weights,
                                     config_prefix="--").to(self.device)
        m = self.model
        self.map_mapper = UVMapper(m.faces, m.uv, m.faces_uv, options.map_size, num_verts=m.num_verts).to(self.device)
        self.layout = None
        if options.detail_layout is not None:
            with np.load(options.detail_layout, allow_pickle=False) as z:
                self.layout = (torch.from_numpy(z["uv"]).float(), torch.from_numpy(z["faces_uv"]).long())
        self.regressor = None
        if options.regressor is not None:
            from facedet3d.regressor import load_regressor

            self.regressor = load_regressor(options.regressor).to(self.device).eval()
        if options.action_units is None:
            warn_missing_weights("--action-units", "OpenFace action units",
                                 "every face gets the AU vector 0 (neutral): such a cache can drive `facelab animate` "
                                 "but must not train DetH", logger=__name__)

    def _cropper(self):
        from facelab.cli.reconstruct import FaceCropper
        from facelab.data.detect import FaceDetector
        from facelab.data.landmarks import MediapipeFaceMesh

        detector = FaceDetector(device=self.device, min_face_size=20)
        return FaceCropper(detector, self.o.size, self.o.scale, MediapipeFaceMesh(refine_landmarks=True), 32)

    def detail(self, path: Path, face: int) -> tuple[torch.Tensor, torch.Tensor, str] | None:
        """The user's map of a face at ``map_size`` (``(detail, mask, "fds")``), None when it has none.

        Raises DetailMapError for an invalid map."""
        if self.o.detail_maps is None:
            return None
        root = Path(self.o.detail_maps)
        for stem in (f"{path.stem}_face{face}", path.stem):
            for ext in (".png", ".npy"):
                candidate = root / f"{stem}{ext}"
                if candidate.is_file():
                    mask_path = next((root / f"{stem}_mask{e}" for e in (".png", ".npy")
                                      if (root / f"{stem}_mask{e}").is_file()), None)
                    detail, mask = read_fds_map(candidate, mask_path, self.o.detail_size or None,
                                                self.o.detail_scale_mm)
                    detail, mask = detail[None].to(self.device), mask[None].to(self.device)
                    if self.layout is not None:
                        detail, mask = remap_uv_layout(detail, mask, *self.layout, self._mapper(detail.shape[-1]))
                    small = downsample_map(detail * mask, self.o.map_size)
                    cover = downsample_map(mask, self.o.map_size)
                    valid = (cover > 0.5).float() * self.map_mapper.mask.to(cover)
                    return torch.where(valid > 0, small / cover.clamp(min=1e-6), 0.0), valid, "fds"
        return None

    def _mapper(self, size: int):
        from facelab.uv import UVMapper

        m = self.model
        return UVMapper(m.faces, m.uv, m.faces_uv, size, num_verts=m.num_verts).to(self.device)

    def action_units(self, path: Path, face: int) -> torch.Tensor:
        if self.o.action_units is None:
            return torch.zeros(17)
        return read_openface_action_units(Path(self.o.action_units) / f"{path.stem}.csv", row=face)


def prepare_faces(options: argparse.Namespace, cropper=None) -> dict:
    """Build (or resume) the cache; returns the report written to ``report.json``."""
    from tqdm import tqdm

    out = check_output_location(options.input, options.out)
    images, videos = collect_inputs(options.input)
    writer = DetailCacheWriter(out)
    for v in videos:
        if not writer.is_done(str(v)):
            writer.skip_item(str(v), str(v), -1, "video", "videos are not prepared (extract frames first)")
    todo = [p for p in images if not writer.is_done(str(p))]
    start, done_before = time.perf_counter(), len(writer.done_keys)
    prep = _Preparer(options, cropper) if todo else None
    for path in tqdm(todo, disable=options.no_progress, unit="image", desc="prepare facedet3d"):
        try:
            _prepare_image(prep, writer, path)
        except DataError as err:
            writer.skip_item(str(path), str(path), -1, err.reason, str(err))
        except Exception as err:  # one bad file never stops a long run; it is reported
            _log.warning("%s: %s: %s", path, type(err).__name__, err)
            writer.skip_item(str(path), str(path), -1, "error", f"{type(err).__name__}: {err}")
    opts = {k: v for k, v in vars(options).items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    return writer.write_report(inputs=[str(Path(i).resolve()) for i in options.input], options=opts,
                               last_run={"seconds": round(time.perf_counter() - start, 3),
                                         "new_items": len(writer.done_keys) - done_before})


def _prepare_image(prep: _Preparer, writer: DetailCacheWriter, path: Path) -> None:
    from facelab.fitting.photos import photo_targets, skin_mask

    o = prep.o
    image = read_image(path, min_side=32)
    crops = [c for c in prep.cropper(image, o.max_faces)]
    if not crops:
        raise DataError("no_face", "no face detected", path)
    dropped, kept = [], []
    for k, crop in enumerate(crops):
        if crop.landmarks is None:
            dropped.append({"face": k, "reason": "no_landmarks", "detail": f"face {k}: no mediapipe landmarks"})
            continue
        try:
            found = prep.detail(path, k)
            if found is None and prep.regressor is None:
                raise DetailMapError("missing_detail_map", f"face {k}: no {path.stem}_face{k}.png / {path.stem}.png "
                                     f"in --detail-maps and no --regressor", path)
            aus = prep.action_units(path, k)
        except DataError as err:
            dropped.append({"face": k, "reason": err.reason, "detail": str(err)})
            continue
        kept.append((k, crop, found, aus))
    faces = []
    for chunk in range(0, len(kept), o.batch_size):
        part = kept[chunk:chunk + o.batch_size]
        crops_t = torch.from_numpy(np.stack([c.image for _, c, _, _ in part])).to(prep.device)
        mp = torch.from_numpy(np.stack([c.landmarks for _, c, _, _ in part])).float().to(prep.device)
        result = prep.fitter.fit(photo_targets(crops_t, mp))
        images = crops_t.permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            face_id, age = prep.features(images)
        size = tuple(images.shape[-2:])
        skin = skin_mask(mp, size)
        for i, (k, _, found, aus) in enumerate(part):
            p = result.params
            texture, vis = result.texture.texture[i:i + 1], result.texture.visibility[i:i + 1]
            if found is None:
                with torch.no_grad():
                    detail = prep.regressor.predict(texture, vis, o.map_size)
                mask, source = prep.map_mapper.mask.to(detail), "regressor"
            else:
                detail, mask, source = found
            sample = FaceDetailBatch(
                image=images[i], action_units=aus.float(), shape=p.identity[i].detach(),
                expression=p.expression[i].detach(), albedo=p.albedo[i].detach(), sh=result.sh[i].detach(),
                camera=result.camera_vector[i].detach(), rotation=result.rotation[i].detach(), texture=texture[0],
                texture_mask=vis[0], detail=detail[0].detach(), detail_mask=mask.reshape(detail.shape[1:]),
                skin_mask=skin[i], face_id=face_id[i], age=age[i],
                camera_model="weak" if result.camera_vector.shape[1] == 3 else "perspective").to("cpu")
            identity = path.parent.name if o.identity_from == "parent" else ""
            faces.append((sample, {"face": k, "identity": identity, "detail_source": source}))
    writer.write_faces(str(path), str(path), faces, dropped)
