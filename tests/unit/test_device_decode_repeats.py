"""data.decode=gpu with repeated augmentation (data.ra_reps = R): the R copies of an image in an epoch get R
different crops and flips, keyed by (seed, epoch, index, copy number), so they are the same on any rank or world
size and after a resume; copy 0 (and every image without repeats) keeps the crops of before."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from resnext_dist.data import build_loaders, device_decode
from resnext_dist.data.sharding import train_positions, train_shard
from resnext_dist.data.sources import ImageFolderSource
from resnext_dist.dist import DistInfo
from tests.data_helpers import data_cfg, write

SEED, REPS, N, BATCH = 3, 3, 6, 3


def records(indices, height=375, width=500):
    rec = np.zeros(len(indices), device_decode.HEADER)
    rec["index"], rec["height"], rec["width"] = indices, height, width
    return rec


def test_copy_0_keeps_the_crops_of_before_and_the_copies_differ_deterministically():
    rec = records([0, 5, 17, 123456])
    # Made by main's device_decode.train_boxes before copies existed (seed 3, epoch 1): bit for bit the same.
    before = ([[21, 153, 323, 317], [75, 90, 287, 365], [23, 72, 336, 392], [14, 28, 348, 403]],
              [False, True, True, True])
    for copies in (None, np.zeros(4, np.int64)):
        boxes, flips = device_decode.train_boxes(rec, seed=3, epoch=1, random_crop=True, val_crop_ratio=0.875,
                                                 copies=copies)
        assert (boxes.tolist(), flips.tolist()) == before
    three = records([17, 17, 17])
    boxes, _ = device_decode.train_boxes(three, seed=3, epoch=1, random_crop=True, val_crop_ratio=0.875,
                                         copies=np.arange(3))
    again, _ = device_decode.train_boxes(three, seed=3, epoch=1, random_crop=True, val_crop_ratio=0.875,
                                         copies=np.arange(3))
    assert len({tuple(b) for b in boxes.tolist()}) == 3 and np.array_equal(boxes, again)
    assert boxes.tolist()[0] == before[0][2]  # copy 0 is the image's crop without repeats


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    root = tmp_path_factory.mktemp("repeats")
    rng = np.random.default_rng(0)
    for i in range(N):
        os.makedirs(root / "photos" / f"c{i}", exist_ok=True)
        pixels = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "photos" / f"c{i}" / "0.png")
    write(ImageFolderSource(str(root / "photos")), root / "r.beton", write_mode="jpg")
    return str(root / "r.beton")


def train_loader(path, rank, world):
    cfg = data_cfg(loader="ffcv", train=path, val=path, batch_size=BATCH, decode="gpu", random_crop=True,
                   train_res=16, ra_reps=REPS)
    return build_loaders(cfg, DistInfo(rank=rank, world_size=world), seed=SEED, num_classes=N,
                         channels_last=False)[0]


def crops_by_copy(train, rank, world, start=0):
    """{(image, copy): its decoded crop} for one rank's epoch 0 from global position `start`."""
    batches = list(train.epoch(0, 16, start=start))
    images, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]).tolist()
    shard = dict(rank=rank, world_size=world, batch_size=BATCH, start=start, reps=REPS)
    index = train_shard(N, seed=SEED, epoch=0, **shard)
    copy = np.concatenate(train_positions(N, **shard)) % REPS
    assert labels == index.tolist()  # one class per image: the labels name the images
    return {(int(i), int(c)): x for i, c, x in zip(index, copy, images)}


def test_each_copy_has_its_own_crop_on_any_world_size_and_after_a_resume(beton):
    single = train_loader(beton, 0, 1)
    one = crops_by_copy(single, 0, 1)
    assert sorted(one) == [(i, c) for i in range(N) for c in range(REPS)]  # every copy once
    for i in range(N):
        copies = [one[i, c] for c in range(REPS)]
        assert not any(torch.equal(copies[a], copies[b]) for a in range(REPS) for b in range(a + 1, REPS)), i
    two = {**crops_by_copy(train_loader(beton, 0, 2), 0, 2), **crops_by_copy(train_loader(beton, 1, 2), 1, 2)}
    resumed = crops_by_copy(single, 0, 1, start=9)  # 3 steps in: the copy numbers of the rest of the epoch
    assert sorted(two) == sorted(one) and len(resumed) == N * REPS - 9
    assert all(torch.equal(two[k], one[k]) for k in one)
    assert all(torch.equal(resumed[k], one[k]) for k in resumed)
