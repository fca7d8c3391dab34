"""Synthetic loaders: random uint8 images made once on the device, for benchmarks and smoke tests.

No decoding and no host-to-device copy, so the trainer's throughput on them is the model step's ceiling;
the device-side normalization the real loaders do is kept, so the comparison stays like for like.
Every rank makes the same pool of data.synthetic_size images (random labels in [0, num_classes)) from
(seed, resolution) and reads its shard of the real loaders' order (sharding.py: the same whatever the world size,
exact on a resume); a new resolution (progressive resizing) makes a new pool.
Validation: data.val_synthetic_size images split exactly over the ranks, made once at data.val_res.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from resnext_dist.data.errors import DataError
from resnext_dist.data.normalize import DeviceNormalize
from resnext_dist.data.batches import split_for
from resnext_dist.data.sharding import batches_per_epoch, eval_shard, steps_per_epoch, train_batches


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(1)[0])


def _random_images(n: int, res: int, num_classes: int, device: torch.device, seed: int):
    gen = torch.Generator(device=device).manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, device=device, generator=gen)
    labels = torch.randint(0, num_classes, (n,), dtype=torch.int64, device=device, generator=gen)
    return images, labels


class SyntheticTrain:
    """`steps_per_epoch`, `batches_per_epoch`, `epoch(epoch, res, start=0)` -> (float32 images on device, int64
    labels), this rank's micro-batches of each step after global position `start` (sharding.py)."""

    def __init__(self, data_cfg, dist, *, seed: int, num_classes: int, channels_last: bool, global_batch: int = 0):
        self.num_images = data_cfg.synthetic_size
        self.world_size, self.batch_size = dist.world_size, data_cfg.batch_size
        split = split_for(dist.world_size, self.batch_size, global_batch)
        self.global_batch = split.global_batch
        if self.num_images < self.global_batch:
            raise DataError(f"data.synthetic_size={self.num_images} is less than {split.words()}")
        self.reps = data_cfg.ra_reps  # repeated augmentation: each image this many times per epoch (sharding.py)
        self.steps_per_epoch = steps_per_epoch(self.num_images, self.global_batch, self.reps)
        self.batches_per_epoch = batches_per_epoch(self.num_images, dist.world_size, self.batch_size, global_batch,
                                                   self.reps)
        self.seed, self.rank, self.num_classes, self.device = seed, dist.rank, num_classes, dist.device
        self.normalize = DeviceNormalize(dist.device, channels_last)
        self._res: Optional[int] = None
        self._pool = None

    def _pool_at(self, res: int):
        if res != self._res:
            self._pool = None  # free the old pool before making the new one
            self._pool = _random_images(self.num_images, res, self.num_classes, self.device,
                                        _seed(0, self.seed, res))
            self._res = res
        return self._pool

    def epoch(self, epoch: int, res: int, start: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if start < 0 or res < 1:
            raise ValueError(f"epoch({epoch}, res={res}, start={start}): res must be >= 1 and start >= 0")
        images, labels = self._pool_at(res)
        for idx in train_batches(self.num_images, seed=self.seed, epoch=epoch, rank=self.rank,
                                 world_size=self.world_size, batch_size=self.batch_size,
                                 global_batch=self.global_batch, start=start, reps=self.reps):
            idx = torch.from_numpy(idx).to(self.device)
            yield self.normalize(images[idx], labels[idx])


class SyntheticVal:
    """This rank's share of data.val_synthetic_size images; `num_images` = all ranks."""

    def __init__(self, data_cfg, dist, *, seed: int, num_classes: int, channels_last: bool):
        self.num_images = data_cfg.val_synthetic_size
        n = len(eval_shard(self.num_images, rank=dist.rank, world_size=dist.world_size))
        self.batch_size = data_cfg.batch_size
        self.images, self.labels = _random_images(n, data_cfg.val_res, num_classes, dist.device,
                                                  _seed(1, seed, dist.rank))
        self.normalize = DeviceNormalize(dist.device, channels_last)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        b = self.batch_size
        for k in range(len(self)):
            yield self.normalize(self.images[k * b:(k + 1) * b], self.labels[k * b:(k + 1) * b])
