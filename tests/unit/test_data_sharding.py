"""Who reads what: training shards (disjoint, equal, a function of seed and epoch), the epoch's remaining images
after a change of world size (each exactly once), and exact eval blocks."""
import numpy as np
import pytest
from torch.utils.data import DistributedSampler

from resnext_dist.data.sharding import (batches_per_epoch, epoch_permutation, eval_shard, steps_per_epoch,
                                        train_batches, train_shard)


def old_train_shard(num_images, *, seed, epoch, rank, world_size, batch_size):
    """The order of the version before any world size was possible (one global micro-batch of world_size x
    batch_size per step, rank r the r-th block): today's runs must keep it."""
    sampler = DistributedSampler(range(num_images), num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    order = np.fromiter(iter(sampler), dtype=np.int64, count=num_images)
    steps = (num_images // world_size) // batch_size
    return order[:steps * world_size * batch_size].reshape(steps, world_size, batch_size)[:, rank, :].reshape(-1)


@pytest.mark.parametrize("n,world,batch", [(1001, 2, 10), (1000, 4, 5), (7, 3, 2), (37, 1, 5)])
def test_the_order_of_an_even_split_is_the_old_one(n, world, batch):
    for epoch in (0, 3):
        for rank in range(world):
            assert np.array_equal(train_shard(n, seed=3, epoch=epoch, rank=rank, world_size=world, batch_size=batch),
                                  old_train_shard(n, seed=3, epoch=epoch, rank=rank, world_size=world,
                                                  batch_size=batch))


@pytest.mark.parametrize("before, after", [(2, 1), (2, 3), (3, 2), (1, 4), (4, 7)])
def test_a_world_size_change_mid_epoch_trains_each_image_of_the_epoch_once(before, after):
    """2 steps of a global batch of 24 on `before` ranks, the rest of the epoch from global position 48 on `after`
    ranks: together every image of the epoch's whole steps exactly once, in the epoch's global order by step."""
    n, g, b = 250, 24, 5
    common = dict(seed=1, epoch=2, batch_size=b, global_batch=g)
    first = [train_batches(n, rank=r, world_size=before, **common) for r in range(before)]
    done = [np.concatenate(batches[:2 * len(batches) // steps_per_epoch(n, g)]) for batches in first]
    rest = [train_shard(n, rank=r, world_size=after, start=2 * g, **common) for r in range(after)]
    seen = np.concatenate(done + rest)
    assert len(seen) == len(np.unique(seen)) == steps_per_epoch(n, g) * g == 240
    order = epoch_permutation(n, seed=1, epoch=2)
    assert set(np.concatenate(done)) == set(order[:2 * g]) and set(seen) == set(order[:240])


def test_the_epoch_permutation_is_distributed_samplers():
    sampler = DistributedSampler(range(100), num_replicas=1, rank=0, shuffle=True, seed=4)
    sampler.set_epoch(6)
    assert epoch_permutation(100, seed=4, epoch=6).tolist() == list(sampler)


def test_micro_batches_of_an_uneven_split_follow_the_step_layout():
    """Global 20 on 3 ranks of at most 4: groups [4, 4, 3, 3, 3, 3] of each step; rank 1 takes groups 1 and 4."""
    batches = train_batches(50, seed=0, epoch=0, rank=1, world_size=3, batch_size=4, global_batch=20)
    order = epoch_permutation(50, seed=0, epoch=0)
    assert [len(x) for x in batches] == [4, 3, 4, 3]
    assert np.array_equal(np.concatenate(batches[:2]), np.concatenate([order[4:8], order[14:17]]))
    assert np.array_equal(np.concatenate(batches[2:]), np.concatenate([order[24:28], order[34:37]]))
    assert train_batches(50, seed=0, epoch=0, rank=1, world_size=3, batch_size=4, global_batch=20, start=40) == []


@pytest.mark.parametrize("n,world,batch", [(1001, 2, 10), (1000, 4, 5), (7, 3, 2), (5, 1, 1)])
def test_training_shards_are_disjoint_equal_and_cover_all_but_the_remainder(n, world, batch):
    for epoch in (0, 1):
        shards = [train_shard(n, seed=3, epoch=epoch, rank=r, world_size=world, batch_size=batch)
                  for r in range(world)]
        assert {len(s) for s in shards} == {n // (world * batch) * batch}
        seen = np.concatenate(shards)
        assert len(np.unique(seen)) == len(seen) == n // (world * batch) * world * batch  # no duplicates or padding
        assert seen.min() >= 0 and seen.max() < n


def test_each_rank_batch_is_the_micro_batch_one_process_would_see():
    """Rank r's k-th batch == micro-batch k*world + r of a single process: same images, same grouping."""
    single = train_shard(1000, seed=3, epoch=2, rank=0, world_size=1, batch_size=8).reshape(-1, 8)
    for rank in (0, 1):
        mine = train_shard(1000, seed=3, epoch=2, rank=rank, world_size=2, batch_size=8).reshape(-1, 8)
        assert np.array_equal(mine, single[rank::2][:len(mine)])


def test_training_order_is_a_function_of_seed_and_epoch_only():
    shard = lambda **kw: train_shard(500, **{**dict(seed=1, epoch=4, rank=1, world_size=2, batch_size=10), **kw})
    a = shard()
    assert np.array_equal(a, shard())
    assert not np.array_equal(a, shard(epoch=5))
    assert not np.array_equal(a, shard(seed=2))


def test_the_images_left_out_change_from_epoch_to_epoch():
    left_out = [set(range(101)) - set(np.concatenate([train_shard(101, seed=0, epoch=e, rank=r, world_size=2, batch_size=5)
                                                      for r in range(2)])) for e in range(20)]
    assert len(set.union(*left_out)) > 1


@pytest.mark.parametrize("n,world", [(1001, 2), (10, 4), (3, 8), (0, 2)])
def test_eval_blocks_partition_the_validation_set(n, world):
    blocks = [eval_shard(n, rank=r, world_size=world) for r in range(world)]
    assert np.array_equal(np.concatenate(blocks), np.arange(n))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_batches_per_epoch_drops_the_last_partial_batch():
    assert batches_per_epoch(1001, 2, 10) == 50
    assert batches_per_epoch(1000, 2, 10) == 50
    assert batches_per_epoch(19, 2, 10) == 0
    assert batches_per_epoch(1001, 3, 10, global_batch=40) == 25 * 2  # 25 steps of 2 micro-steps
    assert steps_per_epoch(1001, 40) == 25
