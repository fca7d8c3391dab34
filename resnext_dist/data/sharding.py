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

The page-friendly permutation (`pages` given: the page of the .beton each image lies on) is for a file read through
FFCV's own page cache (data.os_cache=false), which holds each page from its first to its last use in the epoch: with
the plain permutation that is nearly every page at once, the whole file. This one reads the pages in a shuffled
sequence and each page's images within a span of `window` pages, so at any point about `window` pages are in use
and each is read once per epoch: a shuffle buffer of `window` pages, images shuffled within it. It is still a
permutation of the epoch's images, a function of (seed, epoch) and the file, cut into ranks as above.

Evaluation: contiguous blocks (FFCV reads them page by page), sizes differing by at most one, that
together hold every image exactly once. No padding, so the all-reduced counts are exact.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import DistributedSampler


def train_shard(num_images: int, *, seed: int, epoch: int, rank: int, world_size: int,
                batch_size: int, pages=None, window: int = 0) -> np.ndarray:
    """This rank's image indices for one training epoch, in order (whole batches only)."""
    order = epoch_permutation(num_images, seed=seed, epoch=epoch, pages=pages, window=window)
    steps = batches_per_epoch(num_images, world_size, batch_size)
    blocks = order[:steps * world_size * batch_size].reshape(steps, world_size, batch_size)
    return blocks[:, rank, :].reshape(-1)


def epoch_permutation(num_images: int, *, seed: int, epoch: int, pages=None, window: int = 0) -> np.ndarray:
    """The epoch's global order: every image once. `pages` (the page of each image): the page-friendly order with
    a buffer of `window` pages (0 = unbounded: a plain shuffle, every page in use all epoch)."""
    if pages is None:
        # num_replicas=1: the sampler only draws the epoch's permutation; the cut into ranks is ours (above).
        sampler = DistributedSampler(range(num_images), num_replicas=1, rank=0, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return np.fromiter(iter(sampler), dtype=np.int64, count=num_images)
    pages = np.asarray(pages)
    if len(pages) != num_images or window < 0:
        raise ValueError(f"{len(pages)} pages for {num_images} images, window {window}: one page per image, "
                         "window >= 0")
    # Its own stream (the words of "page"), so it never repeats the plain order's draws for the same seed.
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, 0x70616765])))
    distinct, page_of = np.unique(pages, return_inverse=True)
    if window == 0 or window >= len(distinct):
        return rng.permutation(num_images).astype(np.int64)
    # The k-th page of the shuffled sequence spreads its images uniformly over [k, k + window): sorting by that
    # position reads the pages in sequence, and at any position exactly `window` pages are in use (begun, not done).
    position = rng.permutation(len(distinct))[page_of] + window * rng.random(num_images)
    return np.argsort(position, kind="stable").astype(np.int64)


def batches_per_epoch(num_images: int, world_size: int, batch_size: int) -> int:
    """Full batches each rank gets per epoch (the last partial batch is dropped)."""
    return (num_images // world_size) // batch_size


def eval_shard(num_images: int, *, rank: int, world_size: int) -> np.ndarray:
    """This rank's block of validation indices; the blocks of all ranks partition range(num_images)."""
    return np.array_split(np.arange(num_images, dtype=np.int64), world_size)[rank]
