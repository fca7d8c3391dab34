"""The values of `data.loader`, one entry each (LOADERS): what it requires of the config, how it checks its data,
how it builds its loaders, which class names its data records; and the builders the trainer and evaluate use.
The values of `data.order` (ORDERS): whether the training order reads the file page by page.
Nothing else compares `data.loader`, `data.decode` or `data.order` as a string: the config checks and the export
ask the entry.
Importing it imports no torch (the config checks import it); a loader's module, and torch and FFCV with it, is
imported when that loader is built, so a machine without FFCV can use the others.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, List, Optional

from resnext_dist.data import embedded
from resnext_dist.data.batches import split_for
from resnext_dist.data.errors import DataError
from resnext_dist.errors import InputError


@dataclass
class CheckedData:
    """What a loader's check found, so its builders need not open everything again."""
    train_images: int = 0
    val_images: int = 0
    train_source: Any = None  # torchvision: the opened sources (sources.Source)
    val_source: Any = None


class Loader:
    """A loader of the files data.train and data.val name; each subclass says how it checks and reads them."""
    name = ""
    reads_embedded = False  # the embedded datasets (embedded:digits/...) are .beton files
    decodes_on_device = False  # data.decode=gpu: this loader decodes, crops and flips on the device
    has_pages = False  # its files are read page by page (data.order=pages, data.stage_dir)

    def check_config(self, d) -> None:
        """InputError for keys of the data section `d` this loader cannot work with; opens no file."""
        if not d.train:
            raise InputError(f"data.train is required when data.loader={self.name}")
        for split in ("train", "val"):
            path = getattr(d, split)
            if embedded.is_embedded(path) and not self.reads_embedded:
                raise InputError(f"data.{split}={path!r} is an FFCV dataset: it needs data.loader=ffcv")
        if d.stage_dir and not self.has_pages:
            raise InputError(f"data.stage_dir={d.stage_dir!r} needs data.loader=ffcv (only .beton files are staged)")
        reads_by_page(d, self)
        self._check_decode(d)

    def _check_decode(self, d) -> None:
        if d.decode == "gpu" and (not self.decodes_on_device or d.pad_crop):  # pad_crop has no device form
            raise InputError(f"data.decode=gpu needs data.loader=ffcv and data.pad_crop=0 (got data.loader={d.loader}"
                             f", data.pad_crop={d.pad_crop}); use data.decode=cpu")

    def with_files(self, d):
        """`d` with its embedded names made real files (written on first use, once per machine)."""
        return dataclasses.replace(d, train=embedded.resolve(d.train, "data.train"),
                                   val=embedded.resolve(d.val, "data.val"))

    def staged(self, d):
        """`d` reading the node-local copies data.stage_dir holds (made once per node), or `d` itself."""
        return d

    def check(self, d, num_classes: int, train: bool = True) -> CheckedData:
        """Check data.val, and data.train unless `train` is false; DataError names the first problem."""
        raise NotImplementedError

    def train_loader(self, d, dist, found: CheckedData, seed: int, num_classes: int, channels_last: bool,
                     global_batch: int = 0):
        """This rank's training loader; `global_batch` (0: data.batch_size x world size) is shared out as
        sharding.py says."""
        split = split_for(dist.world_size, d.batch_size, global_batch)
        if found.train_images < split.global_batch:
            raise DataError(f"{d.train}: {found.train_images} images make less than {split.words()}")
        return self._train(d, dist, found, seed, channels_last, global_batch)

    def val_missing(self, d) -> Optional[str]:
        """Why the data section `d` has no validation data, or None when it has."""
        return None if d.val else "data.val is empty: nothing to evaluate on"

    def class_names(self, d) -> Optional[List[str]]:
        """The class names the data records (data.train's, else data.val's), or None."""
        from resnext_dist.data.sources import class_names_for  # numpy, PIL: --help and config errors stay instant
        return class_names_for(d.train) or class_names_for(d.val)


