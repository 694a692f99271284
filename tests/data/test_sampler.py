"""MixedBatchSampler: exact per-batch shares, disjoint DDP shards, deterministic reshuffles."""

from __future__ import annotations

import pytest

from facelab.data.sampler import MixedBatchSampler, split_counts

SIZES = [50, 37, 9]


def _dataset_of(i):
    return 0 if i < 50 else (1 if i < 87 else 2)


def test_split_counts():
    assert split_counts([0.5, 0.4, 0.1], 32) == [16, 13, 3]
    assert split_counts([1, 1, 1], 8) == [3, 3, 2]
    assert sum(split_counts([0.28, 0.28, 0.19, 0.25], 33)) == 33
    with pytest.raises(ValueError):
        split_counts([0, 0], 4)


def test_exact_shares_and_coverage():
    s = MixedBatchSampler(SIZES, [0.5, 0.4, 0.1], batch_size=10, num_replicas=1, rank=0)
    batches = list(s)
    assert len(batches) == len(s) == max(-(-n // c) for n, c in zip(SIZES, [5, 4, 1]))
    for b in batches:
        assert len(b) == 10
        assert [sum(_dataset_of(i) == d for i in b) for d in range(3)] == [5, 4, 1]
    seen = {i for b in batches for i in b}
    assert seen == set(range(sum(SIZES)))  # every dataset seen at least once per epoch


def test_ddp_disjoint_same_length_deterministic():
    kw = dict(dataset_sizes=SIZES, shares=[0.5, 0.4, 0.1], batch_size=8, num_batches=11, seed=3)
    ranks = [list(MixedBatchSampler(**kw, num_replicas=3, rank=r)) for r in range(3)]
    assert {len(r) for r in ranks} == {3}
    full = MixedBatchSampler(**kw, num_replicas=3, rank=0).global_batches().tolist()
    flat = [tuple(b) for r in ranks for b in r]
    assert len(set(flat)) == len(flat)
    assert sorted(flat) == sorted(tuple(b) for b in full[:9])
    again = list(MixedBatchSampler(**kw, num_replicas=3, rank=1))
    assert again == ranks[1]
    padded = [len(MixedBatchSampler(**kw, num_replicas=3, rank=r, drop_last=False)) for r in range(3)]
    assert padded == [4, 4, 4]


def test_set_epoch_reshuffles():
    s = MixedBatchSampler(SIZES, [0.5, 0.4, 0.1], batch_size=10, num_replicas=1, rank=0, seed=1)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(0)
    assert e0 != e1 and list(s) == e0


def test_empty_dataset_with_share_fails():
    with pytest.raises(ValueError, match="empty"):
        MixedBatchSampler([10, 0], [0.5, 0.5], batch_size=4, num_replicas=1, rank=0)
