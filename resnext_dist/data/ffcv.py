"""FFCV loaders: .beton files decoded by FFCV's JIT-compiled pipelines (the fast path).

Decoders: crop_decode.py's (data.crop_decode=true, when its compiled part is installed), otherwise FFCV's.

Training: RandomResizedCrop decode at the epoch's resolution + horizontal flip (data.pad_crop > 0: a center-crop
decode, flip, then a random shift by up to pad_crop pixels, CIFAR-style; data.random_crop=false: a deterministic
center-crop decode and no flip), ToDevice (non-blocking), NCHW in channels_last, uint8; normalization to float32
runs on the device (normalize.py). Progressive resizing sets the decoder's output size before each epoch, as FFCV's
ImageNet example does (the buffers are re-allocated per epoch; the compiled code is reused).

Order: FFCV's own distributed RANDOM order is DistributedSampler(drop_last=False), which pads the shards
with duplicates, and it can only start an epoch at its first batch. This loader installs sharding.py's
order instead (this rank's images of each whole step after the epoch's global position `start`), so resuming
mid-epoch, on any world size, reads no image twice and skips none. It replaces the Loader's `traversal_order`
after construction because the Loader's custom-order argument differs between ffcv 1.0.2 (an instance) and ffcv
main (a class). FFCV's batches have one size (the largest micro-batch); where the global batch does not divide
evenly, the micro-batches are cut from them on the device (`_micro_batches`), else they are FFCV's own.
`by_page` (data.order, loaders.ORDERS): the page-friendly permutation, from the page each image's bytes start
on (the .beton's allocation table) and data.shuffle_window.

Validation: a center-crop decode (ratio data.val_crop_ratio) at data.val_res, SEQUENTIAL, no drop_last,
over this rank's block of explicit `indices` (sharding.eval_shard): every image once over all ranks.

data.decode=gpu: the same loaders, order and start, FFCV's workers copying each image's stored bytes for
device_decode.py to decode on the device; data.pad_crop needs data.decode=cpu.

data.num_workers is FFCV's number of decoding threads (numba's), kept within [1, cores]. Costs: importing
FFCV takes ~10 s (numba, OpenCV) and the first epoch of each pipeline compiles it with numba (~15-20 s
for the random-resized-crop pipeline, ~5 s for center crop, on a 2-core machine). FFCV also sets torch's
intra-op thread count to its worker count (ffcv.pipeline.Compiler.set_num_threads) at every epoch.
"""
from __future__ import annotations

import functools
import itertools
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from resnext_dist.data import ffcv_cache  # noqa: F401  before FFCV: numba's compile from its disk cache
from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, RandomResizedCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.traversal_order.base import TraversalOrder
from ffcv.transforms import RandomHorizontalFlip, RandomTranslate, ToDevice, ToTensor, ToTorchImage

from resnext_dist.data import crop_decode, device_decode
from resnext_dist.data.decode_ahead import decode_ahead
from resnext_dist.data.normalize import DeviceNormalize
from resnext_dist.data.batches import split_for
from resnext_dist.data.sharding import batches_per_epoch, eval_shard, steps_per_epoch, train_positions, train_shard


def ffcv_workers(num_workers: int) -> int:
    """FFCV's worker threads are numba threads: at least 1 (FFCV reads 0 as 'all cores') and at most
    numba's thread pool size (the machine's cores; numba refuses more)."""
    import numba

    return max(1, min(num_workers, numba.config.NUMBA_NUM_THREADS))


def _decoders(data_cfg):
    """(random-resized-crop class, center-crop class): crop_decode.py's, unless data.crop_decode=false or its
    compiled part is not installed; then FFCV's own."""
    if data_cfg.crop_decode and crop_decode.available():
        return crop_decode.CropFirstRandomResizedCrop, crop_decode.CropFirstCenterCrop
    return RandomResizedCropRGBImageDecoder, CenterCropRGBImageDecoder


def _image_pipeline(decoder, flip: bool, device: torch.device, pad_crop: int = 0) -> list:
    ops = [decoder] + ([RandomHorizontalFlip()] if flip else [])
    if pad_crop:  # CIFAR-style: shift by up to pad_crop pixels, zero fill = pad, then crop back to size
        ops.append(RandomTranslate(padding=pad_crop))
    # uint8 NHWC is what crosses to the device; ToTorchImage makes it an NCHW view in channels_last.
    return ops + [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(channels_last=True)]


def _label_pipeline(device: torch.device) -> list:
    # (B, 1) labels; flattened by the loader (FFCV's Squeeze would turn a last batch of one into a scalar)
    return [IntDecoder(), ToTensor(), ToDevice(device, non_blocking=True)]