class Ffcv(Loader):
    """FFCV .beton files: the fast path."""
    name, reads_embedded, decodes_on_device, has_pages = "ffcv", True, True, True

    def check_config(self, d):
        super().check_config(d)
        for split in ("train", "val"):  # a folder is the torchvision loader's: say so before FFCV says "not a beton"
            path = getattr(d, split)
            if path and os.path.isdir(path):
                raise InputError(f"data.{split}={path!r} is a folder, not an FFCV .beton: use data.loader=torchvision "
                                 "(or auto, which follows data.train), or write a .beton (python -m "
                                 "resnext_dist.data.write)")

    def staged(self, d):
        if not d.stage_dir:
            return d
        from resnext_dist.data.staging import stage_files  # hashlib, tqdm: only when staging
        return dataclasses.replace(d, **stage_files(d, ("train", "val")))

    def check(self, d, num_classes, train=True):
        from resnext_dist.data.checks import check_beton  # numpy: --help and config errors stay instant
        found = CheckedData(train_images=check_beton(d.train, num_classes, key="data.train") if train else 0)
        found.val_images = check_beton(d.val, num_classes, key="data.val") if d.val else 0
        return found

    def _train(self, d, dist, found, seed, channels_last, global_batch):
        from resnext_dist.data.ffcv import FfcvTrain  # FFCV and torch: only once this loader is built
        by_page = reads_by_page(d, self)
        train = FfcvTrain(d.train, d, dist, seed=seed, channels_last=channels_last, num_images=found.train_images,
                          global_batch=global_batch, by_page=by_page)
        train.reading = {"train": d.train, "val": d.val, "staged": bool(d.stage_dir),  # for the start record
                         "order": "pages" if by_page else "random", "window": d.shuffle_window if by_page else 0}
        return train

    def val_loader(self, d, dist, found, seed, num_classes, channels_last):
        from resnext_dist.data.ffcv import FfcvVal  # FFCV and torch: only once this loader is built
        return FfcvVal(d.val, d, dist, channels_last=channels_last, num_images=found.val_images)


class Torchvision(Loader):
    """An ImageFolder directory, CIFAR batches or the digits (sources.py), through a torch DataLoader."""
    name = "torchvision"

    def check(self, d, num_classes, train=True):
        from resnext_dist.data.checks import check_source  # numpy, PIL: --help and config errors stay instant
        found = CheckedData()
        if train:
            found.train_source = check_source(d.train, "train", num_classes, key="data.train")
            found.train_images = len(found.train_source)
        if d.val:
            val = found.val_source = check_source(d.val, "val", num_classes, key="data.val")
            found.val_images = len(val)
            if train and list(val.classes) != list(found.train_source.classes):
                # ImageFolder labels come from folder names: other classes would mislabel silently
                ours = list(found.train_source.classes)
                diff = next((f"{a!r} vs {b!r}" for a, b in zip(val.classes, ours) if a != b),
                            f"{len(val.classes)} vs {len(ours)} classes")
                raise DataError(f"{d.val}: classes differ from those of {d.train} ({diff})")
        return found

    def _train(self, d, dist, found, seed, channels_last, global_batch):
        from resnext_dist.data.torchvision import TorchvisionTrain  # torch: only once this loader is built
        return TorchvisionTrain(found.train_source, d, dist, seed=seed, channels_last=channels_last,
                                global_batch=global_batch)

    def val_loader(self, d, dist, found, seed, num_classes, channels_last):
        from resnext_dist.data.torchvision import TorchvisionVal  # torch: only once this loader is built
        return TorchvisionVal(found.val_source, d, dist, channels_last=channels_last)


class Synthetic(Loader):
    """Random images made on the device, for benchmarks and tests: no files (data.train and data.val are ignored),
    nothing to decode (data.decode is ignored)."""
    name, decodes_on_device = "synthetic", True

    def check_config(self, d):
        self._check_decode(d)

    def with_files(self, d):
        return d

    def check(self, d, num_classes, train=True):
        return CheckedData(train_images=d.synthetic_size, val_images=d.val_synthetic_size)

    def train_loader(self, d, dist, found, seed, num_classes, channels_last, global_batch=0):
        from resnext_dist.data.synthetic import SyntheticTrain  # torch: only once this loader is built
        return SyntheticTrain(d, dist, seed=seed, num_classes=num_classes, channels_last=channels_last,
                              global_batch=global_batch)

    def val_missing(self, d):
        return None if d.val_synthetic_size else f"data.val_synthetic_size={d.val_synthetic_size}: no validation images"

    def val_loader(self, d, dist, found, seed, num_classes, channels_last):
        from resnext_dist.data.synthetic import SyntheticVal  # torch: only once this loader is built
        return SyntheticVal(d, dist, seed=seed, num_classes=num_classes, channels_last=channels_last)

    def class_names(self, d):
        return None


LOADERS = {entry.name: entry for entry in (Ffcv(), Torchvision(), Synthetic())}
AUTO = "auto"  # data.loader's default: the loader data.train's kind asks for (loader_name_for)


class _Choices:
    """data.loader's values: auto, then the registry's as it is now (a loader added later is a choice at once)."""

    def __iter__(self):
        return iter((AUTO, *LOADERS))

    def __contains__(self, name) -> bool:
        return name == AUTO or name in LOADERS


CHOICES = _Choices()
# model.num_classes=0 (its default): the data's class count; random images have none, so ImageNet's
SYNTHETIC_CLASSES = 1000


