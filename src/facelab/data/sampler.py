"""Samplers that resume mid-epoch, and the loader that checkpoints them.

**Mixed batches.** A batch sampler that fixes how many items of each dataset every batch holds (SMIRK's 50/40/10
mix), DDP-aware.

SMIRK trains on batches that are 50 % FFHQ+CelebA, 40 % MEAD and 10 % LRS3 regardless of dataset sizes. With the
datasets concatenated in a :class:`torch.utils.data.ConcatDataset` (in the order of ``dataset_sizes``),
:class:`MixedBatchSampler` yields lists of indices into it such that every batch has exactly ``counts[i]`` items of
dataset ``i``.

Each dataset is read as an endless stream of reshuffled permutations (a small dataset with a large share is
repeated within an epoch; a large one is read in order over the epochs' permutations). The whole epoch's batch
list is a pure function of ``(seed, epoch)``, identical on every process; under DDP rank ``r`` takes global
batches ``r, r + R, r + 2R, ...``, so ranks get disjoint batches and the same number of them.

**Resuming.** A killed run should resume on the samples it would have seen. :class:`MixedBatchSampler` and
:class:`ResumableDistributedSampler` (shuffled indices, for datasets whose item ``i`` is a pure function of ``i``
like the synthetic world) follow one protocol:

* ``state_dict()`` -> ``{"epoch", "position", ...}``: ``position`` is how many items of the epoch (batches for a
  batch sampler, indices for an index sampler) have been handed out;
* ``load_state_dict(state)``: the next iteration of that epoch starts at ``position`` (a finished epoch resumes at
  the start of the next one); ``set_epoch`` to another epoch drops the pending resume.

Lightning (2.6) saves and restores only what the *DataLoader* itself exposes (``CombinedLoader._state_dicts``
keeps the loaders that implement ``state_dict`` / ``load_state_dict``; without them it warns on ``--ckpt_path``
that the loader is not resumable). :class:`ResumableDataLoader` is a ``DataLoader`` that does: it counts the batches
it has *delivered* (worker prefetching runs the sampler ahead of the consumer, so the sampler's own count would
overshoot), and its state is its sampler's with that position. Random augmentation inside the datasets is not
part of the state: the resumed run sees the same items, not necessarily the same random crops of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler

from facelab.log import get_logger

__all__ = ["MixedBatchSampler", "ResumableDataLoader", "ResumableDistributedSampler", "resumable_train_loader",
           "split_counts"]

log = get_logger(__name__)


def split_counts(shares: Sequence[float], batch_size: int) -> list[int]:
    """Items per dataset in a batch: ``shares`` (normalised to sum 1) times ``batch_size``, rounded so they sum to it.

    Largest-remainder rounding; ties go to the dataset listed first, so the split is deterministic.

    Example:
        ``split_counts([0.5, 0.4, 0.1], 32) == [16, 13, 3]``.
    """
    if batch_size < 1 or not shares or any(s < 0 for s in shares) or sum(shares) <= 0:
        raise ValueError(f"need batch_size >= 1 and non-negative shares with a positive sum, got {batch_size}, "
                         f"{list(shares)}")
    total = float(sum(shares))
    exact = [s / total * batch_size for s in shares]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: batch_size - sum(counts)]:
        counts[i] += 1
    return counts


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class MixedBatchSampler(Sampler[list[int]]):
    """Batches with fixed per-dataset counts, indices into the ``ConcatDataset`` of the datasets.

    Args:
        dataset_sizes: length of each dataset, in ``ConcatDataset`` order.
        shares: fraction of each batch drawn from each dataset (normalised; e.g. ``[0.5, 0.4, 0.1]``).
        batch_size: items per batch on each process.
        num_batches: global batches per epoch (over all ranks). None: enough for every dataset with a non-zero
            share to be seen once per epoch, ``max_i ceil(size_i / count_i)``.
        num_replicas: number of DDP processes; None: from ``torch.distributed`` when initialised, else 1.
        rank: this process's rank; None: from ``torch.distributed`` when initialised, else 0.
        seed: base seed; the epoch's order depends only on ``(seed, epoch)``.
        drop_last: with ``num_batches`` not divisible by ``num_replicas``, drop the extra global batches (True) or
            draw a few more from the streams so every rank gets ``ceil(num_batches / num_replicas)`` (False).
    """

    def __init__(
        self,
        dataset_sizes: Sequence[int],
        shares: Sequence[float],
        batch_size: int,
        num_batches: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        drop_last: bool = True,
    ):
        if len(dataset_sizes) != len(shares):
            raise ValueError(f"{len(dataset_sizes)} dataset sizes but {len(shares)} shares")
        self.sizes = [int(n) for n in dataset_sizes]
        self.counts = split_counts(shares, batch_size)
        for i, (n, c) in enumerate(zip(self.sizes, self.counts)):
            if c > 0 and n <= 0:
                raise ValueError(f"dataset {i} is empty but its share gives it {c} item(s) per batch")
        world, this_rank = _world()
        self.num_replicas = world if num_replicas is None else int(num_replicas)
        self.rank = this_rank if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} outside [0, {self.num_replicas})")
        self.batch_size, self.seed, self.drop_last, self.epoch = batch_size, int(seed), drop_last, 0
        if num_batches is None:
            num_batches = max(math.ceil(n / c) for n, c in zip(self.sizes, self.counts) if c > 0)
        self.num_batches = int(num_batches)
        self.offsets = [0]
        for n in self.sizes[:-1]:
            self.offsets.append(self.offsets[-1] + n)
        self._cursor = _Cursor()

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (Lightning calls this at every epoch start; call it yourself otherwise)."""
        self._cursor.set_epoch(self, epoch)

    def _signature(self) -> dict[str, Any]:
        return {"seed": self.seed, "sizes": list(self.sizes), "counts": list(self.counts),
                "num_batches": self.num_batches, "num_replicas": self.num_replicas, "drop_last": self.drop_last}

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "position" (batches of the epoch handed out on this rank), ...the settings}``."""
        return self._cursor.state_dict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration of ``state["epoch"]`` starts at batch ``state["position"]``."""
        self._cursor.load_state_dict(self, state)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_batches // self.num_replicas
        return math.ceil(self.num_batches / self.num_replicas)

    def _stream(self, dataset: int, length: int) -> torch.Tensor:
        """The first ``length`` items of dataset ``dataset``'s stream of permutations for this epoch."""
        mixed = self.seed * 0x9E3779B1 + self.epoch * 0x85EBCA77 + dataset * 0xC2B2AE3D  # same on every process
        gen = torch.Generator().manual_seed(mixed % (1 << 63))
        reps = math.ceil(length / self.sizes[dataset])
        perms = [torch.randperm(self.sizes[dataset], generator=gen) for _ in range(reps)]
        return torch.cat(perms)[:length] + self.offsets[dataset] if perms else torch.zeros(0, dtype=torch.long)

    def global_batches(self) -> torch.Tensor:
        """(G, B) all global batches of the epoch (G = ``len(self) * num_replicas``), identical on every rank."""
        total = len(self) * self.num_replicas
        parts = [self._stream(i, total * c).view(total, c) for i, c in enumerate(self.counts) if c > 0]
        return torch.cat(parts, 1)

    def __iter__(self) -> Iterator[list[int]]:
        start = self._cursor.begin()
        for batch in self.global_batches()[self.rank :: self.num_replicas][start:].tolist():
            self._cursor.position += 1
            yield batch


