"""Two ranks (torchrun, gloo, loopback): disjoint training shards that cover the data, exact evaluation; and an
epoch begun on 2 ranks and finished on 1 or 3.

1,001 training images on 2 ranks: each epoch, each rank reads 500 distinct images and the two shards
never overlap (no padding duplicates); only the one image the permutation puts last sits the epoch out.
1,001 validation images: evaluation counts each exactly once over the ranks (FFCV's own distributed
order would read 1,002). Labels are the image indices, so the records identify the images.
"""
import numpy as np
import pytest

from resnext_dist.data.batches import BatchSplit
from resnext_dist.data.sharding import epoch_permutation, train_shard
from resnext_dist.data.sources import SyntheticSource
from tests.data_helpers import SKIP, run_two_ranks, write

N, BATCH = 1001, 10


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    write(SyntheticSource(N, N, size=8), root / "train.beton", write_mode="raw")  # label = index
    write(SyntheticSource(N, N, size=8, seed=1), root / "val.beton", write_mode="raw")
    return str(root / "train.beton"), str(root / "val.beton")


def check_ranks(records, seed=7):
    flat = lambda batches: [y for batch in batches for y in batch]
    for epoch in (0, 1):
        shards = [flat(r[f"epoch{epoch}"]) for r in records]
        assert [len(s) for s in shards] == [500, 500]
        assert not set(shards[0]) & set(shards[1])  # disjoint
        assert len(set(shards[0]) | set(shards[1])) == N - 1  # all but one image
        for rank, shard in enumerate(shards):  # exactly sharding.train_shard's order
            assert shard == train_shard(N, seed=seed, epoch=epoch, rank=rank, world_size=2, batch_size=BATCH).tolist()
    for r in records:
        assert r["batches_per_epoch"] == 50 and all(len(b) == BATCH for b in r["epoch0"])
        assert r["epoch1_skip"] == r["epoch1"][SKIP:]  # resuming mid-epoch on every rank
    val = [flat(r["val"]) for r in records]
    assert sorted(val[0] + val[1]) == list(range(N))  # every validation image exactly once
    assert [len(v) for v in val] == [501, 500] and [r["val_batches"] for r in records] == [51, 50]
    assert all(r["val_num_images"] == N and r["val_count_all_ranks"] == N for r in records)


@pytest.mark.slow
def test_ffcv_two_ranks(betons, tmp_path):
    train, val = betons
    check_ranks(run_two_ranks(dict(loader="ffcv", train=train, val=val, batch_size=BATCH, random_crop=False,
                                   num_classes=N), tmp_path))


@pytest.mark.slow
def test_torchvision_two_ranks(tmp_path):
    # One class folder per image, so here too an image's label is its index.
    from tests.data_helpers import make_image_folder

    make_image_folder(tmp_path / "t", classes=[f"c{k:04d}" for k in range(N)], per_class=1, size=(8, 8))
    records = run_two_ranks(dict(loader="torchvision", train=str(tmp_path / "t"), val=str(tmp_path / "t"),
                                 batch_size=BATCH, num_workers=0, random_crop=False, num_classes=N), tmp_path / "o")
    check_ranks(records)


@pytest.mark.slow
def test_synthetic_two_ranks_evaluate_each_image_once(tmp_path):
    records = run_two_ranks(dict(loader="synthetic", synthetic_size=N, val_synthetic_size=N, batch_size=BATCH,
                                 num_classes=10), tmp_path)
    assert [r["batches_per_epoch"] for r in records] == [50, 50]
    assert [sum(map(len, r["val"])) for r in records] == [501, 500]
    assert all(r["val_count_all_ranks"] == N and r["epoch1_skip"] == r["epoch1"][SKIP:] for r in records)


def step_order(records, split, steps):
    """The global order the ranks' epoch-1-from-`start` batches make, step by step (rank r's images of a step sit
    at split.positions(r))."""
    order = np.full((steps, split.global_batch), -1)
    for rank, r in enumerate(records):
        flat = np.array([y for batch in r["epoch1_skip"] for y in batch]).reshape(steps, -1)
        order[:, split.positions(rank)] = flat
    return order.reshape(-1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ffcv", "torchvision"])
def test_a_world_size_change_mid_epoch_reads_each_remaining_image_once(betons, tmp_path, kind):
    """A global batch of 30 (micro-batches of at most 10): epoch 1's first 5 steps on 2 ranks (2 micro-steps of
    7-8 images each), the rest from global position 150 on 3 ranks (one micro-batch of 10 each) and, instead, on
    1 (3 of 10): each time every image of the epoch's 33 whole steps exactly once, in the epoch's order."""
    if kind == "ffcv":
        fields = dict(loader="ffcv", train=betons[0], val=betons[1], random_crop=False)
    else:
        from tests.data_helpers import make_image_folder
        make_image_folder(tmp_path / "t", classes=[f"c{k:04d}" for k in range(N)], per_class=1, size=(8, 8))
        fields = dict(loader="torchvision", train=str(tmp_path / "t"), val=str(tmp_path / "t"), num_workers=0,
                      random_crop=False)
    fields.update(batch_size=BATCH, num_classes=N, global_batch=30)
    order = epoch_permutation(N, seed=7, epoch=1)[:990]
    before = run_two_ranks(dict(fields, start=0), tmp_path / "w2")
    assert [[len(b) for b in r["epoch1_skip"][:2]] for r in before] == [[8, 7], [8, 7]]  # groups [8, 8, 7, 7]
    first = step_order(before, BatchSplit(30, 2, BATCH), 33)[:150]
    assert np.array_equal(first, order[:150])
    for world in (3, 1):
        after = run_two_ranks(dict(fields, start=150), tmp_path / f"w{world}", nproc=world)
        assert {len(b) for r in after for b in r["epoch1_skip"]} == {10}
        rest = step_order(after, BatchSplit(30, world, BATCH), 28)
        seen = np.concatenate([first, rest])
        assert len(seen) == len(set(seen.tolist())) == 990 and np.array_equal(seen, order)
