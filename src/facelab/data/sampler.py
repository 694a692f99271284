"""A batch sampler that fixes how many items of each dataset every batch holds (SMIRK's 50/40/10 mix), DDP-aware.

SMIRK trains on batches that are 50 % FFHQ+CelebA, 40 % MEAD and 10 % LRS3 regardless of dataset sizes. With the
datasets concatenated in a :class:`torch.utils.data.ConcatDataset` (in the order of ``dataset_sizes``),
:class:`MixedBatchSampler` yields lists of indices into it such that every batch has exactly ``counts[i]`` items of
dataset ``i``.

Each dataset is read as an endless stream of reshuffled permutations (a small dataset with a large share is
repeated within an epoch; a large one is read in order over the epochs' permutations). The whole epoch's batch
list is a pure function of ``(seed, epoch)``, identical on every process; under DDP rank ``r`` takes global
batches ``r, r + R, r + 2R, ...``, so ranks get disjoint batches and the same number of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["MixedBatchSampler", "split_counts"]


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

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (Lightning calls this at every epoch start; call it yourself otherwise)."""
        self.epoch = int(epoch)

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
        yield from self.global_batches()[self.rank :: self.num_replicas].tolist()
