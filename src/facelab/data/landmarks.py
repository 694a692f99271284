"""2D face landmarks: mediapipe face mesh (478 points, model ships with mediapipe 0.10.21) and FAN 68 (user checkpoint).

All landmarks are returned in continuous source pixels (``pix`` convention of :mod:`facelab.render.camera`: origin
at the top-left corner, +v down). Both landmarkers look at one face at a time: callers pass an image already
centred on a face (mediapipe) or the face's box (FAN), which is how several faces per image are handled.

FAN weights are not redistributable here: :class:`FanLandmarks` loads the TorchScript file the ``face_alignment``
package downloads (``2DFAN4-cd938726ad.zip``, in ``~/.cache/torch/hub/checkpoints``) from a path the user gives.
When no path is configured, FAN landmarks are simply absent (the preprocessing cache records that per sample).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from facelab.data.crop import crop_matrix, invert_affine, transform_points, warp_crop
from facelab.errors import AssetFormatError
from facelab.io.assets import require_file
from facelab.masks import convex_hull_mask

__all__ = ["FanLandmarks", "MediapipeFaceMesh", "decode_heatmaps", "hull_mask"]


def hull_mask(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Filled convex hull of landmarks (SMIRK's face mask: the hull of the 478 mediapipe points).

    A numpy front end of :func:`facelab.masks.convex_hull_mask` (one hull rasterizer for the whole project).

    Args:
        points: (L, 2) pixels (continuous, corner origin).
        size: ``(H, W)`` of the mask.

    Returns:
        (H, W) uint8 mask, 1 where the pixel centre is inside the hull (grown by 0.75 px so every pixel holding a
        landmark counts), 0 outside.
    """
    pts = torch.as_tensor(np.asarray(points, np.float64).reshape(1, -1, 2))
    return convex_hull_mask(pts, tuple(size))[0, 0].numpy().astype(np.uint8)


class MediapipeFaceMesh:
    """Mediapipe's legacy face-mesh solution: 478 landmarks (468 mesh points + 10 iris points) of one face.

    Use as a context manager or call :meth:`close` to free the mediapipe graph.

    Args:
        refine_landmarks: add the 10 iris points (478 instead of 468 landmarks; SMIRK uses 478).
        min_detection_confidence: mediapipe's face-detection threshold inside the solution.
    """

    def __init__(self, refine_landmarks: bool = True, min_detection_confidence: float = 0.5):
        try:
            from mediapipe.python.solutions import face_mesh
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "mediapipe face mesh needs mediapipe==0.10.21 (the last release shipping the legacy face-mesh "
                "model): pip install --no-deps mediapipe==0.10.21 (see the Makefile's install target)"
            ) from err
        self.num_landmarks = 478 if refine_landmarks else 468
        self._mesh = face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=1,
            refine_landmarks=refine_landmarks,
            min_detection_confidence=min_detection_confidence,
        )

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """Landmarks of the most prominent face.

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            (L, 2) float32 pixels (L = 478 or 468), or None when mediapipe finds no face.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        result = self._mesh.process(np.ascontiguousarray(image))
        if not result.multi_face_landmarks:
            return None
        norm = np.array([(p.x, p.y) for p in result.multi_face_landmarks[0].landmark], dtype=np.float32)
        return norm * np.array([image.shape[1], image.shape[0]], dtype=np.float32)

    def close(self) -> None:
        """Release the mediapipe graph."""
        self._mesh.close()

    def __enter__(self) -> MediapipeFaceMesh:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_heatmaps(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Landmark positions from FAN heatmaps: the arg-max, moved a quarter pixel toward the larger neighbour.

    Args:
        heatmaps: (B, L, h, w) heatmaps.

    Returns:
        ``(points, peaks)``: (B, L, 2) continuous heatmap pixel coordinates ``(u, v)`` (a peak at heatmap pixel
        ``(i, j)`` is at ``(j + 0.5, i + 0.5)`` before the refinement) and (B, L) the peak values (confidence).
    """
    b, n, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, n, h * w)
    peaks, idx = flat.max(-1)
    row, col = idx // w, idx % w
    padded = torch.nn.functional.pad(heatmaps, (1, 1, 1, 1), mode="replicate")
    bi = torch.arange(b, device=heatmaps.device)[:, None]
    li = torch.arange(n, device=heatmaps.device)[None, :]
    du = padded[bi, li, row + 1, col + 2] - padded[bi, li, row + 1, col]
    dv = padded[bi, li, row + 2, col + 1] - padded[bi, li, row, col + 1]
    u = col.to(heatmaps.dtype) + 0.5 + 0.25 * torch.sign(du)
    v = row.to(heatmaps.dtype) + 0.5 + 0.25 * torch.sign(dv)
    return torch.stack([u, v], -1), peaks


class FanLandmarks:
    """FAN 68-point landmarks (Bulat & Tzimiropoulos 2017) from the ``face_alignment`` package's TorchScript model.

    The face is cropped the way ``face_alignment`` does: a square of side ``200 * (w + h) / 195`` around the box
    centre moved up by 12 % of the box height, resampled to 256x256, RGB in [0, 1]; the network's 64x64 heatmaps are
    decoded by :func:`decode_heatmaps` and mapped back through the inverse crop.

    Args:
        checkpoint: path to the TorchScript file (``2DFAN4-cd938726ad.zip`` from face_alignment's model zoo).
        device: torch device string.
        config_key: the option that holds ``checkpoint`` (named in the error when the file is missing).
    """

    input_size = 256

    def __init__(self, checkpoint: str | os.PathLike, device: str = "cpu", config_key: str = "--fan-checkpoint"):
        path = require_file(checkpoint, what="FAN landmark checkpoint (face_alignment TorchScript)",
                            config_key=config_key, family="weights")
        try:
            self._net = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as err:
            raise AssetFormatError(
                f"{path} is not a TorchScript FAN model ({err.__class__.__name__}). facelab runs the TorchScript "
                "file face_alignment downloads (2DFAN4-cd938726ad.zip, see face_alignment's model zoo); plain state "
                "dicts are not supported because facelab does not re-implement the FAN architecture."
            ) from err
        self.device = torch.device(device)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """68 landmarks for each face box.

        Args:
            image: (H, W, 3) uint8 RGB.
            boxes: (N, 4) face boxes ``[u0, v0, u1, v1]`` in pixels.

        Returns:
            ``(landmarks, confidence)``: (N, 68, 2) float32 pixels and (N, 68) float32 heatmap peaks.
        """
        boxes_t = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4), device=self.device)
        if len(boxes_t) == 0:
            return np.zeros((0, 68, 2), np.float32), np.zeros((0, 68), np.float32)
        w, h = boxes_t[:, 2] - boxes_t[:, 0], boxes_t[:, 3] - boxes_t[:, 1]
        center = torch.stack([boxes_t[:, 0] + 0.5 * w, boxes_t[:, 1] + 0.5 * h - 0.12 * h], -1)
        matrix = crop_matrix(center, 200.0 * (w + h) / 195.0, self.input_size)
        src = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float().div(255.0)
        crops = warp_crop(src.expand(len(boxes_t), -1, -1, -1), matrix, self.input_size)
        out = self._net(crops)
        heatmaps = out[-1] if isinstance(out, (list, tuple)) else out
        points_hm, peaks = decode_heatmaps(heatmaps.float())
        points_crop = points_hm * (self.input_size / heatmaps.shape[-1])
        points = transform_points(points_crop, invert_affine(matrix))
        return points.cpu().numpy().astype(np.float32), peaks.cpu().numpy().astype(np.float32)