def loader_name_for(d, data_required: bool = False) -> str:
    """data.loader, with `auto` made the loader data.train's kind asks for: a .beton or the embedded data -> ffcv,
    a folder or digits[:SIZE] -> torchvision; where data.train is empty, synthetic for a config that trains nothing
    (a library caller's defaults), an error naming data.train for one that trains (`data_required`: the train and
    submit commands): random images are had only by asking, never instead of data forgotten. InputError naming
    data.train when it is none of these."""
    if d.loader != AUTO:
        return d.loader
    path = d.train
    if not path and data_required:
        raise InputError("data.train is empty: set data.train=PATH, or data.loader=synthetic for random images")
    if not path:
        return Synthetic.name
    if embedded.is_embedded(path) or path.endswith(".beton"):
        return Ffcv.name
    if os.path.isdir(path) or (not os.path.exists(path) and (path == "digits" or path.startswith("digits:"))):
        return Torchvision.name
    what = "no such file or folder" if not os.path.exists(path) else "neither a .beton file nor a folder"
    raise InputError(f"data.train={path!r}: {what} (data.loader=auto follows data.train: a .beton -> ffcv, an "
                     "ImageFolder or CIFAR folder -> torchvision, embedded:digits/train)")


def data_class_names(d) -> Optional[List[str]]:
    """The class names the data of the section `d` records (data.loader resolved), or None (synthetic data, a
    .beton without its classes.json). Reads no image: the writer's classes.json, the folder's class folders."""
    if d.loader == Synthetic.name:
        return None
    names = [embedded.class_names(path, f"data.{split}") for split, path in (("train", d.train), ("val", d.val))
             if embedded.is_embedded(path)]
    if names:  # known without writing the files
        return names[0]
    from resnext_dist.data.sources import class_names_for  # numpy, PIL: only where the data has files
    try:
        return class_names_for(d.train) or class_names_for(d.val)
    except DataError as e:  # an unreadable classes.json: one line, exit 2
        raise InputError(str(e)) from None


def _pages(d, loader: Loader) -> bool:
    if not loader.has_pages:
        raise InputError(f"data.order=pages needs data.loader=ffcv (got data.loader={d.loader}): only a .beton has "
                         "pages")
    return True


# data.order -> (the data section, its loader entry) -> read the training order page by page? auto does where FFCV
# reads through its own page cache (os_cache=false), which holds each page from its first to its last use in the
# epoch: with a plain shuffle that is nearly every page at once (sharding.epoch_permutation).
ORDERS = {
    "auto": lambda d, loader: loader.has_pages and not d.os_cache,
    "random": lambda d, loader: False,
    "pages": _pages,
}


def reads_by_page(d, loader: Optional[Loader] = None) -> bool:
    """Whether the data section `d`'s training order is the page-friendly one; InputError where it cannot be."""
    return ORDERS[d.order](d, loader or loader_for(d))


def loader_for(d) -> Loader:
    """The entry of the data section `d`'s data.loader."""
    name = loader_name_for(d)
    if name not in LOADERS:
        raise InputError(f"data.loader={d.loader!r}: must be one of {', '.join(CHOICES)}")
    return LOADERS[name]


def check_dataset(d, num_classes: int) -> CheckedData:
    """Check data.train and data.val for data.loader; raise DataError naming the first problem."""
    return loader_for(d).check(d, num_classes)


def build_loaders(d, dist, *, seed: int, num_classes: int, channels_last: bool, global_batch: int = 0):
    """(train, val or None) for this rank; raises DataError / InputError (exit 2) on bad data or config.
    `global_batch`: images per optimizer step over all ranks (0: data.batch_size x world size)."""
    loader = loader_for(d)
    d = loader.staged(loader.with_files(d))
    found = loader.check(d, num_classes)
    train = loader.train_loader(d, dist, found, seed, num_classes, channels_last, global_batch)
    return train, build_val_loader(d, dist, seed=seed, num_classes=num_classes, channels_last=channels_last,
                                   found=found)


def build_val_loader(d, dist, *, seed: int, num_classes: int, channels_last: bool,
                     found: Optional[CheckedData] = None, required: bool = False):
    """This rank's validation loader, or None when the config has none (InputError saying so when `required`).
    `found`: what build_loaders' check found; without it only the validation data is checked."""
    loader = loader_for(d)
    if loader.val_missing(d):
        if required:
            raise InputError(loader.val_missing(d))
        return None
    if found is None:  # build_loaders passes the section it staged; alone, only data.val is staged
        d = loader.staged(dataclasses.replace(loader.with_files(d), train=""))
    found = found or loader.check(d, num_classes, train=False)
    return loader.val_loader(d, dist, found, seed, num_classes, channels_last)
