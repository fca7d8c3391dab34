"""Data loading: FFCV .beton (fast path), torchvision ImageFolder (fallback), synthetic (benchmarks).

One interface for the trainer and evaluate, whatever `data.loader` says (loaders.py: its registry and the builders):

    train, val = build_loaders(cfg.data, dist, seed=cfg.train.seed, num_classes=cfg.model.num_classes,
                               channels_last=cfg.train.channels_last)
    for epoch in ...:
        res = train_res_for_epoch(cfg.data, epoch)
        for images, labels in train.epoch(epoch, res=res, skip=batches_already_done):
            ...   # images: float32, normalized, on dist.device (channels_last if asked); labels: int64
    for images, labels in val:   # this rank's disjoint share; all shares together = every image once

`train.batches_per_epoch` is the number of batches each rank sees per epoch (drop_last), the same on every rank;
`val.num_images` counts all ranks (the denominator of exact top-1/top-5). The order of an epoch is a function of
(seed, epoch) only (sharding.py), so a resumed run that skips the batches it already did sees exactly the batches
the uninterrupted run saw. Bad data raises `DataError`, an InputError: one line naming the file, exit code 2.
Importing it imports no torch.
"""

from resnext_dist.data.errors import DataError
from resnext_dist.data.loaders import LOADERS, build_loaders, build_val_loader, check_dataset, loader_for
from resnext_dist.data.resolution import train_res_for_epoch

__all__ = ["LOADERS", "build_loaders", "build_val_loader", "check_dataset", "DataError", "loader_for",
           "train_res_for_epoch"]
