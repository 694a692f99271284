"""Face detection with MTCNN (facenet-pytorch; its P/R/O-net weights ship inside the package and run offline).

:class:`FaceDetector` returns every face in an image as :class:`Detections`: boxes, the five MTCNN points (left eye,
right eye, nose tip, left and right mouth corners, in image order: "left" is the image's left) and scores.
Coordinates are continuous pixel coordinates ``(u, v)``, origin at the image's top-left corner, +v down (the
``pix`` convention of :mod:`facelab.render.camera`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Detections", "FaceDetector"]


@dataclass(frozen=True)
class Detections:
    """The faces found in one image, sorted by decreasing score.

    Attributes:
        boxes: (N, 4) float32 ``[u0, v0, u1, v1]`` in pixels.
        points: (N, 5, 2) float32 eye centres, nose tip and mouth corners in pixels.
        scores: (N,) float32 detection probabilities in [0, 1].
    """

    boxes: np.ndarray
    points: np.ndarray
    scores: np.ndarray

    def __post_init__(self):
        n = len(self.scores)
        if self.boxes.shape != (n, 4) or self.points.shape != (n, 5, 2) or self.scores.shape != (n,):
            raise ValueError(
                f"Detections shapes disagree: boxes {self.boxes.shape}, points {self.points.shape}, "
                f"scores {self.scores.shape}"
            )

    @classmethod
    def empty(cls) -> Detections:
        """No faces."""
        return cls(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros((0,), np.float32))

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def sizes(self) -> np.ndarray:
        """(N,) face size in pixels: the mean of box width and height."""
        return 0.5 * ((self.boxes[:, 2] - self.boxes[:, 0]) + (self.boxes[:, 3] - self.boxes[:, 1]))

    def select(self, keep: np.ndarray) -> Detections:
        """The detections at integer indices or where a boolean mask of shape (N,) is true."""
        return Detections(self.boxes[keep], self.points[keep], self.scores[keep])

    def filter(self, *, min_size: float = 0.0, min_score: float = 0.0, max_faces: int | None = None) -> Detections:
        """Keep faces at least ``min_size`` px and ``min_score``; then the ``max_faces`` best scores."""
        kept = self.select((self.sizes >= min_size) & (self.scores >= min_score))
        return kept if max_faces is None else kept.select(np.arange(min(max_faces, len(kept))))


class FaceDetector:
    """MTCNN face detector returning every face with its box, five points and score.

    Args:
        device: torch device string for the three MTCNN networks (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        min_face_size: smallest face MTCNN searches for, in pixels (smaller is slower; SMIRK's users ask for it).
        thresholds: MTCNN's P-, R- and O-net score thresholds.
        min_score: detections below this final score are dropped.
    """

    def __init__(
        self,
        device: str = "cpu",
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        min_score: float = 0.9,
    ):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "face detection needs facenet-pytorch: pip install 'facelab[data]' (facenet-pytorch==2.5.3)"
            ) from err
        self.min_score = min_score
        self._mtcnn = MTCNN(
            keep_all=True, min_face_size=min_face_size, thresholds=list(thresholds), device=device, post_process=False
        ).eval()

    def __call__(self, image: np.ndarray) -> Detections:
        """Detect faces in one image.

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            Detections sorted by decreasing score, with score >= ``min_score``.
        """
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """Detect faces in several images of the same size at once (faster on GPU).

        Args:
            images: list of (H, W, 3) uint8 RGB arrays, all the same shape.

        Returns:
            One :class:`Detections` per image.
        """
        for img in images:
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"expected (H, W, 3) uint8 RGB images, got {img.shape} {img.dtype}")
        import torch

        with torch.inference_mode():
            boxes, scores, points = self._mtcnn.detect(np.stack(images), landmarks=True)
        return [_to_detections(b, s, p, self.min_score) for b, s, p in zip(boxes, scores, points)]


def _to_detections(boxes, scores, points, min_score: float) -> Detections:
    """Normalise one image's MTCNN output (None when empty; object arrays under some numpy versions)."""
    if boxes is None or len(boxes) == 0 or scores is None or scores[0] is None:
        return Detections.empty()
    boxes = np.asarray(np.stack([np.asarray(b, np.float32) for b in boxes]), np.float32).reshape(-1, 4)
    points = np.asarray(np.stack([np.asarray(p, np.float32) for p in points]), np.float32).reshape(-1, 5, 2)
    scores = np.asarray([float(s) for s in scores], np.float32)
    order = np.argsort(-scores, kind="stable")
    return Detections(boxes[order], points[order], scores[order]).filter(min_score=min_score)
