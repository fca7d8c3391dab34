"""torchvision fallback loaders: a source (ImageFolder, CIFAR folder, digits) + torch DataLoader workers.

For machines where FFCV cannot be installed. Same interface, same order (sharding.py; `start` begins the epoch
that many images in, over all ranks, loading none of those) and same augmentations as the FFCV loaders: training
crops are RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) + horizontal flip with PIL, and the center crop (validation,
and training with data.random_crop=false) takes the same box as FFCV's decoder (CenterCropRatio). Images cross to
the device as uint8 (pinned when the device is a GPU) and are normalized there.

The resolution travels with each index ((index, res) keys from the batch sampler), so progressive resizing
works with persistent workers, which keep their copy of the dataset between epochs.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from resnext_dist.data.errors import DataError
from resnext_dist.data.normalize import DeviceNormalize
from resnext_dist.data.sharding import batches_per_epoch, eval_shard, steps_per_epoch, train_batches
from resnext_dist.data.sources import Source


class CenterCropRatio:
    """FFCV's center crop: the centered square of side int(ratio * shorter side) (offsets rounded down)."""

    def __init__(self, ratio: float):
        self.ratio = ratio

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        c = int(self.ratio * min(w, h))
        top, left = (h - c) // 2, (w - c) // 2
        return img.crop((left, top, left + c, top + c))


class SourceDataset(Dataset):
    """`dataset[(index, res)] -> (uint8 CHW tensor, label)` with the train or center-crop transform."""

    def __init__(self, source: Source, random_crop: bool, crop_ratio: float, pad_crop: int = 0):
        self.source, self.random_crop, self.crop_ratio, self.pad_crop = source, random_crop, crop_ratio, pad_crop
        self._transforms: Dict[int, v2.Compose] = {}

    def transform(self, res: int) -> v2.Compose:
        if res not in self._transforms:
            if self.random_crop and self.pad_crop:  # CIFAR-style: pad, random crop back to res, flip
                ops = [CenterCropRatio(self.crop_ratio), v2.Resize((res, res), antialias=True),
                       v2.RandomCrop(res, padding=self.pad_crop), v2.RandomHorizontalFlip()]
            elif self.random_crop:
                ops = [v2.RandomResizedCrop(res, antialias=True), v2.RandomHorizontalFlip()]
            else:
                ops = [CenterCropRatio(self.crop_ratio), v2.Resize((res, res), antialias=True)]
            self._transforms[res] = v2.Compose(ops + [v2.PILToTensor()])
        return self._transforms[res]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: Tuple[int, int]):
        index, res = key
        return self.transform(res)(self.source.pil(index)), int(self.source.labels[index])


def _clean_worker_errors(batches: Iterator) -> Iterator:
    """A DataError raised in a worker comes back wrapped in a traceback; keep its one-line message."""
    try:
        yield from batches
    except DataError as e:
        last = [line for line in str(e).splitlines() if line.strip()][-1]
        raise DataError(last.split("DataError: ", 1)[-1].strip()) from None


class TorchvisionTrain:
    """`steps_per_epoch`, `batches_per_epoch`, `epoch(epoch, res, start=0)` -> (float32 images on device, int64
    labels), this rank's micro-batches of each step after global position `start` (sharding.py)."""

    def __init__(self, source: Source, data_cfg, dist, *, seed: int, channels_last: bool, global_batch: int = 0):
        self.source, self.seed, self.dist = source, seed, dist
        self.num_images = len(source)
        self.batch_size = data_cfg.batch_size
        self.global_batch = global_batch or self.batch_size * dist.world_size
        self.reps = data_cfg.ra_reps  # repeated augmentation: each image this many times per epoch (sharding.py)
        self.steps_per_epoch = steps_per_epoch(self.num_images, self.global_batch, self.reps)
        self.batches_per_epoch = batches_per_epoch(self.num_images, dist.world_size, self.batch_size, global_batch,
                                                   self.reps)
        # The batch sampler: this epoch's micro-batches of (index, res) keys, set before each pass (micro-batches
        # differ in size where the global batch does not divide evenly).
        self.batches: List[List[Tuple[int, int]]] = []
        self.loader = DataLoader(
            SourceDataset(source, data_cfg.random_crop, data_cfg.val_crop_ratio, data_cfg.pad_crop),
            batch_sampler=self.batches, num_workers=data_cfg.num_workers,
            pin_memory=dist.device.type == "cuda", persistent_workers=data_cfg.num_workers > 0)
        self.normalize = DeviceNormalize(dist.device, channels_last)

    def epoch(self, epoch: int, res: int, start: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if start < 0 or res < 1:
            raise ValueError(f"epoch({epoch}, res={res}, start={start}): res must be >= 1 and start >= 0")
        self.batches[:] = [[(int(i), res) for i in batch] for batch in train_batches(
            self.num_images, seed=self.seed, epoch=epoch, rank=self.dist.rank, world_size=self.dist.world_size,
            batch_size=self.batch_size, global_batch=self.global_batch, start=start, reps=self.reps)]
        return (self.normalize(images, labels) for images, labels in _clean_worker_errors(iter(self.loader)))


class TorchvisionVal:
    """This rank's share of the validation set; iterate for (images, labels); `num_images` = all ranks."""

    def __init__(self, source: Source, data_cfg, dist, *, channels_last: bool):
        self.num_images = len(source)
        self.indices = eval_shard(self.num_images, rank=dist.rank, world_size=dist.world_size)
        self.batch_size = data_cfg.batch_size
        keys = [(int(i), data_cfg.val_res) for i in self.indices]
        self.loader = DataLoader(
            SourceDataset(source, False, data_cfg.val_crop_ratio), batch_size=self.batch_size, sampler=keys,
            drop_last=False, num_workers=data_cfg.num_workers, pin_memory=dist.device.type == "cuda")
        self.normalize = DeviceNormalize(dist.device, channels_last)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return (self.normalize(images, labels) for images, labels in _clean_worker_errors(iter(self.loader)))
