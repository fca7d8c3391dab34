"""Data loading: FFCV .beton (fast path), torchvision ImageFolder (fallback), synthetic (benchmarks).

One interface for the trainer, whatever `data.loader` says:

    train, val = build_loaders(cfg.data, dist, seed=cfg.train.seed, num_classes=cfg.model.num_classes,
                               channels_last=cfg.train.channels_last)
    for epoch in ...:
        res = train_res_for_epoch(cfg.data, epoch)
        for images, labels in train.epoch(epoch, res=res, skip=batches_already_done):
            ...   # images: float32, normalized, on dist.device (channels_last if asked); labels: int64
    for images, labels in val:   # this rank's disjoint share; all shares together = every image once
        ...

`train.batches_per_epoch` is the number of batches each rank sees per epoch (drop_last), the same on
every rank. The order of an epoch is a function of (seed, epoch) only, so a resumed run that skips the
batches it already did sees exactly the batches the uninterrupted run saw.

Also here: `val.num_images` (all ranks together: the denominator of exact top-1/top-5), `len(val)`
(this rank's batches), `build_val_loader` (evaluate's), `train_res_for_epoch(cfg.data, epoch)` (progressive
resizing), and `check_dataset(cfg.data, num_classes)` (build_loaders runs it too), which raises `DataError`, an
InputError, for missing or bad data: one line naming the file, exit code 2. Importing it imports no torch.
Modules: loaders (the `data.loader` registry and the builders), checks, sources (what can be read), write (the
.beton writer CLI), embedded, sharding (who reads what), resolution, normalize, and one module per loader: ffcv
(with crop_decode and device_decode: data.decode=gpu), torchvision, synthetic.
"""

from resnext_dist.data.errors import DataError
from resnext_dist.data.loaders import LOADERS, build_loaders, build_val_loader, check_dataset, loader_for
from resnext_dist.data.resolution import train_res_for_epoch

__all__ = ["LOADERS", "build_loaders", "build_val_loader", "check_dataset", "DataError", "loader_for",
           "train_res_for_epoch"]
