"""Checks of the data against the config, made before any process group or training step.

    check_dataset(cfg.data, cfg.model.num_classes)   # raises DataError (a InputError: exit 2)

ffcv: data.train / data.val exist, are .beton files FFCV can read (not truncated), hold an `image`
(RGBImageField) and a `label` (IntField) field and at least one image, and every label lies in
[0, num_classes). Only the file's header and metadata table are read, so this takes well under a second
even for ImageNet.
torchvision: the sources open (see sources.py: missing directory, no class folders, an empty class
folder, unreadable CIFAR batches), their labels lie in [0, num_classes), and train and val name the same
classes in the same order (ImageFolder labels come from folder names: a mismatch would mislabel silently).
Each message is one line naming the file and, for labels, the first bad one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from resnext_dist.errors import InputError
from resnext_dist.data.errors import DataError
from resnext_dist.errors import one_line
from resnext_dist.data.sources import Source, source_from_spec


@dataclass
class CheckedData:
    """What the checks found, so the loaders need not open everything again."""
    train_images: int = 0
    val_images: int = 0
    train_source: Optional[Source] = None  # torchvision only
    val_source: Optional[Source] = None


def check_dataset(data_cfg, num_classes: int) -> CheckedData:
    """Check data.train and data.val for data.loader; raise DataError naming the first problem."""
    if data_cfg.loader == "ffcv":
        found = CheckedData(train_images=check_beton(data_cfg.train, num_classes, key="data.train"))
        if data_cfg.val:
            found.val_images = check_beton(data_cfg.val, num_classes, key="data.val")
        return found
    if data_cfg.loader == "torchvision":
        train = check_source(data_cfg.train, "train", num_classes, key="data.train")
        found = CheckedData(train_images=len(train), train_source=train)
        if data_cfg.val:
            val = check_source(data_cfg.val, "val", num_classes, key="data.val")
            if list(val.classes) != list(train.classes):
                diff = next((f"{a!r} vs {b!r}" for a, b in zip(val.classes, train.classes) if a != b),
                            f"{len(val.classes)} vs {len(train.classes)} classes")
                raise DataError(f"{data_cfg.val}: classes differ from those of {data_cfg.train} ({diff})")
            found.val_images, found.val_source = len(val), val
        return found
    if data_cfg.loader == "synthetic":
        if data_cfg.synthetic_size < 1 or data_cfg.val_synthetic_size < 0:
            raise InputError(f"data.synthetic_size={data_cfg.synthetic_size} must be >= 1 and "
                              f"data.val_synthetic_size={data_cfg.val_synthetic_size} >= 0")
        return CheckedData(train_images=data_cfg.synthetic_size, val_images=data_cfg.val_synthetic_size)
    raise InputError(f"data.loader={data_cfg.loader!r}: must be one of ffcv, torchvision, synthetic")


def check_beton(path: str, num_classes: int, key: str = "data.train") -> int:
    """The number of images in the .beton at `path`, after checking it; raises DataError."""
    if not path:
        raise DataError(f"{key} is empty: give the path of a .beton file")
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file ({key})")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a file, expected an FFCV .beton ({key})")
    try:
        from ffcv.fields import IntField, RGBImageField
        from ffcv.reader import Reader
    except ImportError as e:
        raise InputError(f"data.loader=ffcv but FFCV cannot be imported ({one_line(e)}); "
                          "install it (launch/setup.sh) or set data.loader=torchvision") from None
    try:
        reader = Reader(path)
    except Exception as e:  # numpy and FFCV raise many kinds on a file that is not a beton
        raise DataError(f"{path}: not a complete FFCV .beton file ({type(e).__name__}: {one_line(e)})") from None
    if len(reader.metadata) != reader.num_samples or reader.header["alloc_table_ptr"] > os.path.getsize(path):
        raise DataError(f"{path}: truncated .beton file (header says {reader.num_samples} images)")
    fields = dict(reader.handlers)
    for name, kind in (("image", RGBImageField), ("label", IntField)):
        if not isinstance(fields.get(name), kind):
            present = ", ".join(f"{n} ({type(f).__name__})" for n, f in fields.items()) or "none"
            raise DataError(f"{path}: no {name!r} field of type {kind.__name__} (fields: {present})")
    if reader.num_samples == 0:
        raise DataError(f"{path}: holds no images")
    labels = reader.metadata[f"f{reader.field_names.index('label')}"]
    check_labels(labels, num_classes, lambda i: f"{path}: image {i}")
    return int(reader.num_samples)


def check_source(spec: str, split: str, num_classes: int, key: str = "data.train") -> Source:
    """Open the torchvision loader's source `spec` (sources.source_from_spec) and check its labels."""
    if not spec:
        raise DataError(f"{key} is empty: give an ImageFolder directory, a CIFAR folder or 'digits'")
    source = source_from_spec(spec, split)
    check_labels(source.labels, num_classes, source.describe)
    return source


def check_labels(labels: np.ndarray, num_classes: int, where: Callable[[int], str]) -> None:
    """Raise DataError naming the first label outside [0, num_classes)."""
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where(i)} has label {int(labels[i])}, outside [0, {num_classes}) "
                        f"(model.num_classes={num_classes})")
