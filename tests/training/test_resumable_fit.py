"""A killed Lightning run resumed with ``ckpt_path`` sees exactly the batches the uninterrupted run saw.

A tiny regression module records every training batch's sample ids. Reference: one run of ``TOTAL`` optimizer
steps (several epochs). Killed run: the same with ``max_steps=k`` and a checkpoint at step ``k``; resumed run: a new
trainer and a new loader, ``max_steps=TOTAL``, ``ckpt_path`` of that checkpoint. The killed and resumed sequences,
concatenated, must equal the reference (mid-epoch, at an epoch's end, in a later epoch, with prefetching workers,
for both resumable samplers), and Lightning must not warn that the loader is not resumable.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

from facelab.data.sampler import MixedBatchSampler, ResumableDataLoader, ResumableDistributedSampler

N, BATCH, TOTAL = 24, 4, 15  # 6 batches per epoch, 2.5 epochs


class Recorder(L.LightningModule):
    def __init__(self, sampler: str = "shuffle", workers: int = 0) -> None:
        super().__init__()
        self.sampler, self.workers = sampler, workers
        self.linear = torch.nn.Linear(1, 1)
        self.seen: list[list[int]] = []

    def train_dataloader(self) -> ResumableDataLoader:
        data = TensorDataset(torch.arange(N))
        if self.sampler == "mixed":  # two "datasets" of 16 and 8 items, 3 + 1 per batch
            batches = MixedBatchSampler([16, 8], [0.75, 0.25], BATCH, num_batches=N // BATCH, num_replicas=1, rank=0,
                                        seed=3)
            return ResumableDataLoader(data, batch_sampler=batches, num_workers=self.workers)
        sampler = ResumableDistributedSampler(data, num_replicas=1, rank=0, seed=3)
        return ResumableDataLoader(data, batch_size=BATCH, sampler=sampler, drop_last=True, num_workers=self.workers)

    def training_step(self, batch, batch_idx: int):
        (ids,) = batch
        self.seen.append(ids.tolist())
        return self.linear(ids[:, None].float()).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-4)


def fit(module: Recorder, root: Path, max_steps: int, ckpt_path: str | None = None, callbacks=()) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, callbacks=list(callbacks),
                        enable_checkpointing=bool(callbacks))
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize(("sampler", "kill_at", "workers"), [
    ("shuffle", 3, 0),   # mid-epoch 0
    ("shuffle", 6, 0),   # exactly at the end of epoch 0
    ("shuffle", 8, 2),   # mid-epoch 1, prefetching workers
    ("mixed", 9, 0),     # MixedBatchSampler, mid-epoch 1
])
def test_resumed_run_sees_the_remaining_batches(sampler, kill_at, workers, tmp_path):
    reference = Recorder(sampler, workers)
    fit(reference, tmp_path / "ref", TOTAL)
    assert len(reference.seen) == TOTAL and len({tuple(b) for b in reference.seen[:6]}) == 6

    killed = Recorder(sampler, workers)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=kill_at, save_top_k=-1)
    fit(killed, tmp_path / "killed", kill_at, callbacks=[ckpt])
    path = next((tmp_path / "ckpt").glob(f"*step={kill_at}.ckpt"))
    state = torch.load(path, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state[0]["position"] == ((kill_at - 1) % 6 + 1) * (1 if sampler == "mixed" else BATCH)  # in its epoch

    resumed = Recorder(sampler, workers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(resumed, tmp_path / "resumed", TOTAL, ckpt_path=str(path))
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert killed.seen + resumed.seen == reference.seen


def test_synthetic_datamodule_loader_resumes():
    """The synthetic world's training loader: a fresh DataModule's loader from a saved state yields the rest."""
    from facelab.data.modules import SyntheticFaceDataModule

    def loader():
        dm = SyntheticFaceDataModule(model_path="synthetic:tiny", image_size=32, uv_size=16, num_train=12,
                                     batch_size=3, num_workers=0, render_wrinkles=False, seed=5)
        return dm.train_dataloader()

    first = loader()
    first.sampler.set_epoch(1)
    it = iter(first)
    head = [next(it).index.tolist() for _ in range(2)]
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    rest = [b.index.tolist() for b in resumed]
    reference = loader()
    reference.sampler.set_epoch(1)
    assert head + rest == [b.index.tolist() for b in reference]
    assert sorted(i for b in head + rest for i in b) == list(range(12))
