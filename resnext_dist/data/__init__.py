"""Data loading: FFCV .beton (fast path), torchvision ImageFolder (fallback), synthetic (benchmarks).

One interface for the trainer and evaluate, whatever `data.loader` says (loaders.py: its registry and the builders):

    train, val = build_loaders(cfg.data, dist, seed=cfg.train.seed, num_classes=cfg.model.num_classes,
                               channels_last=cfg.train.channels_last, global_batch=1024)
    for epoch in ...:
        res = train_res_for_epoch(cfg.data, epoch)
        for images, labels in train.epoch(epoch, res=res, start=images_already_done_by_all_ranks):
            ...   # images: float32, normalized, on dist.device (channels_last if asked); labels: int64
    for images, labels in val:   # this rank's disjoint share; all shares together = every image once

`train.steps_per_epoch` is the number of optimizer steps per epoch (whole global batches) and
`train.batches_per_epoch` the micro-batches each rank reads in them (batches.py: the split of the global batch),
the same on every rank; `val.num_images` counts all ranks (the denominator of exact top-1/top-5). The order of an
epoch is a function of (seed, epoch) only (sharding.py), so a resumed run that starts after the images it already
did, on any number of ranks, trains on exactly the images the uninterrupted run would have. Bad data raises `DataError`, an InputError: one line naming the file, exit code 2.
Importing it imports no torch.
"""

from resnext_dist.data.errors import DataError
from resnext_dist.data.loaders import LOADERS, build_loaders, build_val_loader, check_dataset, loader_for
from resnext_dist.data.resolution import train_res_for_epoch

__all__ = ["LOADERS", "build_loaders", "build_val_loader", "check_dataset", "DataError", "loader_for",
           "train_res_for_epoch"]
