"""Repeated augmentation (data.ra_reps): each image exactly R times per epoch over the ranks, the copies dealt to
different ranks, resumable mid-epoch from a global position, and the positions augment.py keys its draws by."""
import numpy as np
import pytest

from resnext_dist.data.sharding import (batches_per_epoch, epoch_permutation, steps_per_epoch, train_batches,
                                        train_positions, train_shard)

N, SEED, EPOCH = 60, 5, 3


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("reps", [2, 3, 4])
def test_every_image_exactly_r_times_per_epoch_over_the_ranks(world, reps):
    g = 12  # divides reps x N for every reps here: no image sits the epoch out
    shards = [train_shard(N, seed=SEED, epoch=EPOCH, rank=r, world_size=world, batch_size=4, global_batch=g,
                          reps=reps) for r in range(world)]
    counts = np.bincount(np.concatenate(shards), minlength=N)
    assert (counts == reps).all()
    assert steps_per_epoch(N, g, reps) * g == reps * N
    assert batches_per_epoch(N, world, 4, g, reps) == len(train_batches(
        N, seed=SEED, epoch=EPOCH, rank=0, world_size=world, batch_size=4, global_batch=g, reps=reps))


def test_the_copies_of_an_image_go_to_different_ranks_within_a_step():
    reps, world, g = 2, 2, 8
    shards = [train_shard(N, seed=SEED, epoch=EPOCH, rank=r, world_size=world, batch_size=4, global_batch=g,
                          reps=reps).reshape(-1, 4) for r in range(world)]
    for step in range(len(shards[0])):
        assert sorted(shards[0][step]) == sorted(shards[1][step])  # the same images, one copy each
        assert len(set(shards[0][step])) == 4


@pytest.mark.parametrize("before, after", [(1, 3), (3, 2), (2, 2)])
def test_a_resume_mid_epoch_reads_the_rest_of_the_repeated_epoch(before, after):
    reps, g, b = 3, 12, 6
    common = dict(seed=SEED, epoch=EPOCH, batch_size=b, global_batch=g, reps=reps)
    full = np.concatenate([train_shard(N, rank=r, world_size=before, **common) for r in range(before)])
    done = [np.concatenate(train_batches(N, rank=r, world_size=before, **common)[:4 * -(-g // (before * b))])
            for r in range(before)]
    rest = [train_shard(N, rank=r, world_size=after, start=4 * g, **common) for r in range(after)]
    assert sorted(np.concatenate(done + rest)) == sorted(full)
    assert (np.bincount(np.concatenate(done + rest), minlength=N) == reps).all()


@pytest.mark.parametrize("reps", [1, 2])
@pytest.mark.parametrize("world", [1, 3])
def test_positions_name_each_micro_batch_place_in_the_epoch(reps, world):
    order = np.repeat(epoch_permutation(N, seed=SEED, epoch=EPOCH), reps)
    seen = []
    for r in range(world):
        common = dict(rank=r, world_size=world, batch_size=4, global_batch=12, start=12, reps=reps)
        batches = train_batches(N, seed=SEED, epoch=EPOCH, **common)
        positions = train_positions(N, **common)
        assert len(batches) == len(positions)
        for images, where in zip(batches, positions):
            assert np.array_equal(order[where], images)
        seen.extend(np.concatenate(positions))
    assert sorted(seen) == list(range(12, steps_per_epoch(N, 12, reps) * 12))  # each place once


def test_reps_1_is_the_plain_order():
    kw = dict(seed=SEED, epoch=EPOCH, rank=1, world_size=2, batch_size=5)
    assert np.array_equal(train_shard(N, **kw), train_shard(N, reps=1, **kw))
