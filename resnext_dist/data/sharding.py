"""Which images each rank reads: the training order of an epoch and the exact evaluation split.

Training: one permutation per epoch that depends on (seed, epoch) only (the one torch's
DistributedSampler(shuffle=True, seed) draws), read in consecutive global micro-batches of
world_size x batch_size images; rank r takes the r-th block of batch_size images of each. So the images
of micro-batch k are the same whatever the world size, and each rank's batch is exactly the micro-batch
a single process would see with gradient accumulation: BatchNorm normalizes over the same images, which
makes 2 ranks x batch b equal 1 process x 2 micro-batches of b, and lets a run resume on another world
size at the same global batch. The images that do not fill a last global micro-batch sit that epoch out
(no padding with duplicates). Every loader (FFCV, torchvision, synthetic) uses this order, so a resumed
run that skips the batches it already did sees exactly what the uninterrupted run saw.

Evaluation: contiguous blocks (FFCV reads them page by page), sizes differing by at most one, that
together hold every image exactly once. No padding, so the all-reduced counts are exact.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import DistributedSampler


def train_shard(num_images: int, *, seed: int, epoch: int, rank: int, world_size: int,
                batch_size: int) -> np.ndarray:
    """This rank's image indices for one training epoch, in order (whole batches only)."""
    # num_replicas=1: the sampler only draws the epoch's permutation; the cut into ranks is ours (above).
    sampler = DistributedSampler(range(num_images), num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    order = np.fromiter(iter(sampler), dtype=np.int64, count=num_images)
    steps = batches_per_epoch(num_images, world_size, batch_size)
    blocks = order[:steps * world_size * batch_size].reshape(steps, world_size, batch_size)
    return blocks[:, rank, :].reshape(-1)


def batches_per_epoch(num_images: int, world_size: int, batch_size: int) -> int:
    """Full batches each rank gets per epoch (the last partial batch is dropped)."""
    return (num_images // world_size) // batch_size


def eval_shard(num_images: int, *, rank: int, world_size: int) -> np.ndarray:
    """This rank's block of validation indices; the blocks of all ranks partition range(num_images)."""
    return np.array_split(np.arange(num_images, dtype=np.int64), world_size)[rank]
