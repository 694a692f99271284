"""DNPM's training data: FaceScape displacement maps (as distributed, via a float cache) or the embedded synthetic
world (:mod:`facelab.data.detail_maps`), behind one LightningDataModule.

FaceScape displacement maps
---------------------------
FaceScape's TU-model release (https://facescape.nju.edu.cn, licensed: apply there) ships one displacement map per
subject and expression: a **4096 x 4096 single-channel 16-bit PNG** whose value 32768 is "no displacement", in
millimetres ``mm = (v - 32768) / 32768 * 0.914`` (:data:`FACESCAPE`). FaceScape's own detail network crops the box
``(x0, y0, x1, y1) = (1100, 600, 3000, 2500)`` pixels (columns 1100..2999, rows 600..2499: the 1900 x 1900 face
region) and resizes it to 1024^2, DNPM's resolution. This module crops the same box and area-averages it to the
training resolution, in float32 (never through 8 bits). Row 0 of a map is the top (``v = 1``), as in facelab's UV
maps; :func:`crop_uv` maps full-layout UVs into the crop.

Expected layout (what ``facelab prepare --method dnpm --input ROOT`` scans)::

    ROOT/<subject>/dpmap/<k>_<expression>.png     the displacement maps (FaceScape TU-model release, e.g.
                                                  ``122/dpmap/1_neutral.png`` ... ``20_brow_lower.png``)
    ROOT/<subject>/params/id.npy                  (50,) the subject's bilinear identity coefficients
                                                  (``BilinearParams.identity``: offset from ``id_mean`` in std)
    ROOT/<subject>/params/<k>_<expression>.npy    (52,) the map's FaceScape expression vector, entry 0 = 1

Where the vectors come from: the identity of FaceScape subject ``n`` is row ``n - 1`` of the bilinear model
release's ``factors_id_847_50_52.npy`` (``--identity-factors``; standardised by the rows' mean and std, the
convention of ``BilinearParams.identity``), or a ``params/id.npy`` of your own. FaceScape distributes no per-map
expression vectors: ``--fit-model facescape_bm_v1.6_847_50_52_id_front.npz`` fits them (and the identity, shared by
a subject's maps) to the registered meshes of the same release, ``<subject>/models_reg/<k>_<expression>.obj`` (the
bilinear model's topology and frame; :func:`fit_bilinear_coefficients`, alternating least squares with blendshape
weights bounded to [0, 1]); FaceScape's toolkit fitter works too (:meth:`BilinearModel.coefficients_from_factors`
converts its ``w_id`` / ``w_exp``). Maps without their vectors are skipped with the reason ``missing_params`` (a
GAN-only cache, which DNPM's StyleGAN2 needs, can be built with ``--no-params``).

Cache (``facelab prepare --method dnpm``; :class:`DisplacementCacheWriter`, on :mod:`facelab.data.cache`)::

    CACHE/cache.json                    settings (resolution, dtype, crop, format); a resume must match them
    CACHE/index.jsonl                   one line per source map: ok (file, subject, identity, expression) | skipped
    CACHE/maps/<subject>/<stem>.npy     (R, R) float16 / float32 millimetres, written atomically
    CACHE/report.json                   counts and every skipped file with its reason
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset

from facelab.data.cache import CacheWriter, read_index
from facelab.data.detail_maps import (
    DetailWorld,
    DisplacementBatch,
    DisplacementSample,
    SyntheticDisplacementDataset,
    displacement_std_mm,
)
from facelab.data.image_io import DataError
from facelab.data.modules import SplitLoaders
from facelab.data.synthetic import SceneConfig

__all__ = [
    "FACESCAPE",
    "DisplacementCacheWriter",
    "DisplacementDataModule",
    "DisplacementFormatError",
    "FaceScapeDisplacementDataset",
    "FaceScapeFormat",
    "FaceScapeItem",
    "crop_uv",
    "fit_bilinear_coefficients",
    "load_facescape_map",
    "read_displacement_png",
    "read_vector",
    "scan_facescape",
]

NUM_IDENTITY, NUM_EXPRESSION = 50, 52
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


class DisplacementFormatError(DataError):
    """A displacement map or coefficient file that cannot be used (``reason``: a stable code for reports:
    ``not_found``, ``not_png``, ``not_16bit``, ``not_single_channel``, ``wrong_size``, ``corrupt``, ``bad_params``,
    ``missing_params``, ``non_finite``)."""


@dataclass(frozen=True)
class FaceScapeFormat:
    """How a FaceScape displacement PNG encodes millimetres, and the face crop.

    Attributes:
        size: side of the PNG in pixels.
        crop: ``(x0, y0, x1, y1)`` pixel box (columns x0..x1-1, rows y0..y1-1).
        neutral: the value of zero displacement.
        mm_at_full_scale: millimetres of ``neutral`` units above ``neutral``: ``mm = (v - neutral) / neutral * this``.
    """

    size: int = 4096
    crop: tuple[int, int, int, int] = (1100, 600, 3000, 2500)
    neutral: int = 32768
    mm_at_full_scale: float = 0.914

    def scaled(self, size: int) -> FaceScapeFormat:
        """The same layout at another PNG side (the crop scaled; for tests and downsampled copies)."""
        f = size / self.size
        crop = tuple(round(c * f) for c in self.crop)
        if any(abs(c * f - round(c * f)) > 1e-6 for c in self.crop):
            raise ValueError(f"the crop {self.crop} does not scale to whole pixels at size {size}")
        return dataclasses.replace(self, size=int(size), crop=crop)

    def to_mm(self, raw: np.ndarray) -> np.ndarray:
        """uint16 values -> float32 millimetres."""
        return ((raw.astype(np.float64) - self.neutral) * (self.mm_at_full_scale / self.neutral)).astype(np.float32)


#: FaceScape's displacement maps as distributed.
FACESCAPE = FaceScapeFormat()


def _png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise DisplacementFormatError("not_png", "not a PNG file (FaceScape displacement maps are 16-bit PNGs)", path)
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, colour


def read_displacement_png(path: str | os.PathLike, fmt: FaceScapeFormat = FACESCAPE) -> np.ndarray:
    """Read a FaceScape displacement PNG as its raw (S, S) uint16 values, refusing anything that is not one.

    Raises:
        DisplacementFormatError: ``not_found``, ``not_png``, ``not_16bit`` (e.g. an 8-bit export: the detail is
            quantised away), ``not_single_channel`` (RGB / alpha / palette), ``wrong_size``, ``corrupt``.
    """
    path = Path(path)
    if not path.is_file():
        raise DisplacementFormatError("not_found", "no such file", path)
    width, height, depth, colour = _png_header(path)
    if colour != 0:
        raise DisplacementFormatError("not_single_channel", f"a {_COLOUR_TYPES.get(colour, colour)} PNG; displacement "
                                      "maps are single-channel 16-bit grayscale", path)
    if depth != 16:
        raise DisplacementFormatError("not_16bit", f"a {depth}-bit PNG; displacement maps are 16-bit (an 8-bit copy "
                                      "has lost the sub-0.01 mm detail: use the original files)", path)
    if (width, height) != (fmt.size, fmt.size):
        raise DisplacementFormatError("wrong_size", f"{width}x{height} px, expected {fmt.size}x{fmt.size} (FaceScape's "
                                      "layout; the crop box assumes it)", path)
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            raw = np.asarray(img)
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as err:
        raise DisplacementFormatError("corrupt", f"damaged or truncated PNG ({type(err).__name__}: {err})",
                                      path) from err
    if raw.dtype != np.uint16:  # PIL decodes 16-bit grayscale as I;16 (uint16); "I" (int32) on some versions
        raw = raw.astype(np.uint16)
    if raw.shape != (fmt.size, fmt.size):
        raise DisplacementFormatError("corrupt", f"decoded to shape {raw.shape}", path)
    return raw


def crop_resize(mm: np.ndarray | Tensor, fmt: FaceScapeFormat, resolution: int) -> Tensor:
    """(S, S) millimetres -> (R, R) float32: the face crop, area-averaged (an exact box filter of the float map)."""
    x0, y0, x1, y1 = fmt.crop
    face = torch.as_tensor(mm)[y0:y1, x0:x1].double()  # float64 sums: no error above the 16-bit quantum
    if face.shape[0] < resolution or face.shape[1] < resolution:
        out = F.interpolate(face[None, None], size=(resolution, resolution), mode="bilinear", align_corners=False)
    else:
        out = F.interpolate(face[None, None], size=(resolution, resolution), mode="area")
    return out[0, 0].float()


def load_facescape_map(path: str | os.PathLike, resolution: int, fmt: FaceScapeFormat = FACESCAPE) -> Tensor:
    """A FaceScape displacement PNG as the (R, R) float32 millimetre map DNPM trains on (read, crop, resize)."""
    return crop_resize(fmt.to_mm(read_displacement_png(path, fmt)), fmt, resolution)


def crop_uv(uv: Tensor, fmt: FaceScapeFormat = FACESCAPE) -> Tensor:
    """(..., 2) UVs of FaceScape's full layout (v up) -> UVs of the cropped map (v up; outside [0, 1]: off the crop).

    Pixel ``(x, y)`` of the full map covers ``u in [x, x + 1] / S``, ``v in [S - y - 1, S - y] / S``.
    """
    x0, y0, x1, y1 = fmt.crop
    s = fmt.size
    u = (uv[..., 0] * s - x0) / (x1 - x0)
    v = ((1.0 - uv[..., 1]) * s - y0) / (y1 - y0)
    return torch.stack([u, 1.0 - v], dim=-1)


def read_vector(path: str | os.PathLike, length: int, what: str) -> np.ndarray:
    """A (length,) float vector from a ``.npy`` file (no pickles).

    Raises:
        DisplacementFormatError: ``missing_params``, ``bad_params`` (unreadable, wrong shape, an expression vector
            whose entry 0 is not 1), ``non_finite``.
    """
    path = Path(path)
    if not path.is_file():
        raise DisplacementFormatError("missing_params", f"no {what} file", path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DisplacementFormatError("bad_params", f"unreadable {what} ({err})", path) from err
    arr = np.asarray(arr, dtype=np.float64).reshape(-1) if np.asarray(arr).size == length else arr
    if arr.shape != (length,):
        raise DisplacementFormatError("bad_params", f"{what} must have shape ({length},), got {np.shape(arr)}", path)
    if not np.isfinite(arr).all():
        raise DisplacementFormatError("non_finite", f"{what} has NaN or infinite entries", path)
    if length == NUM_EXPRESSION and abs(float(arr[0]) - 1.0) > 1e-6:
        raise DisplacementFormatError("bad_params", f"{what}: FaceScape expression vectors start with the neutral "
                                      f"weight 1, got {arr[0]}", path)
    return arr.astype(np.float32)


@dataclass(frozen=True)
class FaceScapeItem:
    """One displacement map of a FaceScape folder.

    Attributes:
        png: the map. subject: the subject folder name. stem: ``<k>_<expression>``.
        identity_path: ``<subject>/params/id.npy``. expression_path: ``<subject>/params/<stem>.npy``.
    """

    png: Path
    subject: str
    stem: str
    identity_path: Path
    expression_path: Path

    @property
    def key(self) -> str:
        return f"{self.subject}/{self.stem}"


def scan_facescape(root: str | os.PathLike) -> list[FaceScapeItem]:
    """Every ``<subject>/dpmap/*.png`` below ``root`` (sorted by subject, then stem; see the module docstring).

    Raises:
        DisplacementFormatError: ``not_found`` when ``root`` is not a folder or holds no ``*/dpmap/*.png``.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DisplacementFormatError("not_found", "not a directory (expected FaceScape's <subject>/dpmap/*.png)", root)
    items = []
    for png in root.glob("*/dpmap/*.png"):
        subject = png.parent.parent.name
        params = png.parent.parent / "params"
        items.append(FaceScapeItem(png, subject, png.stem, params / "id.npy", params / f"{png.stem}.npy"))
    if not items:
        raise DisplacementFormatError("not_found", "no <subject>/dpmap/*.png below this folder (the layout of "
                                      "FaceScape's TU-model release)", root)
    return sorted(items, key=lambda i: (_natural(i.subject), _natural(i.stem)))


def _natural(name: str) -> tuple:
    head = name.split("_", 1)[0]
    return (0, int(head), name) if head.isdigit() else (1, 0, name)


# ------------------------------------------------------------------------------------------- bilinear coefficients
@torch.no_grad()
def fit_bilinear_coefficients(model, verts: Tensor, iterations: int = 10, ridge: float = 1e-3
                              ) -> tuple[Tensor, Tensor, Tensor]:
    """Identity and expression vectors of one subject's registered meshes (FaceScape's ``models_reg`` OBJs share the
    bilinear model's topology and frame): alternating least squares on ``verts = (w_exp ⊗ w_id) core``.

    The identity is shared by the subject's M meshes, each mesh has its own blendshape weights in [0, 1] (projected
    least squares); a ridge term ``ridge * |id|^2`` (the identity prior in std units) keeps the identity finite when
    few meshes constrain it.

    Args:
        model: a :class:`facelab.morphable.bilinear.BilinearModel` (FaceScape v1.6).
        verts: (M, V, 3) the meshes in millimetres.
        iterations: alternations (identity, then every mesh's expression).
        ridge: weight of the identity prior.

    Returns:
        ``(identity (K_id,), expression (M, 52) with entry 0 = 1, rms (M,) fit error in mm)``.

    Raises:
        ValueError: a vertex count other than the model's, or non-finite vertices.
    """
    from scipy.optimize import lsq_linear

    v = model.num_verts
    if verts.dim() != 3 or verts.shape[1:] != (v, 3):
        raise ValueError(f"meshes must be (M, {v}, 3) (the bilinear model's topology), got {tuple(verts.shape)}")
    if not torch.isfinite(verts).all():
        raise ValueError("meshes have non-finite vertices")
    core = model.core.double().view(NUM_EXPRESSION, -1, 3 * v)  # (52, K, 3V)
    k = model.num_id
    mean, std = model.id_mean.double(), model.id_std.double()
    target = verts.double().reshape(len(verts), -1)  # (M, 3V)
    blend = target.new_zeros(len(verts), NUM_EXPRESSION - 1)
    eye = torch.eye(k, dtype=target.dtype)
    for _ in range(iterations):
        # identity, shared by the meshes: normal equations accumulated mesh by mesh (no (M, K, 3V) tensor)
        gram, rhs = ridge * eye, target.new_zeros(k)
        for m in range(len(verts)):
            w_exp = torch.cat([blend.new_ones(1), blend[m]])
            basis = torch.einsum("e,ekx->kx", w_exp, core)  # (K, 3V): verts_m = w_id @ basis
            design = basis[:k] * std[:k, None]  # coefficient -> coordinates
            gram = gram + design @ design.T
            rhs = rhs + design @ (target[m] - mean @ basis)
        coeff = torch.linalg.solve(gram, rhs)
        w_id = mean.clone()
        w_id[:k] += coeff * std[:k]
        shapes = torch.einsum("k,ekx->ex", w_id, core)  # (52, 3V): neutral + blendshape deltas of this identity
        # bounded least squares (FaceScape's weights live in [0, 1]) on the 51 x 51 normal equations:
        # |A b - y|^2 = |L^T b - L^-1 A^T y|^2 + const with A^T A = L L^T
        a = shapes[1:].T
        chol = torch.linalg.cholesky(a.T @ a + 1e-9 * torch.eye(a.shape[1], dtype=a.dtype))
        rhs_b = torch.linalg.solve_triangular(chol, a.T @ (target - shapes[0]).T, upper=False)  # (51, M)
        lt = chol.T.numpy()
        blend = torch.from_numpy(np.stack([lsq_linear(lt, r, bounds=(0.0, 1.0), method="bvls").x
                                           for r in rhs_b.T.numpy()]))
    w_exp = torch.cat([blend.new_ones(len(verts), 1), blend], dim=1)
    fitted = w_exp @ shapes
    rms = (fitted - target).view(len(verts), v, 3).norm(dim=-1).pow(2).mean(dim=1).sqrt()
    return coeff.float(), w_exp.float(), rms.float()


# ------------------------------------------------------------------------------------------------------- the cache
CACHE_SETTINGS = "cache.json"
MAPS_DIR = "maps"


class DisplacementCacheWriter(CacheWriter):
    """A :class:`facelab.data.cache.CacheWriter` for displacement maps: ``.npy`` files instead of face crops.

    Args:
        root: the cache directory.
        settings: the run's settings (resolution, dtype, format); refused if the cache was made with others.
    """

    def __init__(self, root: str | os.PathLike, settings: dict):
        super().__init__(root)
        path = self.root / CACHE_SETTINGS
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved != settings:
                changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
                raise ValueError(f"{self.root} is a displacement cache made with other settings ({', '.join(changed)}:"
                                 f" {[saved.get(k) for k in changed]} vs {[settings.get(k) for k in changed]}); use "
                                 "another --out or the same settings")
        else:
            tmp = self.root / f".{CACHE_SETTINGS}.tmp"
            tmp.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, path)

    def map_path(self, item: FaceScapeItem) -> Path:
        return self.root / MAPS_DIR / item.subject / f"{item.stem}.npy"

    def write_map(self, item: FaceScapeItem, array: np.ndarray, identity: np.ndarray | None,
                  expression: np.ndarray | None) -> None:
        """Store one map atomically (temporary file, fsync, rename), then mark its item finished."""
        path = self.map_path(item)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._append({"key": item.key, "source": str(item.png), "frame": -1, "status": "ok", "faces": [],
                      "file": path.relative_to(self.root).as_posix(), "subject": item.subject, "stem": item.stem,
                      "identity": None if identity is None else [float(x) for x in identity],
                      "expression": None if expression is None else [float(x) for x in expression]})

    def write_report(self, **extra) -> dict:
        """``report.json``: maps written, skipped files with reasons (all runs), plus ``extra``."""
        items = read_index(self.root)
        skipped = [{"source": e["source"], "reason": e["reason"], "detail": e.get("detail", "")}
                   for e in items if e["status"] == "skipped"]
        reasons: dict[str, int] = {}
        for s in skipped:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        ok = [e for e in items if e["status"] == "ok"]
        report = {"items_total": len(items), "maps": len(ok), "subjects": len({e["subject"] for e in ok}),
                  "items_skipped": len(skipped), "skipped_by_reason": dict(sorted(reasons.items())),
                  "skipped": skipped, **extra}
        tmp = self.root / ".report.json.tmp"
        tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.root / "report.json")
        return report


def read_cache_settings(root: str | os.PathLike) -> dict:
    """The settings of a displacement cache (``cache.json``).

    Raises:
        DisplacementFormatError: ``not_found`` when ``root`` is not such a cache.
    """
    path = Path(root) / CACHE_SETTINGS
    if not path.is_file():
        raise DisplacementFormatError("not_found", f"no {CACHE_SETTINGS}: not a displacement cache (make one with "
                                      "`facelab prepare --method dnpm --input FACESCAPE_DIR --out CACHE`)", root)
    return json.loads(path.read_text(encoding="utf-8"))


def split_subjects(subjects: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """Disjoint train/val/test subject lists: a seeded permutation of the sorted subjects cut by ``fractions``
    (val and test get at least one subject each when their fraction is > 0 and there are >= 3 subjects)."""
    subjects = sorted(set(subjects), key=_natural)
    order = np.random.default_rng(seed).permutation(len(subjects))
    n = len(subjects)
    n_val = max(1 if fractions[1] > 0 and n >= 3 else 0, round(fractions[1] * n))
    n_test = max(1 if fractions[2] > 0 and n >= 3 else 0, round(fractions[2] * n))
    picked = [subjects[i] for i in order]
    return {"test": sorted(picked[:n_test], key=_natural), "val": sorted(picked[n_test:n_test + n_val], key=_natural),
            "train": sorted(picked[n_test + n_val:], key=_natural)}


class FaceScapeDisplacementDataset(Dataset):
    """Maps of a displacement cache (``facelab prepare --method dnpm``) as :class:`DisplacementSample` (mm).

    Args:
        root: the cache directory.
        split: ``train`` | ``val`` | ``test`` | ``all``: disjoint subject sets (:func:`split_subjects`).
        split_fractions: (train, val, test) shares of the subjects.
        seed: seed of the subject split.
        require_params: refuse a cache without identity / expression vectors (Detailed3DMM needs them); without,
            their fields are zeros (expression ``[1, 0, ...]``).
        mask_path: an optional (R, R) ``.npy`` / PNG UV-validity mask of the crop (default: all ones).

    Raises:
        DisplacementFormatError: not a cache; ``require_params`` and a map without vectors.
    """

    def __init__(self, root: str | os.PathLike, split: Literal["train", "val", "test", "all"] = "train",
                 split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05), seed: int = 0,
                 require_params: bool = False, mask_path: str | None = None):
        super().__init__()
        self.root = Path(root)
        self.settings = read_cache_settings(self.root)
        self.resolution = int(self.settings["resolution"])
        entries = [e for e in read_index(self.root) if e["status"] == "ok"]
        if split != "all":
            keep = set(split_subjects([e["subject"] for e in entries], tuple(split_fractions), seed)[split])
            entries = [e for e in entries if e["subject"] in keep]
        self.entries = sorted(entries, key=lambda e: (_natural(e["subject"]), _natural(e["stem"])))
        if require_params:
            missing = [e["key"] for e in self.entries if e.get("identity") is None or e.get("expression") is None]
            if missing:
                raise DisplacementFormatError("missing_params", f"{len(missing)} map(s) without identity/expression "
                                              f"vectors (e.g. {missing[0]}); rebuild the cache with the vectors",
                                              self.root)
        subjects = sorted({e["subject"] for e in self.entries}, key=_natural)
        self.subject_ids = {s: i for i, s in enumerate(subjects)}
        self.mask = self._mask(mask_path)

    def _mask(self, path: str | None) -> Tensor:
        r = self.resolution
        if path is None:
            return torch.ones(1, r, r)
        path = Path(path)
        if path.suffix == ".npy":
            m = np.load(path, allow_pickle=False).astype(np.float32)
        else:
            from PIL import Image

            with Image.open(path) as img:
                m = (np.asarray(img.convert("L")) > 127).astype(np.float32)
        t = torch.from_numpy(m)[None, None]
        return (F.interpolate(t, size=(r, r), mode="area")[0] >= 0.5).float()

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> DisplacementSample:
        e = self.entries[index]
        path = self.root / e["file"]
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise DisplacementFormatError("corrupt", f"unreadable cache entry ({err}); rerun prepare", path) from err
        if arr.shape != (self.resolution, self.resolution) or not np.isfinite(arr).all():
            raise DisplacementFormatError("corrupt", f"cache entry of shape {arr.shape} (expected "
                                          f"{self.resolution}^2) or with non-finite values; rerun prepare", path)
        identity = torch.zeros(NUM_IDENTITY) if e.get("identity") is None else torch.tensor(e["identity"])
        expression = torch.zeros(NUM_EXPRESSION) if e.get("expression") is None else torch.tensor(e["expression"])
        if e.get("expression") is None:
            expression[0] = 1.0
        return DisplacementSample(map=torch.from_numpy(arr.astype(np.float32))[None], identity=identity.float(),
                                  expression=expression.float(), mask=self.mask, key=e["key"],
                                  subject=self.subject_ids[e["subject"]])


# ------------------------------------------------------------------------------------------------- the DataModule
class _Collate:
    """Collate samples to a :class:`DisplacementBatch` with maps in units of ``scale_mm`` (picklable for workers)."""

    def __init__(self, scale_mm: float):
        self.scale_mm = float(scale_mm)

    def __call__(self, samples: list[DisplacementSample]) -> DisplacementBatch:
        return DisplacementSample.collate(samples).normalized(self.scale_mm)


class DisplacementDataModule(SplitLoaders, LightningDataModule):
    """Displacement maps for DNPM and Detailed3DMM: the synthetic world or a FaceScape cache.

    Batches are :class:`facelab.data.detail_maps.DisplacementBatch`: ``map`` (B, 1, R, R) in units of
    ``batch.scale_mm`` millimetres (the training maps' std when ``normalize``: ~unit variance for the GAN;
    ``batch.map_mm()`` is millimetres), ``identity`` (B, 50), ``expression`` (B, 52), ``mask`` (B, 1, R, R).
    :attr:`scale_mm` is the std used (estimated from the first ``stat_samples`` training maps inside their masks,
    or given), saved in checkpoints (``state_dict``).

    Args:
        source: ``synthetic`` (:class:`~facelab.data.detail_maps.SyntheticDisplacementDataset`) or ``facescape``
            (a cache of ``facelab prepare --method dnpm``, ``cache_dir``).
        cache_dir: the FaceScape cache (``source: facescape``).
        resolution: map side (synthetic: any in [32, 1024]; a cache must have been made at this resolution).
        batch_size: maps per batch and process.
        num_workers: DataLoader workers.
        seed: dataset seed (synthetic identities/expressions; FaceScape subject split) and shuffling seed.
        num_train, num_val, num_test: synthetic identities per split.
        expressions_per_identity: synthetic maps per identity (FaceScape: 20).
        split_fractions: FaceScape subject shares (train, val, test).
        require_params: FaceScape: refuse maps without identity/expression vectors (Detailed3DMM).
        mask_path: FaceScape: UV-validity mask of the crop (default all ones).
        normalize: divide the maps by ``scale_mm``.
        scale_mm: the std in mm (None: estimated).
        stat_samples: training maps read to estimate the std.
        world: synthetic identity -> detail settings (:class:`~facelab.data.detail_maps.DetailWorld`).
        scene: synthetic identity / expression prior (:class:`~facelab.data.synthetic.SceneConfig`).
        sequence_length: synthetic sweeps of T frames per item (0: single maps).
        pin_memory: pin batches (GPU training).
        persistent_workers: keep workers between epochs.
    """

    def __init__(
        self,
        source: Literal["synthetic", "facescape"] = "synthetic",
        cache_dir: str | None = None,
        resolution: int = 64,
        batch_size: int = 32,
        num_workers: int = 2,
        seed: int = 0,
        num_train: int = 500,
        num_val: int = 20,
        num_test: int = 20,
        expressions_per_identity: int = 20,
        split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
        require_params: bool = False,
        mask_path: str | None = None,
        normalize: bool = True,
        scale_mm: float | None = None,
        stat_samples: int = 512,
        world: DetailWorld | None = None,
        scene: SceneConfig | None = None,
        sequence_length: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        if source not in ("synthetic", "facescape"):
            raise ValueError(f"source must be 'synthetic' or 'facescape', got '{source}'")
        if source == "facescape" and not cache_dir:
            raise ValueError("source 'facescape' needs cache_dir (a cache of `facelab prepare --method dnpm`)")
        if scale_mm is not None and not (math.isfinite(scale_mm) and scale_mm > 0):
            raise ValueError(f"scale_mm must be a positive number, got {scale_mm}")
        self.world = DetailWorld(**world) if isinstance(world, dict) else world
        self.scene = SceneConfig(**scene) if isinstance(scene, dict) else scene
        self.save_hyperparameters(ignore=["world", "scene"])
        self.hparams["world"] = None if self.world is None else dataclasses.asdict(self.world)
        self.hparams["scene"] = None if self.scene is None else dataclasses.asdict(self.scene)
        self.datasets: dict[str, Dataset] = {}
        self.scale_mm: float | None = None if not normalize else scale_mm

    def _dataset(self, split: str) -> Dataset:
        hp = self.hparams
        if hp.source == "facescape":
            ds = FaceScapeDisplacementDataset(hp.cache_dir, split, tuple(hp.split_fractions), hp.seed,
                                              hp.require_params, hp.mask_path)
            if ds.resolution != hp.resolution:
                raise ValueError(f"{hp.cache_dir} holds {ds.resolution}^2 maps but resolution={hp.resolution}: make a "
                                 f"cache at {hp.resolution} (`facelab prepare --method dnpm --resolution "
                                 f"{hp.resolution}`)")
            return ds
        model = next(iter(self.datasets.values())).model if self.datasets else None
        counts = {"train": hp.num_train, "val": hp.num_val, "test": hp.num_test}
        return SyntheticDisplacementDataset(counts[split], hp.expressions_per_identity, split, hp.seed, hp.resolution,
                                            world=self.world, scene=self.scene, sequence_length=hp.sequence_length,
                                            model=model)

    def setup(self, stage: str | None = None) -> None:
        """Build the splits a stage needs, then the normalisation scale (from the training maps)."""
        wanted = {"fit": ("train", "val"), "validate": ("train", "val"), "test": ("train", "test"),
                  "predict": ("train", "test"), None: ("train", "val", "test")}[stage]
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self._dataset(split)
        if self.scale_mm is None:
            if not self.hparams.normalize:
                self.scale_mm = 1.0
            else:
                self.scale_mm = displacement_std_mm(self.datasets["train"], self.hparams.stat_samples)
                if not self.scale_mm > 0:
                    raise ValueError("the training maps are constant (std 0): nothing to normalise by; set scale_mm")

    def _loader_kwargs(self) -> dict:
        hp = self.hparams
        return dict(batch_size=hp.batch_size, num_workers=hp.num_workers, collate_fn=_Collate(self.scale_mm),
                    pin_memory=hp.pin_memory, persistent_workers=hp.persistent_workers and hp.num_workers > 0)

    def state_dict(self) -> dict:
        return {"scale_mm": self.scale_mm}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("scale_mm") is not None:
            self.scale_mm = float(state_dict["scale_mm"])
