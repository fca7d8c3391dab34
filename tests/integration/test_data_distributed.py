"""Two ranks (torchrun, gloo, loopback): disjoint training shards that cover the data, exact evaluation.

1,001 training images on 2 ranks: each epoch, each rank reads 500 distinct images and the two shards
never overlap (no padding duplicates); only the one image the permutation puts last sits the epoch out.
1,001 validation images: evaluation counts each exactly once over the ranks (FFCV's own distributed
order would read 1,002). Labels are the image indices, so the records identify the images.
"""
import pytest

from resnext_dist.data.sharding import train_shard
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
