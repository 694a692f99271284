"""``facelab evaluate --method smirk --ckpt CKPT --data DIR``: SMIRK on the user's own photos (no ground truth).

What is measured, each beside its trivial baseline:

* **Landmark NME vs mediapipe** (``nme_mp``): the model's 105 projected mediapipe landmarks against mediapipe's
  detections on the crop (NDC of the crop, half the side = 1; the training target). Baseline: the *mean landmarks*
  of the evaluated set as a constant prediction for every image (a constant that knows the set's average face).
* **Translator reconstruction** (supplementary Table 4, first two columns; core-phase checkpoints): L1 and VGG
  perceptual distance between the translator's output (rendered face + the masked crop) and the crop. Baseline:
  *copy the masked input* (the sparse crop the translator starts from); the VGG column needs ``--vgg-weights``.

``DIR`` is a ``facelab preprocess`` cache (it has an ``index.jsonl``) or a folder of photos, which is preprocessed
first (MTCNN + mediapipe 478 landmarks, SMIRK's 1.6 crop) into ``--cache`` (default: a temporary folder); images
without a face are skipped with their reason in the cache's ``report.json``.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from facelab.data.cache import INDEX_NAME
from facelab.data.image_io import DataError
from facelab.metrics import landmark_nme

__all__ = ["RealEvaluation", "evaluate_folder", "open_folder"]


@dataclass
class RealEvaluation:
    """The numbers of :func:`evaluate_folder` (None: not measured, with the reason in ``notes``)."""

    source: str
    data: str
    phase: str
    num_images: int
    nme_mp: float
    nme_mp_mean_landmarks: float
    translator_l1: float | None = None
    translator_vgg: float | None = None
    copy_masked_l1: float | None = None
    copy_masked_vgg: float | None = None
    notes: tuple[str, ...] = ()

    def format_table(self) -> str:
        def cell(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        def ratio(value: float | None, base: float | None) -> str:
            return "" if value is None or not base else f"{value / base:.2f}x"

        lines = [f"SMIRK on {self.data}: {self.num_images} faces, {self.source} ({self.phase})", "",
                 f"{'metric':<26}{'model':>10}{'baseline':>11}{'ratio':>8}  baseline",
                 f"{'landmark NME (mediapipe)':<26}{cell(self.nme_mp):>10}{cell(self.nme_mp_mean_landmarks):>11}"
                 f"{ratio(self.nme_mp, self.nme_mp_mean_landmarks):>8}  mean landmarks of the set"]
        for name, value, base in (("translator L1", self.translator_l1, self.copy_masked_l1),
                                  ("translator VGG", self.translator_vgg, self.copy_masked_vgg)):
            lines.append(f"{name:<26}{cell(value):>10}{cell(base):>11}{ratio(value, base):>8}  copy the masked input")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path


def open_folder(data: str | Path, image_size: int, cache: str | Path | None = None, device: str = "cpu"):
    """The :class:`facelab.data.datasets.CachedFaceDataset` of a preprocess cache, or of a photo folder after
    preprocessing it into ``cache`` (a temporary folder when None; resumable when given).

    Raises:
        FileNotFoundError: ``data`` is not a folder. DataError: no face was found in any image.
    """
    from facelab.data.datasets import CachedFaceDataset

    root = Path(data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: not a folder (give a facelab preprocess cache or a folder of photos)")
    if not (root / INDEX_NAME).is_file():
        from facelab.cli.preprocess import PreprocessOptions, run_preprocess

        out = Path(cache) if cache is not None else Path(tempfile.mkdtemp(prefix="smirk_eval_"))
        run_preprocess([root], out, PreprocessOptions(size=max(224, image_size), device=device), progress=False)
        root = out
    try:
        return CachedFaceDataset(root, image_size=image_size)
    except DataError as err:
        raise DataError("no_faces", f"no usable face crop in {data} (see {root / 'report.json'} for the skipped "
                        "files and why)", root) from err


@torch.inference_mode()
def evaluate_folder(ckpt: str, data: str | Path, *, num_images: int = 256, batch_size: int = 32, device: str = "cpu",
                    vgg_weights: str | None = None, cache: str | Path | None = None,
                    translator_seed: int = 0) -> RealEvaluation:
    """Landmark NME vs mediapipe and the translator's reconstruction on a folder of real faces (module docstring).

    Raises:
        MissingAssetError / AssetFormatError: a bad checkpoint. FileNotFoundError / DataError: unusable ``data``.
    """
    from facelab.data.datasets import FaceCropSample
    from smirk.data import as_smirk_batch
    from smirk.inference import SmirkReconstructor

    reconstructor = SmirkReconstructor.from_checkpoint(ckpt, device=device)
    dataset = open_folder(data, reconstructor.image_size, cache, device)
    n = min(num_images, len(dataset))
    vgg, notes = None, []
    if reconstructor.has_translator and vgg_weights is not None:
        from smirk.losses import VGGPerceptualLoss

        vgg = VGGPerceptualLoss(weights_path=vgg_weights).to(device)
    elif reconstructor.has_translator:
        notes.append("translator VGG: not measured (give --vgg-weights, torchvision's VGG16 state dict)")
    if not reconstructor.has_translator:
        notes.append(f"translator: not measured ({reconstructor.phase} checkpoint: no generator.* weights)")
    pred, target, l1, l1_copy, vgg_model, vgg_copy = [], [], [], [], [], []
    for start in range(0, n, batch_size):
        sample = FaceCropSample.collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        batch = as_smirk_batch(sample, reconstructor.flame.mp_indices)
        crops = batch.image.to(device)
        encoding = reconstructor.encode(crops)
        mesh = reconstructor.flame(encoding.params)
        pred.append(encoding.camera.project(mesh.landmarks_mp)[..., :2].cpu())
        target.append(batch.landmarks_mp)
        if reconstructor.has_translator:
            result = reconstructor.decode(encoding, crops, face_hull=batch.hull_mask.to(device), translate=True)
            out, masked = result.translated.clamp(0, 1), result.masked_image
            l1.append((out - crops).abs().flatten(1).mean(1).cpu())
            l1_copy.append((masked - crops).abs().flatten(1).mean(1).cpu())
            if vgg is not None:
                vgg_model += [float(vgg(out[i:i + 1], crops[i:i + 1])) for i in range(len(crops))]
                vgg_copy += [float(vgg(masked[i:i + 1], crops[i:i + 1])) for i in range(len(crops))]
    pred_t, target_t = torch.cat(pred), torch.cat(target)
    mean_landmarks = target_t.mean(0, keepdim=True).expand_as(target_t)
    nme = float(landmark_nme(pred_t, target_t).mean())
    if not math.isfinite(nme):
        raise ValueError(f"{ckpt}: the encoder produced non-finite landmarks (a diverged run?)")

    def mean(values) -> float | None:
        if not len(values):
            return None
        return float(torch.cat(values).mean()) if isinstance(values[0], torch.Tensor) else sum(values) / len(values)

    return RealEvaluation(source=str(ckpt), data=str(data), phase=reconstructor.phase, num_images=n, nme_mp=nme,
                          nme_mp_mean_landmarks=float(landmark_nme(mean_landmarks, target_t).mean()),
                          translator_l1=mean(l1), copy_masked_l1=mean(l1_copy), translator_vgg=mean(vgg_model),
                          copy_masked_vgg=mean(vgg_copy), notes=tuple(notes))
