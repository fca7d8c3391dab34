"""Which images each rank reads: the training order of an epoch and the exact evaluation split.

Training: one global order per epoch (`epoch_permutation`, a function of (seed, epoch) only: the permutation torch's
DistributedSampler(shuffle=True, seed) draws), read in consecutive steps of the global batch. The epoch's position
is the number of its images already trained on over all ranks (`start`, the checkpoint's samples_in_epoch); the
order after it is cut into whole steps, and each step into this world size's micro-batches (batches.py). Because
the cut starts from the global position, a run resumed on another world size mid-epoch reads exactly the images
the interrupted one had not: every image of an epoch once, across the change. The images that do not fill a
last global batch sit that epoch out (no padding with duplicates). Every loader (FFCV, torchvision, synthetic)
uses this order, so a resumed run sees exactly what the uninterrupted run saw.

The page-friendly permutation (`pages` given: the page of the .beton each image lies on) is for a file read through
FFCV's own page cache (data.os_cache=false), which holds each page from its first to its last use in the epoch: with
the plain permutation that is nearly every page at once, the whole file. This one reads the pages in a shuffled
sequence and each page's images within a span of `window` pages, so at any point about `window` pages are in use
and each is read once per epoch: a shuffle buffer of `window` pages, images shuffled within it. It is still a
permutation of the epoch's images, a function of (seed, epoch) and the file, cut into ranks as above.

Repeated augmentation (`reps` = data.ra_reps > 1, torchvision's --ra-sampler --ra-reps): the epoch's order holds
each image of the permutation `reps` times in a row, reps x num_images positions, so an epoch shows every image
exactly `reps` times (one epoch = `reps` passes over the data: torchvision's 600 epochs at --ra-reps 4 are
train.epochs=150 here, the same images and steps). Within each step the copies are laid out copy by copy (when the
global batch divides by `reps`): the step's groups, hence the ranks, take different copies, as torchvision's
RASampler deals them; each copy is augmented differently (augmentations are keyed by the position, augment.py).
The position (`start`) and the cut into steps and ranks are as above, so it resumes mid-epoch the same way.

Evaluation: contiguous blocks (FFCV reads them page by page), sizes differing by at most one, that
together hold every image exactly once. No padding, so the all-reduced counts are exact.
"""
from __future__ import annotations

from typing import List

import numpy as np
from torch.utils.data import DistributedSampler

from resnext_dist.data.batches import split_for


def epoch_permutation(num_images: int, *, seed: int, epoch: int, pages=None, window: int = 0) -> np.ndarray:
    """The epoch's global order: every image once. `pages` (the page of each image): the page-friendly order with
    a buffer of `window` pages (0 = unbounded: a plain shuffle, every page in use all epoch)."""
    if pages is None:
        # num_replicas=1: the sampler only draws the epoch's permutation; the cut into ranks is train_shard's.
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


def train_shard(num_images: int, *, seed: int, epoch: int, rank: int, world_size: int, batch_size: int,
                global_batch: int = 0, start: int = 0, pages=None, window: int = 0, reps: int = 1) -> np.ndarray:
    """This rank's image indices for the rest of an epoch from global position `start`, in order: its
    micro-batches of each whole step after `start`, one after the other (`train_batches` cuts them apart).
    `pages`/`window`: epoch_permutation's; `reps`: repeated augmentation (the module's docstring)."""
    order = epoch_permutation(num_images, seed=seed, epoch=epoch, pages=pages, window=window)
    if reps > 1:
        order = np.repeat(order, reps)
    return _cut(order, start, split_for(world_size, batch_size, global_batch), rank, reps)


def train_positions(num_images: int, *, rank: int, world_size: int, batch_size: int, global_batch: int = 0,
                    start: int = 0, reps: int = 1, **_) -> List[np.ndarray]:
    """Where each of this rank's micro-batches (train_batches') sits in the epoch's global order: the same cut of
    the positions instead of the images (augment.py keys its draws by them)."""
    split = split_for(world_size, batch_size, global_batch)
    shard = _cut(np.arange(num_images * reps, dtype=np.int64), start, split, rank, reps)
    return _micro(shard, split, rank)


def _cut(order: np.ndarray, start: int, split, rank: int, reps: int) -> np.ndarray:
    """This rank's part of each whole step of `order` after position `start`."""
    order = order[start:]
    steps = len(order) // split.global_batch
    steps = order[:steps * split.global_batch].reshape(steps, split.global_batch)
    if reps > 1 and split.global_batch % reps == 0 and start % reps == 0:
        # copy by copy: the step's k-th image's copies move from k*reps + c to c*(global/reps) + k
        steps = steps.reshape(len(steps), -1, reps).transpose(0, 2, 1).reshape(len(steps), -1)
    return steps[:, np.asarray(split.positions(rank), dtype=np.int64)].reshape(-1)


def _micro(shard: np.ndarray, split, rank: int) -> List[np.ndarray]:
    sizes = split.micro_sizes(rank)
    steps = len(shard) // sum(sizes)
    return np.split(shard, np.cumsum(sizes * steps)[:-1]) if steps else []


def train_batches(num_images: int, **kw) -> List[np.ndarray]:
    """`train_shard` cut into this rank's micro-batches (same arguments)."""
    return _micro(train_shard(num_images, **kw), split_for(kw["world_size"], kw["batch_size"],
                                                          kw.get("global_batch", 0)), kw["rank"])


def steps_per_epoch(num_images: int, global_batch: int, reps: int = 1) -> int:
    """Optimizer steps per epoch: whole global batches (the images of a last partial one sit the epoch out)."""
    return num_images * reps // global_batch


def batches_per_epoch(num_images: int, world_size: int, batch_size: int, global_batch: int = 0, reps: int = 1) -> int:
    """Micro-batches each rank reads per epoch, the same on every rank (whole steps only)."""
    split = split_for(world_size, batch_size, global_batch)
    return steps_per_epoch(num_images, split.global_batch, reps) * split.accum_steps


def eval_shard(num_images: int, *, rank: int, world_size: int) -> np.ndarray:
    """This rank's block of validation indices; the blocks of all ranks partition range(num_images)."""
    return np.array_split(np.arange(num_images, dtype=np.int64), world_size)[rank]
