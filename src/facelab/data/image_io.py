"""Reading real images robustly: any common format and mode in, RGB ``uint8`` out, or a :class:`DataError`.

Photo collections (FFHQ, CelebA, phone pictures, web scrapes) contain every kind of file: JPEGs cut off mid-download,
HTML saved as ``.jpg``, grayscale and palette images, PNGs with an alpha channel, 16-bit PNGs, EXIF-rotated
portraits. :func:`read_image` turns all of them into the one array layout the rest of facelab uses, ``(H, W, 3)``
``uint8`` RGB in display orientation, and reports everything it cannot read as a :class:`DataError` whose
``reason`` is a short stable code (used to group skipped files in preprocessing reports).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facelab.errors import FacelabError

__all__ = ["IMAGE_EXTENSIONS", "DataError", "UnusableFacesError", "is_image_file", "list_images", "read_image"]

#: File name endings treated as images (lower case) when scanning folders.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


class DataError(FacelabError, ValueError):
    """A data file (image, video, cache entry) cannot be used.

    Attributes:
        reason: a short stable code for reports, e.g. ``"not_an_image"``, ``"corrupt"``, ``"too_small"``,
            ``"no_face"``, ``"unreadable_video"``.
        path: the offending file, if known.
    """

    def __init__(self, reason: str, message: str, path: str | os.PathLike | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(f"{path}: {message}" if path is not None else message)


class UnusableFacesError(DataError):
    """Some face crops of a batch cannot be encoded by a method (e.g. no landmarks found in them); the others can.

    ``facelab reconstruct`` drops these faces (reported per face with ``reason``) and encodes the rest.

    Attributes:
        faces: indices of the unusable crops in the batch given to ``encode``.
    """

    def __init__(self, reason: str, message: str, faces: list[int] | tuple[int, ...],
                 path: str | os.PathLike | None = None):
        self.faces = tuple(int(k) for k in faces)
        super().__init__(reason, message, path)


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path``'s extension is one of :data:`IMAGE_EXTENSIONS` (the content is not checked)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """All image files below ``root`` (recursively, following nested folders), sorted for determinism.

    Hidden files and folders (names starting with ``.``) are ignored.

    Raises:
        DataError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("not_found", "not a directory", root)
    return sorted(_walk(root, tuple(e.lower() for e in extensions)))


def _walk(root: Path, extensions: tuple[str, ...]) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(extensions):
                yield Path(dirpath) / name


def read_image(path: str | os.PathLike, *, min_side: int = 1, background: int = 0) -> np.ndarray:
    """Read an image file as RGB ``uint8`` in display orientation.

    Handles every mode PIL decodes: ``L``/``LA``/``P``/``1``/``CMYK``/``YCbCr`` are converted to RGB; alpha
    (``RGBA``, ``LA``, palette transparency) is composited over a uniform ``background`` grey level; 16- and
    32-bit integer and float images (``I;16``, ``I``, ``F``) are rescaled to 8 bits; EXIF orientation is applied.
    Nothing is ever written to ``path``.

    Args:
        path: the image file.
        min_side: smallest accepted ``min(H, W)`` in pixels.
        background: grey level (0..255) under transparent pixels.

    Returns:
        (H, W, 3) uint8 array.

    Raises:
        DataError: with ``reason`` ``"not_found"``, ``"not_an_image"`` (not decodable as an image at all),
            ``"corrupt"`` (an image file that fails to decode: truncated, damaged), ``"too_large"``
            (decompression-bomb guard) or ``"too_small"``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("not_found", "no such file", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as probe:  # verify() catches damaged PNG chunks; it invalidates the object
                probe.verify()
            with Image.open(path) as img:
                img.load()  # raises on truncated data (PIL's LOAD_TRUNCATED_IMAGES is left at False)
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb_uint8(img, background)
    except UnidentifiedImageError as err:
        raise DataError("not_an_image", "not a readable image (unknown or damaged format)", path) from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError("too_large", f"refused as a possible decompression bomb: {err}", path) from err
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as err:
        # PIL reports truncated/damaged data with any of these depending on the codec
        raise DataError("corrupt", f"damaged or truncated image data ({type(err).__name__}: {err})", path) from err
    if min(rgb.shape[:2]) < min_side:
        raise DataError("too_small", f"image is {rgb.shape[1]}x{rgb.shape[0]} px, below {min_side} px", path)
    return rgb


def _to_rgb_uint8(img: Image.Image, background: int) -> np.ndarray:
    """Convert a loaded PIL image of any mode to a (H, W, 3) uint8 RGB array."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return np.repeat(_high_depth_to_uint8(img)[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBa") or (img.mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        canvas = Image.new("RGBA", img.size, (background, background, background, 255))
        img = Image.alpha_composite(canvas, img)
    return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy


def _high_depth_to_uint8(img: Image.Image) -> np.ndarray:
    """(H, W) uint8 from a single-channel 16/32-bit integer or float image.

    16-bit data (PIL decodes 16-bit PNGs as ``I;16`` or ``I``) maps 0..65535 to 0..255; float images are assumed
    to be in [0, 1] when their maximum is at most 1, else rescaled by their maximum.
    """
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        peak = float(np.nanmax(arr)) if arr.size else 1.0
        arr = arr / (peak if peak > 1.0 else 1.0) * 255.0
    else:
        arr = arr.astype(np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        arr = arr / (65535.0 if peak <= 65535 else peak) * 255.0
    return np.clip(np.nan_to_num(arr) + 0.5, 0, 255).astype(np.uint8)