class ResumableDistributedSampler(DistributedSampler):
    """``torch.utils.data.DistributedSampler`` (same order: a permutation seeded by ``seed + epoch``, padded or
    truncated to a multiple of the replicas, rank ``r`` taking every ``R``-th index) that resumes mid-epoch.

    Lightning leaves a ``DistributedSampler`` in place under DDP instead of injecting its own, so the sampler's
    state survives ``trainer.use_distributed_sampler: true``.

    Args:
        dataset: the dataset (its length is read).
        num_replicas, rank: DDP processes and this one's rank; None: from ``torch.distributed`` when initialised,
            else 1 and 0.
        shuffle: permute (True) or keep the order.
        seed: the permutation's base seed (the same on every rank).
        drop_last: drop the tail that does not divide evenly across replicas (else pad by repeating).
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        world, this_rank = _world()
        super().__init__(dataset, num_replicas=world if num_replicas is None else num_replicas,
                         rank=this_rank if rank is None else rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self._cursor = _Cursor()

    def set_epoch(self, epoch: int) -> None:
        self._cursor.set_epoch(self, epoch)

    def _signature(self) -> dict[str, Any]:
        return {"seed": self.seed, "size": len(self.dataset), "shuffle": self.shuffle,
                "num_replicas": self.num_replicas, "drop_last": self.drop_last}

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "position" (indices of the epoch handed out on this rank), ...the settings}``."""
        return self._cursor.state_dict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration of ``state["epoch"]`` starts at index ``state["position"]`` of this rank's
        shard."""
        self._cursor.load_state_dict(self, state)

    def __iter__(self) -> Iterator[int]:
        start = self._cursor.begin()  # a generator: runs at the first next(), after Lightning's set_epoch
        for index in list(super().__iter__())[start:]:
            self._cursor.position += 1
            yield index


class _Cursor:
    """The resume state shared by the samplers: epoch, position in it, and a pending resume point."""

    def __init__(self) -> None:
        self.position = 0
        self.pending: int | None = None

    def set_epoch(self, sampler, epoch: int) -> None:
        """Move ``sampler`` to ``epoch``; another epoch than the current one drops a pending resume."""
        epoch = int(epoch)
        if epoch != sampler.epoch:
            self.pending, self.position = None, 0
        sampler.epoch = epoch

    def begin(self) -> int:
        """Start an iteration: the pending resume point (once), else 0."""
        start, self.pending = (self.pending or 0), None
        self.position = start
        return start

    def state_dict(self, sampler) -> dict[str, Any]:
        position = self.pending if self.pending is not None else self.position
        return {"epoch": sampler.epoch, "position": position, **sampler._signature()}

    def load_state_dict(self, sampler, state: dict[str, Any]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        saved = {k: state.get(k) for k in sampler._signature()}
        if saved != sampler._signature():
            changed = sorted(k for k, v in sampler._signature().items() if saved[k] != v)
            log.warning("%s: the checkpointed sampler had other settings (%s), so epoch %d restarts from its first "
                        "batch instead of resuming at position %d", type(sampler).__name__, ", ".join(changed), epoch,
                        position)
            position = 0
        if position >= len(sampler):  # the epoch was finished: resume at the start of the next one
            epoch, position = epoch + 1, 0
        sampler.epoch = epoch
        self.position, self.pending = position, position


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose ``state_dict`` / ``load_state_dict`` checkpoint its position in the epoch.

    Same arguments as ``torch.utils.data.DataLoader``; its ``batch_sampler`` (e.g. :class:`MixedBatchSampler`) or
    ``sampler`` (e.g. :class:`ResumableDistributedSampler`) must follow the resume protocol of this module. The
    position saved is the number of batches this loader has *delivered* in the current epoch (plus the resumed
    start), so batches that workers prefetched but nobody consumed are seen again after a resume.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        resumable, per_batch = self._resumable()
        if resumable is None:
            raise TypeError("ResumableDataLoader needs a sampler or batch_sampler with state_dict/load_state_dict "
                            "(MixedBatchSampler, ResumableDistributedSampler)")
        self._delivered = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches) of a loaded state, until iterated

    def _resumable(self) -> tuple[Sampler | None, int]:
        """The stateful sampler and how many of its items make one batch."""
        batch_sampler = self.batch_sampler
        if batch_sampler is not None and not isinstance(batch_sampler, BatchSampler) and _stateful(batch_sampler):
            return batch_sampler, 1
        if _stateful(self.sampler):
            return self.sampler, self.batch_size or 1
        return None, 1

    def __iter__(self):
        return _CountingIterator(self, super().__iter__())

    def _begin(self) -> None:
        """At the first batch of an iteration: where this epoch starts (a loaded state of this epoch, else 0)."""
        sampler, _ = self._resumable()
        resume, self._resume = self._resume, None
        self._delivered = resume[1] if resume is not None and resume[0] == sampler.epoch else 0

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state with ``position`` = the items of the batches delivered in this epoch."""
        sampler, per_batch = self._resumable()
        state = sampler.state_dict()
        if self._resume is not None:  # loaded but not iterated yet: unchanged
            return state
        state["position"] = min(self._delivered * per_batch, len(sampler))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at the saved position (the next iteration yields the epoch's remaining batches)."""
        sampler, per_batch = self._resumable()
        sampler.load_state_dict(state_dict)
        resumed = sampler.state_dict()  # the sampler may have moved on to the next epoch
        self._resume = (resumed["epoch"], -(-resumed["position"] // per_batch))


class _CountingIterator:
    """Iterates a ``DataLoader``'s iterator and counts the batches handed to the consumer."""

    def __init__(self, loader: ResumableDataLoader, iterator) -> None:
        self.loader, self.iterator, self.started = loader, iterator, False

    def __iter__(self) -> _CountingIterator:
        return self

    def __len__(self) -> int:
        return len(self.iterator)

    def __next__(self):
        if not self.started:
            self.started = True
            self.loader._begin()
        batch = next(self.iterator)
        self.loader._delivered += 1
        return batch


def _stateful(obj) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def resumable_train_loader(dataset, module: Any, seed: int, **loader_kwargs) -> ResumableDataLoader:
    """The training loader of a DataModule: shuffled by a :class:`ResumableDistributedSampler` over the ranks of
    ``module``'s trainer (``seed``; the whole dataset when it has no trainer yet), whole batches only, resumable.

    Args:
        dataset: the training split.
        module: the ``LightningDataModule`` (its ``trainer``, when attached, gives the world size and rank).
        seed: shuffling seed (the same on every rank).
        loader_kwargs: the other ``DataLoader`` arguments (``batch_size``, ``num_workers``, ``collate_fn``, ...).
    """
    trainer = getattr(module, "_trainer", None)
    sampler = ResumableDistributedSampler(dataset, shuffle=True, seed=seed,
                                          num_replicas=trainer.world_size if trainer is not None else None,
                                          rank=trainer.global_rank if trainer is not None else None)
    return ResumableDataLoader(dataset, sampler=sampler, drop_last=True, **loader_kwargs)
