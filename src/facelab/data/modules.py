"""The Lightning DataModules over facelab's datasets (the datasets themselves, in :mod:`facelab.data.datasets` and
:mod:`facelab.data.synthetic`, are plain torch and never import Lightning).

* :class:`SyntheticFaceDataModule`: train/val/test splits of the synthetic face world.
* :class:`CachedFaceDataModule`: real faces of ``facelab preprocess`` caches, mixed with fixed per-batch shares.

Every constructor argument is a YAML key of LightningCLI, e.g.::

    data:
      class_path: facelab.data.modules.SyntheticFaceDataModule
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

The synthetic splits are disjoint ranges of sample keys (:data:`facelab.data.synthetic.SPLIT_OFFSETS`), each sample
fully determined by ``(seed, split, index)``, so every DDP rank and worker renders the same sample for the same
index. Both training loaders resume mid-epoch (:class:`facelab.data.sampler.ResumableDataLoader`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import ConcatDataset, DataLoader

from facelab.data.datasets import CachedFaceDataset, FaceCropSample, open_cache
from facelab.data.sampler import MixedBatchSampler, ResumableDataLoader, resumable_train_loader
from facelab.data.synthetic import SceneConfig, SyntheticFaceDataset, SyntheticFaceSample

__all__ = ["CachedFaceDataModule", "SplitLoaders", "SyntheticFaceDataModule"]


class SplitLoaders:
    """The four loaders of a ``LightningDataModule`` that keeps its datasets in ``self.datasets[split]``: training
    shuffles through :func:`~facelab.data.sampler.resumable_train_loader` (seeded by ``hparams.seed``, resumable
    mid-epoch), validation and test run in order, prediction uses the test split.

    Subclasses give :meth:`_loader_kwargs` (batch size, workers, collate function ...) and may override
    :meth:`_ensure_dataset` (default: ``setup`` of the stage that builds the split).
    """

    datasets: dict

    def _loader_kwargs(self) -> dict:
        raise NotImplementedError

    def _ensure_dataset(self, split: str) -> None:
        self.setup({"train": "fit", "val": "validate", "test": "test"}[split])

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            self._ensure_dataset(split)
        kwargs = self._loader_kwargs()
        if split != "train":
            return DataLoader(self.datasets[split], shuffle=False, **kwargs)
        return resumable_train_loader(self.datasets[split], self, self.hparams.seed, **kwargs)

    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")


class SyntheticFaceDataModule(SplitLoaders, LightningDataModule):
    """Train/val/test loaders over :class:`~facelab.data.synthetic.SyntheticFaceDataset`.

    Args:
        family: morphable model family (flame | bfm | bilinear | ict).
        model_path: model asset, ``"synthetic"`` / ``"synthetic:tiny"`` for the generated stand-ins.
        image_size: image side in pixels.
        camera: ``weak`` or ``perspective``.
        uv_size: side of the UV albedo texture and position maps.
        displacement_size: side of the wrinkle displacement maps (None: large enough for the grooves on the
            model's UV layout, see :class:`~facelab.data.synthetic.SyntheticFaceDataset`).
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
        return_position_maps: include image-aligned UV position maps of the full and the neutral face.
        albedo_source: ``auto`` | ``model`` | ``procedural`` (the model's own albedo basis where it has one).
        pin_memory: pin batches (for GPU training).
        persistent_workers: keep workers alive between epochs (when ``num_workers > 0``).

    The training loader shuffles with a :class:`~facelab.data.sampler.ResumableDistributedSampler` seeded by
    ``seed`` (one shard per DDP rank), in a :class:`~facelab.data.sampler.ResumableDataLoader`: a run resumed with
    ``--ckpt_path`` continues the epoch on the samples it would have seen (each is a pure function of its index).
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
        return_position_maps: bool = False,
        albedo_source: Literal["auto", "model", "procedural"] = "auto",
        displacement_size: int | None = None,
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
            return_vertices=hp.return_vertices, return_position_maps=hp.return_position_maps,
            albedo_source=hp.albedo_source, displacement_size=hp.displacement_size, model=model,
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

    def _loader_kwargs(self) -> dict:
        workers = self.hparams.num_workers
        return dict(batch_size=self.hparams.batch_size, num_workers=workers, collate_fn=SyntheticFaceSample.collate,
                    pin_memory=self.hparams.pin_memory,
                    persistent_workers=self.hparams.persistent_workers and workers > 0)


class CachedFaceDataModule(LightningDataModule):
    """Preprocessed real faces for training: several caches mixed with fixed per-batch shares.

    Training batches come from :class:`~facelab.data.sampler.MixedBatchSampler` (exact per-batch shares, sharded
    across DDP ranks by the sampler itself, so run DDP with ``trainer.use_distributed_sampler: false``) through a
    :class:`~facelab.data.sampler.ResumableDataLoader`: ``--ckpt_path`` resumes mid-epoch on the same batches.
    Validation iterates all validation caches in order. Batches are :class:`FaceCropSample`; ``augment`` (e.g.
    :class:`~facelab.data.augment.FaceAugment`) runs on the device after transfer, during training only.

    Args:
        train_roots: cache directories; a cache made only of video frames is read as a
            :class:`~facelab.data.datasets.VideoFrameDataset` (one random frame per video per access), others as
            :class:`~facelab.data.datasets.CachedFaceDataset`.
        val_roots: validation cache directories (none: no validation loader).
        shares: per-batch share of each training root (e.g. ``[0.5, 0.4, 0.1]``); None: proportional to sizes.
        batch_size: batch size per process.
        num_workers: DataLoader workers per process.
        image_size: crop side fed to the network.
        train_scale_range: random re-crop scale range for training (SMIRK: ``[1.2, 1.8]``); None: stored crops.
        num_batches: training batches per epoch over all ranks; None: every training cache seen once per epoch.
        augment: device-side batch augmentation (training only), or None.
        seed: seed of the batch composition.
    """

    def __init__(
        self,
        train_roots: list[str],
        val_roots: list[str] | None = None,
        shares: list[float] | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        image_size: int = 224,
        train_scale_range: tuple[float, float] | None = None,
        num_batches: int | None = None,
        augment: torch.nn.Module | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if shares is not None and len(shares) != len(train_roots):
            raise ValueError(f"{len(train_roots)} train_roots but {len(shares)} shares")
        self.train_roots, self.val_roots, self.shares = list(train_roots), list(val_roots or []), shares
        self.batch_size, self.num_workers, self.image_size = batch_size, num_workers, image_size
        self.train_scale_range, self.num_batches = train_scale_range, num_batches
        self.augment, self.seed = augment, seed
        self.train_set: ConcatDataset | None = None
        self.val_set: ConcatDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Open the caches (indices only; crops are read lazily by the workers)."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = ConcatDataset([
                open_cache(r, self.image_size, self.train_scale_range, i) for i, r in enumerate(self.train_roots)
            ])
        if stage in (None, "fit", "validate") and self.val_set is None and self.val_roots:
            self.val_set = ConcatDataset([
                CachedFaceDataset(r, self.image_size, None, dataset_id=i) for i, r in enumerate(self.val_roots)
            ])

    def train_dataloader(self) -> ResumableDataLoader:
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.world_size > 1 and trainer._accelerator_connector.use_distributed_sampler:
            raise ValueError("CachedFaceDataModule shards batches itself (MixedBatchSampler): set "
                             "trainer.use_distributed_sampler=false for multi-process training")
        sizes = [len(d) for d in self.train_set.datasets]
        sampler = MixedBatchSampler(sizes, self.shares or sizes, self.batch_size, num_batches=self.num_batches,
                                    seed=self.seed, drop_last=True,
                                    num_replicas=trainer.world_size if trainer is not None else None,
                                    rank=trainer.global_rank if trainer is not None else None)
        return ResumableDataLoader(self.train_set, batch_sampler=sampler, num_workers=self.num_workers,
                                   collate_fn=FaceCropSample.collate, pin_memory=torch.cuda.is_available(),
                                   persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=FaceCropSample.collate)

    def on_after_batch_transfer(self, batch: FaceCropSample, dataloader_idx: int) -> FaceCropSample:
        trainer = getattr(self, "_trainer", None)
        if self.augment is not None and trainer is not None and trainer.training:
            return batch.augment(self.augment)
        return batch