def image_pages(loader: Loader) -> np.ndarray:
    """The page of the .beton on which each of the loader's images starts (FFCV's allocation table, read by page)."""
    reader = loader.reader
    table = reader.alloc_table
    pages = np.full(reader.num_samples, -1, dtype=np.int64)  # -1: an image with no bytes outside the metadata
    first = np.full(reader.num_samples, np.iinfo(np.uint64).max, dtype=np.uint64)
    np.minimum.at(first, table["sample_id"].astype(np.int64), table["ptr"])
    stored = first != np.iinfo(np.uint64).max
    pages[stored] = (first[stored] // np.uint64(reader.page_size)).astype(np.int64)
    return pages[loader.indices.astype(np.int64)]


class _EpochShards(TraversalOrder):
    """sharding.train_shard's order for `sample_order(epoch)`: this rank's images of the whole steps after global
    position `start`; page-friendly when `pages` (image_pages) are given."""

    def __init__(self, loader: Loader, rank: int, world_size: int, batch_size: int, global_batch: int, pages=None,
                 window: int = 0, reps: int = 1):
        super().__init__(loader)
        self.shard = dict(rank=rank, world_size=world_size, batch_size=batch_size, global_batch=global_batch,
                          pages=pages, window=window, reps=reps)
        self.start = 0

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.indices[train_shard(len(self.indices), seed=self.seed, epoch=epoch, start=self.start,
                                        **self.shard)]


def _stored_bytes_pipeline(path: str) -> list:
    """data.decode=gpu: each image's stored bytes, as they are in the file (device_decode.py decodes them)."""
    return [device_decode.StoredBytes(device_decode.stored_capacity(path))]


class FfcvTrain:
    """`steps_per_epoch`, `batches_per_epoch`, `epoch(epoch, res, start=0)` -> (float32 images on device, int64
    labels), this rank's micro-batches of each step after global position `start` (sharding.py)."""

    def __init__(self, path: str, data_cfg, dist, *, seed: int, channels_last: bool, num_images: int,
                 global_batch: int = 0, by_page: bool = False):
        self.path, self.num_images, self.device = path, num_images, dist.device
        self.batch_size, self.seed, self.data_cfg = data_cfg.batch_size, seed, data_cfg
        split = split_for(dist.world_size, self.batch_size, global_batch)
        self.global_batch, self.micro_sizes = split.global_batch, split.micro_sizes(dist.rank)
        self.reps = data_cfg.ra_reps  # repeated augmentation (sharding.py)
        self.steps_per_epoch = steps_per_epoch(num_images, self.global_batch, self.reps)
        self.batches_per_epoch = batches_per_epoch(num_images, dist.world_size, self.batch_size, global_batch,
                                                   self.reps)
        res = data_cfg.train_res
        self.decoder, self.on_device, self.normalize = None, None, None
        if data_cfg.decode == "gpu":
            self.on_device = device_decode.DeviceDecoder(dist.device, channels_last, path)
            images = _stored_bytes_pipeline(path)
        else:
            self.normalize = DeviceNormalize(dist.device, channels_last)
            random_resized_crop, center_crop = _decoders(data_cfg)
            if data_cfg.random_crop and not data_cfg.pad_crop:
                self.decoder = random_resized_crop((res, res))
            else:
                self.decoder = center_crop((res, res), ratio=data_cfg.val_crop_ratio)
            images = _image_pipeline(self.decoder, data_cfg.random_crop, dist.device,
                                     data_cfg.pad_crop if data_cfg.random_crop else 0)
        # FFCV's batch: the largest micro-batch; the order holds whole steps, so nothing is dropped
        self.loader = Loader(
            path, batch_size=max(self.micro_sizes), num_workers=ffcv_workers(data_cfg.num_workers),
            os_cache=data_cfg.os_cache, order=OrderOption.SEQUENTIAL, seed=seed, drop_last=False,
            batches_ahead=data_cfg.batches_ahead,
            pipelines={"image": images, "label": _label_pipeline(dist.device)})
        pages = image_pages(self.loader) if by_page else None
        self.order = _EpochShards(self.loader, dist.rank, dist.world_size, self.batch_size, self.global_batch, pages,
                                  data_cfg.shuffle_window, self.reps)
        self.loader.traversal_order = self.order  # see the module docstring
        self.loader.first_traversal_order = self.order.sample_order(0)  # what len(loader) counts

    def epoch(self, epoch: int, res: int, start: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if start < 0 or res < 1:
            raise ValueError(f"epoch({epoch}, res={res}, start={start}): res must be >= 1 and start >= 0")
        if self.decoder is not None:
            self.decoder.output_size = (res, res)
        self.order.start = start
        self.loader.next_epoch = epoch  # the order is a function of (seed, epoch) only
        decode = None
        if self.on_device is not None:
            decode = functools.partial(self._decode, epoch, res, self._copies(start))
        batches = _hand_out(self.loader, self.normalize, decode, self.device, self.data_cfg.decode_ahead)
        return batches if len(set(self.micro_sizes)) == 1 else _micro_batches(batches, self.micro_sizes)

    def _copies(self, start: int) -> Optional[Iterator[np.ndarray]]:
        """data.decode=gpu with repeated augmentation: per FFCV batch, in order, each image's copy number (its
        place in the epoch's order modulo data.ra_reps, sharding.py), so the copies get different crops; None
        without repeats. FFCV's batches are consecutive slices of this rank's order, of the largest micro-batch."""
        if self.reps == 1:
            return None
        where = train_positions(len(self.order.indices), start=start, **self.order.shard)
        copies = np.concatenate(where) % self.reps if where else np.zeros(0, np.int64)
        size = max(self.micro_sizes)
        return (copies[i:i + size] for i in range(0, len(copies), size))

    def _decode(self, epoch: int, res: int, copies: Optional[Iterator[np.ndarray]], images: torch.Tensor) \
            -> torch.Tensor:
        records = device_decode.headers(images)
        copy = next(copies) if copies is not None else None
        if copy is not None and len(copy) != len(records):
            raise RuntimeError(f"{len(records)} images in FFCV's batch, {len(copy)} copy numbers: out of step")
        boxes, flips = device_decode.train_boxes(
            records, seed=self.seed, epoch=epoch, random_crop=self.data_cfg.random_crop,
            val_crop_ratio=self.data_cfg.val_crop_ratio, copies=copy)
        return self.on_device(images, boxes, flips, res)


class FfcvVal:
    """This rank's share of the validation set; iterate for (images, labels); `num_images` = all ranks."""

    def __init__(self, path: str, data_cfg, dist, *, channels_last: bool, num_images: int):
        self.path, self.num_images, self.device, self.ahead = path, num_images, dist.device, data_cfg.decode_ahead
        self.indices = eval_shard(num_images, rank=dist.rank, world_size=dist.world_size)
        self.batch_size, self.res, self.ratio = data_cfg.batch_size, data_cfg.val_res, data_cfg.val_crop_ratio
        self.loader, self.on_device, self.normalize = None, None, None
        if len(self.indices):  # a rank may have nothing to evaluate when images < ranks
            if data_cfg.decode == "gpu":
                self.on_device = device_decode.DeviceDecoder(dist.device, channels_last, path)
                images = _stored_bytes_pipeline(path)
            else:
                self.normalize = DeviceNormalize(dist.device, channels_last)
                _, center_crop = _decoders(data_cfg)
                decoder = center_crop((data_cfg.val_res, data_cfg.val_res), ratio=data_cfg.val_crop_ratio)
                images = _image_pipeline(decoder, False, dist.device)
            self.loader = Loader(
                path, batch_size=self.batch_size, num_workers=ffcv_workers(data_cfg.num_workers),
                os_cache=data_cfg.os_cache, order=OrderOption.SEQUENTIAL, indices=self.indices,
                seed=0,  # unused by SEQUENTIAL; without one FFCV draws from numpy's global generator
                drop_last=False, batches_ahead=data_cfg.batches_ahead,
                pipelines={"image": images, "label": _label_pipeline(dist.device)})

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self.loader is None:
            return iter(())
        return _hand_out(self.loader, self.normalize, self._decode if self.on_device is not None else None,
                         self.device, self.ahead)

    def _decode(self, images: torch.Tensor) -> torch.Tensor:
        records = device_decode.headers(images)
        boxes = device_decode.center_crops(records["height"], records["width"], self.ratio)
        return self.on_device(images, boxes, np.zeros(len(boxes), bool), self.res)


def _micro_batches(batches: Iterator, sizes: List[int]) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """FFCV's equal batches re-cut into micro-batches of `sizes`, repeated (an uneven split: batches.py). The
    pieces are views of, or (across a batch boundary) one concatenation on the device of, the handed-out copies."""
    held: List[Tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for want in itertools.cycle(sizes):
            while sum(len(y) for _, y in held) < want:
                batch = next(batches, None)
                if batch is None:
                    return  # whole steps only: nothing is left over at the end
                held.append(batch)
            images = held[0][0] if len(held) == 1 else torch.cat([x for x, _ in held])
            labels = held[0][1] if len(held) == 1 else torch.cat([y for _, y in held])
            held = [(images[want:], labels[want:])] if len(labels) > want else []
            yield images[:want], labels[:want]
    finally:
        batches.close()  # stop FFCV's prefetch thread when the caller leaves the epoch early


def _hand_out(loader: Loader, normalize, decode, device=None, ahead: int = 0) \
        -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """FFCV's batches as (float32 images, int64 labels): normalized, or `decode`d on the device (data.decode=gpu:
    by a background thread `ahead` batches ahead, decode_ahead.py). FFCV reuses its output buffers
    batches_ahead+2 batches later: hand out copies only (normalize and the device decoder make new image tensors;
    the labels are cloned as soon as they are read)."""
    if decode is not None:
        return decode_ahead(_stored_and_labels(loader), decode, device, ahead)
    return _normalized(loader, normalize)


def _normalized(loader: Loader, normalize) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    it = iter(loader)
    try:
        for images, labels in it:
            yield normalize(images, labels.reshape(-1).clone())
    finally:
        it.close()  # stop the prefetch thread when the caller leaves the epoch early


def _stored_and_labels(loader: Loader) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """(stored bytes as FFCV hands them, a copy of the labels as int64)."""
    it = iter(loader)
    try:
        for images, labels in it:
            yield images, labels.reshape(-1).clone().to(torch.int64)
    finally:
        it.close()
