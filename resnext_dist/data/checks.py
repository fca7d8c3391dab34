"""The checks of one dataset file or folder, made before any process group or training step; each loader
(loaders.py) runs those of its kind: a .beton's (only its header and metadata table are read, so this takes well
under a second even for ImageNet), or a torchvision source's (sources.py opens it). Each message is one line
naming the file and, for labels, the first bad one.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from resnext_dist.data.errors import DataError
from resnext_dist.errors import InputError, one_line
from resnext_dist.files import NotRegularFile, fd_path, open_regular
from resnext_dist.data.sources import Source, source_from_spec


def check_beton(path: str, num_classes: int, key: str = "data.train") -> int:
    """The number of images in the .beton at `path`, after checking it; raises DataError."""
    if not path:
        raise DataError(f"{key} is empty: give the path of a .beton file")
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file ({key})")
    try:  # FFCV is optional (launch/setup.sh): without it, a one-line answer
        from resnext_dist.data import ffcv_cache  # noqa: F401  before FFCV: numba's compile from its disk cache
        from ffcv.fields import IntField, RGBImageField
        from ffcv.reader import Reader
    except ImportError as e:
        raise InputError(f"data.loader=ffcv but FFCV cannot be imported ({one_line(e)}); "
                          "install it (launch/setup.sh) or set data.loader=torchvision") from None
    try:
        # A FIFO or device is refused unopened-for-reading; FFCV then reads the very file checked (fd_path).
        with open_regular(path, f"an FFCV .beton ({key})") as f:
            size = os.fstat(f.fileno()).st_size
            reader = Reader(fd_path(f))
    except NotRegularFile as e:
        raise DataError(str(e)) from None
    except Exception as e:  # numpy and FFCV raise many kinds on a file that is not a beton
        raise DataError(f"{path}: not a complete FFCV .beton file ({type(e).__name__}: {one_line(e)})") from None
    if len(reader.metadata) != reader.num_samples or reader.header["alloc_table_ptr"] > size:
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
