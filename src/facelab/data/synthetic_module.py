"""``SyntheticFaceDataModule``: the synthetic face world as a LightningDataModule (train/val/test splits).

Every constructor argument is a YAML key of LightningCLI, e.g.::

    data:
      class_path: facelab.data.synthetic_module.SyntheticFaceDataModule
      init_args:
        family: flame
        model_path: synthetic
        image_size: 224
        camera: weak
        batch_size: 32
        num_workers: 2
        scene:
          yaw_deg: 30.0
          occluder_prob: 0.0

The splits are disjoint ranges of sample keys (:data:`facelab.data.synthetic.SPLIT_OFFSETS`), each sample fully
determined by ``(seed, split, index)``, so every DDP rank and worker renders the same sample for the same index
and Lightning's distributed sampler only has to partition indices.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from facelab.data.synthetic import SceneConfig, SyntheticFaceDataset, SyntheticFaceSample

__all__ = ["SyntheticFaceDataModule"]


class SyntheticFaceDataModule(LightningDataModule):
    """Train/val/test loaders over :class:`~facelab.data.synthetic.SyntheticFaceDataset`.

    Args:
        family: morphable model family (flame | bfm | bilinear | ict).
        model_path: model asset, ``"synthetic"`` / ``"synthetic:tiny"`` for the generated stand-ins.
        image_size: image side in pixels.
        camera: ``weak`` or ``perspective``.
        uv_size: side of the UV albedo / displacement maps.
        num_train, num_val, num_test: samples per split.
        batch_size: samples per batch (sequences per batch in temporal mode).
        num_workers: DataLoader worker processes.
        seed: the dataset seed (independent of the training seed).
        sequence_length: 0 for single images, ``T`` for sequences of T frames.
        fps: frame rate of sequences.
        scene: scene distributions (:class:`~facelab.data.synthetic.SceneConfig`; defaults when None).
        render_wrinkles: bump-map the expression wrinkles into the images.
        return_albedo: include the albedo texture in each sample.
        return_vertices: include the posed vertices in each sample.
        pin_memory: pin batches (for GPU training).
        persistent_workers: keep workers alive between epochs (when ``num_workers > 0``).
    """

    def __init__(
        self,
        family: Literal["flame", "bfm", "bilinear", "ict"] = "flame",
        model_path: str = "synthetic",
        image_size: int = 224,
        camera: Literal["weak", "perspective"] = "weak",
        uv_size: int = 256,
        num_train: int = 50000,
        num_val: int = 1000,
        num_test: int = 1000,
        batch_size: int = 32,
        num_workers: int = 2,
        seed: int = 0,
        sequence_length: int = 0,
        fps: float = 25.0,
        scene: SceneConfig | None = None,
        render_wrinkles: bool = True,
        return_albedo: bool = False,
        return_vertices: bool = False,
        pin_memory: bool = False,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        # nested CLI keys (--data.init_args.scene.yaw_deg=20) can arrive as a dict; hparams keep plain values so
        # checkpoints load with weights_only=True
        self.scene = SceneConfig(**scene) if isinstance(scene, dict) else scene
        self.save_hyperparameters(ignore=["scene"])
        self.hparams["scene"] = None if self.scene is None else dataclasses.asdict(self.scene)
        self.datasets: dict[str, SyntheticFaceDataset] = {}

    def _dataset(self, split: str, num_samples: int) -> SyntheticFaceDataset:
        hp = self.hparams
        model = next(iter(self.datasets.values())).model if self.datasets else None  # load the model once
        return SyntheticFaceDataset(
            family=hp.family, model_path=hp.model_path, num_samples=num_samples, split=split, seed=hp.seed,
            image_size=hp.image_size, camera=hp.camera, uv_size=hp.uv_size, sequence_length=hp.sequence_length,
            fps=hp.fps, scene=self.scene, render_wrinkles=hp.render_wrinkles, return_albedo=hp.return_albedo,
            return_vertices=hp.return_vertices, model=model,
            synthetic=str(hp.model_path).startswith("synthetic"),
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets a stage needs (``fit``: train + val; ``validate``; ``test``; ``predict``: test)."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",),
                  None: ("train", "val", "test")}[stage]
        sizes = {"train": self.hparams.num_train, "val": self.hparams.num_val, "test": self.hparams.num_test}
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self._dataset(split, sizes[split])

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        workers = self.hparams.num_workers
        return DataLoader(self.datasets[split], batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=workers, collate_fn=SyntheticFaceSample.collate,
                          pin_memory=self.hparams.pin_memory, drop_last=shuffle,
                          persistent_workers=self.hparams.persistent_workers and workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
