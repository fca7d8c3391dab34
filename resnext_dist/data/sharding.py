"""Which images each rank reads: the training order of an epoch and the exact evaluation split.

Training: one global order per epoch (`epoch_permutation`, a function of (seed, epoch) only: the permutation torch's
DistributedSampler(shuffle=True, seed) draws), read in consecutive steps of the global batch. The epoch's position
is the number of its images already trained on over all ranks (`start`, the checkpoint's samples_in_epoch); the
order after it is cut into whole steps, and each step into this world size's micro-batches (batches.py). Because
the cut starts from the global position, a run resumed on another world size mid-epoch reads exactly the images
the interrupted one had not: every image of an epoch once, across the change. The images that do not fill a
last global batch sit that epoch out (no padding with duplicates). Every loader (FFCV, torchvision, synthetic)
uses this order, so a resumed run sees exactly what the uninterrupted run saw.

Evaluation: contiguous blocks (FFCV reads them page by page), sizes differing by at most one, that
together hold every image exactly once. No padding, so the all-reduced counts are exact.
"""
from __future__ import annotations

from typing import List

import numpy as np
from torch.utils.data import DistributedSampler

from resnext_dist.data.batches import split_for


def epoch_permutation(num_images: int, *, seed: int, epoch: int, pages=None, window: int = 0) -> np.ndarray:
    """The epoch's global training order: every image index once. `pages`/`window`: a page-friendly order for
    datasets larger than memory (not built here yet: None is the plain random permutation)."""
    if pages is not None:
        raise NotImplementedError("a page-friendly order is not available in this version")
    # num_replicas=1: the sampler only draws the epoch's permutation; the cut into ranks is train_shard's.
    sampler = DistributedSampler(range(num_images), num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return np.fromiter(iter(sampler), dtype=np.int64, count=num_images)


def train_shard(num_images: int, *, seed: int, epoch: int, rank: int, world_size: int, batch_size: int,
                global_batch: int = 0, start: int = 0, pages=None, window: int = 0) -> np.ndarray:
    """This rank's image indices for the rest of an epoch from global position `start`, in order: its
    micro-batches of each whole step after `start`, one after the other (`train_batches` cuts them apart).
    `pages`/`window`: epoch_permutation's."""
    split = split_for(world_size, batch_size, global_batch)
    order = epoch_permutation(num_images, seed=seed, epoch=epoch, pages=pages, window=window)[start:]
    steps = len(order) // split.global_batch
    steps = order[:steps * split.global_batch].reshape(steps, split.global_batch)
    return steps[:, np.asarray(split.positions(rank), dtype=np.int64)].reshape(-1)


def train_batches(num_images: int, **kw) -> List[np.ndarray]:
    """`train_shard` cut into this rank's micro-batches (same arguments)."""
    shard = train_shard(num_images, **kw)
    sizes = split_for(kw["world_size"], kw["batch_size"], kw.get("global_batch", 0)).micro_sizes(kw["rank"])
    steps = len(shard) // sum(sizes)
    return np.split(shard, np.cumsum(sizes * steps)[:-1]) if steps else []


def steps_per_epoch(num_images: int, global_batch: int) -> int:
    """Optimizer steps per epoch: whole global batches (the images of a last partial one sit the epoch out)."""
    return num_images // global_batch


def batches_per_epoch(num_images: int, world_size: int, batch_size: int, global_batch: int = 0) -> int:
    """Micro-batches each rank reads per epoch, the same on every rank (whole steps only)."""
    split = split_for(world_size, batch_size, global_batch)
    return steps_per_epoch(num_images, split.global_batch) * split.accum_steps


def eval_shard(num_images: int, *, rank: int, world_size: int) -> np.ndarray:
    """This rank's block of validation indices; the blocks of all ranks partition range(num_images)."""
    return np.array_split(np.arange(num_images, dtype=np.int64), world_size)[rank]
