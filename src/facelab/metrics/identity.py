"""Face identity: ArcFace 112x112 alignment from five points, ArcFace ONNX embeddings, the FaceID distance.

* :func:`arcface_crop` is insightface's ``face_align.norm_crop``: the similarity transform that maps the five points
  (image-left eye, image-right eye, nose tip, left and right mouth corners: MTCNN's / RetinaFace's order) onto
  ArcFace's template (Deng et al. 2019; :data:`ARCFACE_TEMPLATE`), then a bilinear warp. MICA and every ArcFace
  model expect exactly this crop. :func:`arcface_crop_batch` is the same transform applied to (B, C, H, W)
  tensors with kornia (batched, on the images' device, differentiable in the images).
* :class:`ArcFaceOnnx`: an insightface recognition model (e.g. ``w600k_r50.onnx`` of the ``buffalo_l`` model pack)
  run by onnxruntime through ``insightface.model_zoo.get_model``, from a local path only.
* :func:`faceid_distance` / :class:`FaceIDDistance`: ``1 - cos(e_a, e_b)`` of identity embeddings (FaceDet3D's
  Table 1 "FaceID distance"), with ArcFace ONNX or any injected torch embedder (e.g. FaceNet's
  ``InceptionResnetV1`` with local weights).

Images are RGB: tensors (B, 3, H, W) in [0, 1]; numpy arrays (H, W, C) as given (uint8 or float).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from facelab.errors import AssetFormatError, MissingAssetError
from facelab.io.assets import require_file

__all__ = [
    "ARCFACE_MODEL_SOURCE",
    "ARCFACE_TEMPLATE",
    "ArcFaceOnnx",
    "FaceIDDistance",
    "arcface_crop",
    "arcface_crop_batch",
    "arcface_transform",
    "faceid_distance",
]

#: Where users obtain an ArcFace ONNX model (shown in the missing-model error).
ARCFACE_MODEL_SOURCE = ("insightface's model packs (non-commercial research licence): buffalo_l.zip of the "
                        "deepinsight/insightface GitHub releases holds w600k_r50.onnx; unzip it and pass the .onnx "
                        "file or the pack folder (e.g. ~/.insightface/models/buffalo_l)")

#: Recognition models of the insightface model packs, in the order a pack folder is searched.
_PACK_RECOGNITION_MODELS = ("w600k_r50.onnx", "glintr100.onnx", "w600k_mbf.onnx")


def _face_align():
    from insightface.utils import face_align

    return face_align


#: (5, 2) ArcFace's five-point template in a 112x112 crop (pixels; insightface ``face_align.arcface_dst``).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float32)


def _five_points(points, name: str = "five_points") -> np.ndarray:
    array = points.detach().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    if array.shape != (5, 2):
        raise ValueError(f"{name} must be (5, 2) pixel coordinates (eyes, nose, mouth corners), got {array.shape}")
    return array.astype(np.float32)


def arcface_transform(five_points, size: int = 112) -> np.ndarray:
    """(2, 3) the similarity ``insightface.utils.face_align.estimate_norm`` fits from (5, 2) image points (pixels)
    to the ArcFace template of a ``size`` x ``size`` crop (``size`` a multiple of 112 or 128)."""
    with warnings.catch_warnings():  # scikit-image 0.26 deprecates the estimate() insightface calls
        warnings.simplefilter("ignore", FutureWarning)
        return _face_align().estimate_norm(_five_points(five_points), image_size=size)


def arcface_crop(image: np.ndarray, five_points, size: int = 112) -> np.ndarray:
    """``insightface.utils.face_align.norm_crop``: the (size, size, C) ArcFace crop of an (H, W, C) image.

    Args:
        image: (H, W, C) array (uint8 or float; any channel order, it is only warped).
        five_points: (5, 2) pixel coordinates: image-left eye, image-right eye, nose, left and right mouth corners.
        size: crop side (112 for ArcFace and MICA).
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise ValueError(f"arcface_crop expects an (H, W, C) numpy image, got {getattr(image, 'shape', image)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _face_align().norm_crop(image, _five_points(five_points), image_size=size)


def arcface_crop_batch(images: Tensor, five_points: Tensor, size: int = 112) -> Tensor:
    """(B, C, size, size) ArcFace crops of (B, C, H, W) images from (B, 5, 2) pixel points: the transform of
    :func:`arcface_transform`, bilinear warp with zero padding (as ``norm_crop``; kornia, differentiable)."""
    if images.dim() != 4 or five_points.shape != (images.shape[0], 5, 2):
        raise ValueError(f"arcface_crop_batch expects (B, C, H, W) images and (B, 5, 2) points, got "
                         f"{tuple(images.shape)} and {tuple(five_points.shape)}")
    matrices = np.stack([arcface_transform(p, size) for p in five_points.detach().cpu().numpy()])
    m = torch.as_tensor(matrices, dtype=images.dtype, device=images.device)
    return kornia.geometry.transform.warp_affine(images, m, (size, size), mode="bilinear", padding_mode="zeros",
                                                 align_corners=True)


def _resolve_arcface_model(model_path: str | os.PathLike) -> Path:
    path = Path(model_path).expanduser()
    if path.is_dir():
        for name in _PACK_RECOGNITION_MODELS:
            if (path / name).is_file():
                return path / name
        found = sorted(p.name for p in path.glob("*.onnx"))
        raise MissingAssetError(f"{path}: no ArcFace recognition model ({', '.join(_PACK_RECOGNITION_MODELS)}) in "
                                f"this model pack folder (it has {found or 'no .onnx files'})\n  set by: arcface_model"
                                f"\n  obtain it from: {ARCFACE_MODEL_SOURCE}")
    try:
        return require_file(path, what="ArcFace ONNX model", config_key="arcface_model")
    except MissingAssetError as err:
        raise MissingAssetError(f"{err}\n  obtain it from: {ARCFACE_MODEL_SOURCE}") from None


class ArcFaceOnnx:
    """An insightface ArcFace recognition model (ONNX, onnxruntime) loaded from a local file or model pack.

    Not an ``nn.Module`` (no parameters to train or move): call it on aligned crops, get embeddings on the crops'
    device. The model's own input normalization (insightface reads it from the graph) is applied.

    Args:
        model_path: the ``.onnx`` file (e.g. ``buffalo_l/w600k_r50.onnx``) or a model-pack folder.
        providers: onnxruntime execution providers (None: CPU).

    Raises:
        MissingAssetError: no such file / no recognition model in the folder. AssetFormatError: not an ArcFace
            recognition model (square input of >= 112 pixels, one output).
    """

    def __init__(self, model_path: str, providers: Sequence[str] | None = None) -> None:
        from insightface.model_zoo import get_model
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        self.path = _resolve_arcface_model(model_path)
        model = get_model(str(self.path), providers=list(providers or ["CPUExecutionProvider"]))
        if not isinstance(model, ArcFaceONNX):
            raise AssetFormatError(f"{self.path}: insightface does not read it as an ArcFace recognition model (got "
                                   f"{type(model).__name__}); pass the pack's recognition model, e.g. w600k_r50.onnx")
        self.model = model
        self.input_size: int = int(model.input_size[0])

    def __call__(self, crops: Tensor) -> Tensor:
        """(B, D) embeddings of (B, 3, S, S) aligned RGB crops in [0, 1] (``S`` = :attr:`input_size`)."""
        if crops.dim() != 4 or crops.shape[1] != 3 or tuple(crops.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(f"ArcFaceOnnx expects (B, 3, {self.input_size}, {self.input_size}) aligned crops, got "
                             f"{tuple(crops.shape)} (use arcface_crop_batch)")
        blob = (crops.detach().float().cpu() * 255.0).numpy()  # insightface's pixel scale; RGB as get_feat makes it
        return torch.from_numpy(np.asarray(self.model.forward(blob), dtype=np.float32)).to(crops.device)


def faceid_distance(embedding_a: Tensor, embedding_b: Tensor) -> Tensor:
    """(B,) cosine distance ``1 - <a, b> / (|a| |b|)`` of (B, D) identity embeddings (0: same direction, up to 2)."""
    if embedding_a.shape != embedding_b.shape or embedding_a.dim() != 2:
        raise ValueError(f"faceid_distance expects two (B, D) embeddings, got {tuple(embedding_a.shape)} and "
                         f"{tuple(embedding_b.shape)}")
    return 1.0 - F.cosine_similarity(embedding_a, embedding_b.to(embedding_a), dim=-1, eps=1e-12)


class FaceIDDistance:
    """FaceID distance of image pairs: embed both (after the ArcFace five-point crop when points are given),
    then :func:`faceid_distance`.

    Args:
        embedder: any callable (B, 3, h, w) in [0, 1] -> (B, D) (a torch ``nn.Module`` such as FaceNet; it is put in
            eval mode); takes precedence over ``arcface_model``.
        arcface_model: local ArcFace ONNX file or insightface model-pack folder (:class:`ArcFaceOnnx`).
        crop_size: side of the five-point crops (the ONNX model's input size when ``arcface_model`` is used).

    Raises:
        MissingAssetError: neither an embedder nor an ArcFace model (the message says where to get one).
    """

    def __init__(self, embedder: Callable[[Tensor], Tensor] | None = None, arcface_model: str | None = None,
                 crop_size: int = 112, providers: Sequence[str] | None = None) -> None:
        if embedder is None:
            if arcface_model is None:
                raise MissingAssetError("FaceID distance needs an identity network: set `arcface_model` to a local "
                                        f"ArcFace ONNX model ({ARCFACE_MODEL_SOURCE}), or inject a torch `embedder`")
            onnx_model = ArcFaceOnnx(arcface_model, providers)
            embedder, crop_size = onnx_model, onnx_model.input_size
        elif isinstance(embedder, torch.nn.Module):
            embedder.eval()
        self.embedder, self.crop_size = embedder, crop_size

    @torch.no_grad()
    def embed(self, images: Tensor, five_points: Tensor | None = None) -> Tensor:
        """(B, D) embeddings of (B, 3, H, W) images in [0, 1]: aligned crops already, or cropped with (B, 5, 2)
        pixel ``five_points``."""
        if five_points is not None:
            images = arcface_crop_batch(images, five_points.to(images), self.crop_size)
        return self.embedder(images)

    def __call__(self, pred: Tensor, target: Tensor, five_points: Tensor | None = None,
                 target_five_points: Tensor | None = None) -> Tensor:
        """(B,) FaceID distance of ``pred`` vs ``target`` images (B, 3, H, W); ``five_points`` (B, 5, 2) crop both
        unless ``target_five_points`` gives the target's own."""
        if pred.shape[0] != target.shape[0]:
            raise ValueError(f"FaceIDDistance: {pred.shape[0]} predicted and {target.shape[0]} target images")
        target_points = target_five_points if target_five_points is not None else five_points
        return faceid_distance(self.embed(pred, five_points), self.embed(target, target_points))
