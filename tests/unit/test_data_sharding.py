"""Who reads what: training shards (disjoint, equal, a function of seed and epoch) and exact eval blocks."""
import numpy as np
import pytest

from resnext_dist.data.sharding import batches_per_epoch, eval_shard, train_shard


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
