"""MixedBatchSampler: exact per-batch shares, disjoint DDP shards, deterministic reshuffles; the samplers and
ResumableDataLoader resume mid-epoch on exactly the remaining batches."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler, TensorDataset

from facelab.data.sampler import MixedBatchSampler, ResumableDataLoader, ResumableDistributedSampler, split_counts

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


# ---------------------------------------------------------------------------------------------- resuming


def test_mixed_batch_sampler_resumes_mid_epoch():
    kw = dict(dataset_sizes=SIZES, shares=[0.5, 0.4, 0.1], batch_size=10, num_replicas=1, rank=0, seed=2)
    s = MixedBatchSampler(**kw)
    s.set_epoch(1)
    full = list(s)
    it = iter(s)
    head = [next(it) for _ in range(3)]
    state = s.state_dict()
    assert state["epoch"] == 1 and state["position"] == 3
    resumed = MixedBatchSampler(**kw)
    resumed.load_state_dict(state)
    assert head + list(resumed) == full  # exactly the remaining batches
    assert list(resumed) == full  # the next pass is the whole epoch again
    # a finished epoch resumes at the start of the next one
    done = MixedBatchSampler(**kw)
    done.load_state_dict({**state, "position": len(full)})
    nxt = MixedBatchSampler(**kw)
    nxt.set_epoch(2)
    assert done.epoch == 2 and list(done) == list(nxt)


def test_resume_is_dropped_when_the_epoch_changes_or_the_settings_differ(capsys):
    kw = dict(dataset_sizes=SIZES, shares=[0.5, 0.4, 0.1], batch_size=10, num_replicas=1, rank=0)
    s = MixedBatchSampler(**kw)
    s.load_state_dict({**s.state_dict(), "position": 4})
    s.set_epoch(1)  # the trainer moved on to another epoch: the epoch-0 position means nothing there
    other = MixedBatchSampler(**kw)
    other.set_epoch(1)
    assert list(s) == list(other)
    changed = MixedBatchSampler(**{**kw, "seed": 5})
    changed.load_state_dict({**s.state_dict(), "epoch": 1, "position": 4})
    assert "other settings (seed)" in capsys.readouterr().err
    assert len(list(changed)) == len(changed)  # the epoch restarts from its first batch


def test_resumable_distributed_sampler_is_torchs_order_and_resumes():
    data = list(range(23))
    for rank in range(3):
        ours, peer = ResumableDistributedSampler(data, 3, rank, seed=4), DistributedSampler(data, 3, rank, seed=4)
        ours.set_epoch(2), peer.set_epoch(2)
        full = list(ours)
        assert full == list(peer) and len(ours) == len(peer)
        it = iter(ours)
        head = [next(it) for _ in range(5)]
        resumed = ResumableDistributedSampler(data, 3, rank, seed=4)
        resumed.load_state_dict(ours.state_dict())
        assert resumed.epoch == 2 and head + list(resumed) == full


def _tensor_loader(**kwargs) -> ResumableDataLoader:
    data = TensorDataset(torch.arange(40))
    return ResumableDataLoader(data, batch_size=4, drop_last=True,
                               sampler=ResumableDistributedSampler(data, 1, 0, seed=1), **kwargs)


@pytest.mark.parametrize("workers", [0, 2])
def test_resumable_loader_counts_delivered_batches(workers):
    """With workers the sampler runs ahead of the consumer (prefetch); the saved position is what was delivered."""
    loader = _tensor_loader(num_workers=workers)
    loader.sampler.set_epoch(3)
    full = [b[0].tolist() for b in loader]
    it = iter(loader)
    head = [next(it)[0].tolist() for _ in range(4)]
    state = loader.state_dict()
    assert state["position"] == 16 and state["epoch"] == 3
    if workers:
        assert loader.sampler._cursor.position > 16  # prefetched beyond what was consumed
    del it
    resumed = _tensor_loader(num_workers=workers)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["position"] == 16  # loaded, not yet iterated
    rest = [b[0].tolist() for b in resumed]
    assert head + rest == full and len(resumed) == len(full) == 10
    assert [b[0].tolist() for b in resumed] == full  # the next pass is a whole epoch again


def test_mixed_batch_sampler_in_a_resumable_loader():
    data = TensorDataset(torch.arange(sum(SIZES)))
    sampler = MixedBatchSampler(SIZES, [0.5, 0.4, 0.1], batch_size=10, num_replicas=1, rank=0)
    loader = ResumableDataLoader(data, batch_sampler=sampler)
    full = [b[0].tolist() for b in loader]
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    resumed = ResumableDataLoader(data, batch_sampler=MixedBatchSampler(SIZES, [0.5, 0.4, 0.1], batch_size=10,
                                                                        num_replicas=1, rank=0))
    resumed.load_state_dict(state)
    assert [b[0].tolist() for b in resumed] == full[1:]
    with pytest.raises(TypeError, match="state_dict"):
        ResumableDataLoader(data, batch_size=2, shuffle=True)
