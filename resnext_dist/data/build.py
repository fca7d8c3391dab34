"""`build_loaders`: check the data against the config, then make the loaders `data.loader` names.

The loader modules are imported only when chosen, so a machine without FFCV can use the others.
"""
from __future__ import annotations

from resnext_dist.data.checks import check_dataset
from resnext_dist.data.errors import DataError


def build_loaders(data_cfg, dist, *, seed: int, num_classes: int, channels_last: bool):
    """(train, val or None) for this rank; raises DataError / InputError (exit 2) on bad data or config."""
    found = check_dataset(data_cfg, num_classes)
    if data_cfg.loader == "synthetic":
        from resnext_dist.data.synthetic import SyntheticTrain, SyntheticVal

        train = SyntheticTrain(data_cfg, dist, seed=seed, num_classes=num_classes, channels_last=channels_last)
        val = SyntheticVal(data_cfg, dist, seed=seed, num_classes=num_classes, channels_last=channels_last) \
            if data_cfg.val_synthetic_size else None
        return train, val
    per_rank = found.train_images // dist.world_size
    if per_rank < data_cfg.batch_size:
        raise DataError(f"{data_cfg.train}: {found.train_images} images make less than one batch per rank "
                        f"(data.batch_size={data_cfg.batch_size} x {dist.world_size} ranks)")
    if data_cfg.loader == "ffcv":
        from resnext_dist.data.ffcv import FfcvTrain, FfcvVal

        train = FfcvTrain(data_cfg.train, data_cfg, dist, seed=seed, channels_last=channels_last,
                          num_images=found.train_images)
        val = FfcvVal(data_cfg.val, data_cfg, dist, channels_last=channels_last,
                      num_images=found.val_images) if data_cfg.val else None
        return train, val
    from resnext_dist.data.torchvision import TorchvisionTrain, TorchvisionVal

    train = TorchvisionTrain(found.train_source, data_cfg, dist, seed=seed, channels_last=channels_last)
    val = TorchvisionVal(found.val_source, data_cfg, dist, channels_last=channels_last) if data_cfg.val else None
    return train, val
