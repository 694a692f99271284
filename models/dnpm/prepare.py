"""``facelab prepare --method dnpm --input FACESCAPE_DIR --out CACHE [--resolution 256]``: FaceScape displacement
maps into a float cache for DNPM / Detailed3DMM training (:class:`dnpm.data.DisplacementDataModule`,
``source: facescape``).

For every ``<subject>/dpmap/<k>_<expression>.png`` (layout: :mod:`dnpm.data`): check that it is a 4096^2
single-channel 16-bit PNG, convert to millimetres, crop FaceScape's face box, area-average to ``--resolution`` and
store it as a float16 or float32 ``.npy``, with the subject's identity (50; ``params/id.npy`` or its row of
FaceScape's ``factors_id_847_50_52.npy`` given as ``--identity-factors``) and the map's expression (52) vectors in
the index. The run is resumable (finished and skipped maps are not redone; files are written atomically), never
writes inside the input, never stops on a bad file: every skipped file is listed with its reason in
``CACHE/report.json`` and summarised at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from dnpm.data import (
    FACESCAPE,
    NUM_EXPRESSION,
    NUM_IDENTITY,
    DisplacementCacheWriter,
    DisplacementFormatError,
    FaceScapeFormat,
    FaceScapeItem,
    load_facescape_map,
    read_vector,
    scan_facescape,
)
from facelab.cli.preprocess import check_output_location
from facelab.data.detail_maps import MAX_RESOLUTION, MIN_RESOLUTION
from facelab.data.image_io import DataError

__all__ = ["MeshFitter", "add_arguments", "prepare_facescape", "read_identity_factors", "run"]

HELP = "FaceScape displacement maps (16-bit PNG) -> a float cache of training-resolution maps with their vectors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``facelab prepare --method dnpm``."""
    parser.add_argument("--input", required=True, metavar="FACESCAPE_DIR",
                        help="folder of <subject>/dpmap/<k>_<expression>.png (+ <subject>/params/id.npy and "
                             "<subject>/params/<k>_<expression>.npy)")
    parser.add_argument("--out", required=True, metavar="CACHE", help="cache directory (created; outside --input)")
    parser.add_argument("--resolution", type=int, default=256, help="map side of the cache (32..1024; DNPM: 1024)")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float32",
                        help="storage precision of the maps (float16: 11-bit mantissa, ~1e-4 mm at 1 mm)")
    parser.add_argument("--identity-factors", default=None, metavar="FACTORS_NPY",
                        help="FaceScape's factors_id_847_50_52.npy ((subjects, 50), row = subject number - 1): the "
                             "identity of subjects without params/id.npy, standardised by the rows' mean and std")
    parser.add_argument("--fit-model", default=None, metavar="BILINEAR_NPZ",
                        help="FaceScape's bilinear model (facescape_bm_v1.6_*.npz): fit identity/expression vectors "
                             "to <subject>/models_reg/<k>_<expression>.obj where params/*.npy are missing")
    parser.add_argument("--no-params", action="store_true",
                        help="keep maps without identity/expression vectors (GAN training only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _settings(resolution: int, dtype: str, fmt: FaceScapeFormat) -> dict:
    return {"resolution": int(resolution), "dtype": dtype, "source_size": fmt.size, "crop_x0_y0_x1_y1": list(fmt.crop),
            "neutral": fmt.neutral, "mm_at_full_scale": fmt.mm_at_full_scale, "units": "mm"}


def read_identity_factors(path: str | Path) -> np.ndarray:
    """FaceScape's per-subject identity factors ``(subjects, 50)`` as standardised coefficients (the convention of
    ``BilinearParams.identity``: offset from the rows' mean in units of their std).

    Raises:
        DisplacementFormatError: unreadable, wrong shape or non-finite.
    """
    path = Path(path)
    if not path.is_file():
        raise DisplacementFormatError("missing_params", "no identity factors file", path)
    try:
        factors = np.load(path, allow_pickle=False).astype(np.float64)
    except (OSError, ValueError, EOFError) as err:
        raise DisplacementFormatError("bad_params", f"unreadable identity factors ({err})", path) from err
    if factors.ndim != 2 or factors.shape[1] != NUM_IDENTITY or len(factors) < 2:
        raise DisplacementFormatError("bad_params", f"identity factors must be (subjects, {NUM_IDENTITY}), got "
                                      f"{factors.shape}", path)
    if not np.isfinite(factors).all():
        raise DisplacementFormatError("non_finite", "identity factors have NaN or infinite entries", path)
    std = factors.std(axis=0)
    return ((factors - factors.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def _identity(item: FaceScapeItem, factors: np.ndarray | None) -> np.ndarray:
    """The subject's identity: ``params/id.npy``, else its row of the factors (subject ``n`` is row ``n - 1``)."""
    if item.identity_path.is_file() or factors is None:
        return read_vector(item.identity_path, NUM_IDENTITY, "identity vector")
    row = int(item.subject) - 1 if item.subject.isdigit() else -1
    if not 0 <= row < len(factors):
        raise DisplacementFormatError("missing_params", f"no params/id.npy and subject '{item.subject}' is not a row "
                                      f"of the identity factors (1..{len(factors)})", item.png)
    return factors[row]


class MeshFitter:
    """Identity / expression vectors fitted to a subject's registered meshes (``<subject>/models_reg/<stem>.obj``),
    one joint fit per subject (:func:`dnpm.data.fit_bilinear_coefficients`), remembered for its other maps.

    Args:
        model_path: FaceScape's bilinear model file (or ``"synthetic"``).
        items: every map of the run (a subject's fit uses the meshes of all of its maps).
    """

    def __init__(self, model_path: str, items: list[FaceScapeItem]):
        from facelab.morphable.bilinear import BilinearModel

        self.model = BilinearModel(model_path).eval()
        self.items = items
        self.fits: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]] = {}

    @staticmethod
    def mesh_path(item: FaceScapeItem) -> Path:
        return item.png.parent.parent / "models_reg" / f"{item.stem}.obj"

    def __call__(self, item: FaceScapeItem) -> tuple[np.ndarray, np.ndarray, float]:
        """``(identity (50,), expression (52,), rms mm)`` of ``item``.

        Raises:
            DisplacementFormatError: ``missing_params`` (no mesh), ``bad_params`` (another topology).
        """
        if item.subject not in self.fits:
            self.fits[item.subject] = self._fit_subject(item.subject)
        fit = self.fits[item.subject].get(item.stem)
        if fit is None:
            raise DisplacementFormatError("missing_params", f"no params/{item.stem}.npy and no mesh to fit",
                                          self.mesh_path(item))
        return fit

    def _fit_subject(self, subject: str) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
        import torch

        from dnpm.data import fit_bilinear_coefficients
        from facelab.io.obj import read_obj_vertices

        meshes = [i for i in self.items if i.subject == subject and self.mesh_path(i).is_file()]
        if not meshes:
            return {}
        verts = []
        for i in meshes:
            v = read_obj_vertices(self.mesh_path(i))
            if v.shape != (self.model.num_verts, 3):
                raise DisplacementFormatError("bad_params", f"{len(v)} vertices; the bilinear model has "
                                              f"{self.model.num_verts} (a FaceScape TU mesh is expected)",
                                              self.mesh_path(i))
            verts.append(v)
        identity, expression, rms = fit_bilinear_coefficients(self.model, torch.from_numpy(np.stack(verts)))
        return {i.stem: (identity.numpy(), expression[j].numpy(), float(rms[j])) for j, i in enumerate(meshes)}


def _process(item: FaceScapeItem, writer: DisplacementCacheWriter, resolution: int, dtype: str,
             fmt: FaceScapeFormat, need_params: bool, factors: np.ndarray | None = None,
             fitter: MeshFitter | None = None) -> None:
    identity = expression = None
    try:
        mm = load_facescape_map(item.png, resolution, fmt).numpy()  # the map's own problems are reported first
        if not np.isfinite(mm).all():
            raise DataError("non_finite", "non-finite values after resizing", item.png)
        try:
            has_exp, has_id = item.expression_path.is_file(), item.identity_path.is_file() or factors is not None
            fit = fitter(item) if fitter is not None and not (has_exp and has_id) else None  # (id, exp, rms)
            identity = fit[0] if fit is not None and not has_id else _identity(item, factors)
            expression = fit[1] if fit is not None and not has_exp else read_vector(
                item.expression_path, NUM_EXPRESSION, "expression vector")
        except DataError as err:
            if need_params or err.reason != "missing_params":
                raise
            identity = expression = None
    except DataError as err:
        writer.skip_item(item.key, str(item.png), -1, err.reason, str(err))
        return
    except Exception as err:  # one bad file must never stop a long run; it is reported
        writer.skip_item(item.key, str(item.png), -1, "error", f"{type(err).__name__}: {err}")
        return
    writer.write_map(item, mm.astype(dtype), identity, expression)


def prepare_facescape(input_dir: str | Path, out: str | Path, resolution: int = 256, dtype: str = "float32",
                      fmt: FaceScapeFormat = FACESCAPE, need_params: bool = True, progress: bool = True,
                      identity_factors: str | Path | None = None, fit_model: str | None = None) -> dict:
    """Build (or resume) a displacement cache; returns the report written to ``out/report.json``.

    Args:
        input_dir: the FaceScape folder (see :mod:`dnpm.data`).
        out: the cache directory.
        resolution: map side (32..1024).
        dtype: ``float16`` | ``float32``.
        fmt: the PNG format (FaceScape's by default).
        need_params: skip maps without identity / expression vectors (``missing_params``).
        progress: a tqdm bar on stderr.
        identity_factors: FaceScape's ``factors_id_*.npy`` for subjects without ``params/id.npy``
            (:func:`read_identity_factors`).
        fit_model: FaceScape's bilinear model: fit the vectors missing from ``params/`` to the subject's
            ``models_reg`` meshes (:class:`MeshFitter`).

    Raises:
        ValueError: bad settings, ``out`` inside the input, or a cache made with other settings.
        DisplacementFormatError: the input holds no FaceScape maps.
    """
    from tqdm import tqdm

    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"--resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"--dtype must be float16 or float32, got {dtype}")
    out_path = check_output_location([input_dir], out)
    items = scan_facescape(input_dir)
    factors = None if identity_factors is None else read_identity_factors(identity_factors)
    fitter = None if fit_model is None else MeshFitter(fit_model, items)
    writer = DisplacementCacheWriter(out_path, _settings(resolution, dtype, fmt))
    todo = [i for i in items if not writer.is_done(i.key)]
    start = time.perf_counter()
    for item in tqdm(todo, disable=not progress, unit="map", desc="prepare dnpm", dynamic_ncols=True):
        _process(item, writer, resolution, dtype, fmt, need_params, factors, fitter)
    return writer.write_report(
        input=str(Path(input_dir).expanduser().resolve()), settings=_settings(resolution, dtype, fmt),
        last_run={"seconds": round(time.perf_counter() - start, 3), "new_items": len(todo),
                  "already_done": len(items) - len(todo)})


def run(options: argparse.Namespace) -> int:
    """``facelab prepare --method dnpm`` (``options`` from :func:`add_arguments`)."""
    report = prepare_facescape(options.input, options.out, options.resolution, options.dtype,
                               need_params=not options.no_params, progress=not options.no_progress,
                               identity_factors=getattr(options, "identity_factors", None),
                               fit_model=getattr(options, "fit_model", None))
    last = report["last_run"]
    print(f"prepare dnpm: {report['maps']} map(s) of {report['subjects']} subject(s), {report['items_skipped']} "
          f"skipped; this run: {last['new_items']} new file(s) in {last['seconds']:.1f} s, {last['already_done']} "
          "already done", file=sys.stderr)
    for reason, count in report["skipped_by_reason"].items():
        print(f"  skipped {count:5d} x {reason}", file=sys.stderr)
    print(f"cache: {options.out}  (details: {Path(options.out) / 'report.json'})", file=sys.stderr)
    return 0
