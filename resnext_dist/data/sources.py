"""Image sources: what the beton writer reads and what the torchvision fallback loads.

A source is an indexable set of labelled RGB images:

    len(src); src[i] -> (H x W x 3 uint8 array, int label); src.pil(i) -> PIL RGB image
    src.labels (int64 array, known without decoding), src.classes (names), src.name (for messages),
    src.describe(i) (the file or record image i comes from)

Kinds: an ImageFolder tree (root/<class>/<image>, ImageNet's layout), CIFAR-10/100 in the python-pickle
layout torchvision downloads (cifar-10-batches-py/, cifar-100-python/), scikit-learn's 8x8 handwritten
digits upscaled to RGB (the quickstart's embedded dataset), and smooth random images (benchmarks).

Opening a source checks its structure and raises `DataError` naming the path: a missing or empty
directory, a class folder without images, a missing or unreadable CIFAR batch. Images are decoded only
when asked for, so a corrupt file shows up then, as `CorruptImage` naming the file.
"""
from __future__ import annotations

import os
import pickle
from typing import List, Optional

import numpy as np
from PIL import Image

from resnext_dist.data.errors import CorruptImage, DataError
from resnext_dist.errors import one_line
from resnext_dist.files import NotRegularFile, atomic_write, open_regular

SPLITS = ("train", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


class Source:
    """Common behaviour; subclasses set name, classes, labels and implement `image(i)` or `pil(i)`."""

    name: str
    classes: List[str]
    labels: np.ndarray
    image_size: Optional[int] = None  # the side of every image when they are all the same square size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.image(i), int(self.labels[i])

    def image(self, i: int) -> np.ndarray:
        return np.asarray(self.pil(i))

    def pil(self, i: int) -> Image.Image:
        return Image.fromarray(self.image(i))

    def describe(self, i: int) -> str:
        return f"{self.name} image {i}"


class ImageFolderSource(Source):
    """root/<class>/<image>; classes are the sorted sub-folders (hidden ones skipped), as in torchvision."""

    def __init__(self, root: str):
        from torchvision.datasets.folder import make_dataset

        self.name = root
        if not os.path.exists(root):
            raise DataError(f"{root}: no such directory")
        if not os.path.isdir(root):
            raise DataError(f"{root}: not a directory (expected an ImageFolder tree root/<class>/<image>)")
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not self.classes:
            raise DataError(f"{root}: no class folders (expected an ImageFolder tree root/<class>/<image>)")
        class_to_idx = {c: i for i, c in enumerate(self.classes)}
        samples = make_dataset(root, class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True)
        self.paths = [p for p, _ in samples]
        self.labels = np.array([y for _, y in samples], dtype=np.int64)
        counts = np.bincount(self.labels, minlength=len(self.classes))
        if (counts == 0).any():
            empty = self.classes[int(np.argmin(counts))]
            raise DataError(f"{os.path.join(root, empty)}: class folder has no images "
                            f"(looked for {', '.join(IMAGE_EXTENSIONS)})")

    def pil(self, i: int) -> Image.Image:
        return read_image(self.paths[i])

    def describe(self, i: int) -> str:
        return self.paths[i]


def read_image(path: str) -> Image.Image:
    """The image in the file `path` as RGB, fully decoded (a truncated file fails here, not later); CorruptImage
    naming it when it does not decode or is no regular file (a FIFO named x.jpg is refused, never waited on)."""
    try:
        with open_regular(path, "an image file") as f, Image.open(f) as im:
            return im.convert("RGB")
    except NotRegularFile as e:
        raise CorruptImage(str(e)) from None
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise CorruptImage(f"{path}: unreadable image ({one_line(e)})") from None


_CIFAR = {  # kind: (train files, val files, meta file, label key, names key)
    "cifar10": ([f"data_batch_{k}" for k in range(1, 6)], ["test_batch"], "batches.meta", "labels", "label_names"),
    "cifar100": (["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


def cifar_kind(root: str) -> Optional[str]:
    """'cifar10' | 'cifar100' if `root` looks like a CIFAR python folder, else None."""
    if os.path.isfile(os.path.join(root, "data_batch_1")) or os.path.isfile(os.path.join(root, "test_batch")):
        return "cifar10"
    if os.path.isfile(os.path.join(root, "meta")) and (os.path.isfile(os.path.join(root, "train"))
                                                       or os.path.isfile(os.path.join(root, "test"))):
        return "cifar100"
    return None


class CifarSource(Source):
    """CIFAR-10 (data_batch_1..5 / test_batch) or CIFAR-100 (train / test) in the python-pickle layout; split 'val'
    is the test set. The files are pickles: open only folders you trust."""

    def __init__(self, root: str, split: str = "train"):
        if split not in SPLITS:
            raise DataError(f"{root}: split {split!r} must be one of {', '.join(SPLITS)}")
        if not os.path.isdir(root):
            raise DataError(f"{root}: no such directory" if not os.path.exists(root) else f"{root}: not a directory")
        kind = cifar_kind(root)
        if kind is None:
            raise DataError(f"{root}: not a CIFAR-10/100 python folder (no data_batch_1, test_batch or meta+train)")
        train_files, val_files, meta_file, label_key, names_key = _CIFAR[kind]
        images, labels = [], []
        for fname in train_files if split == "train" else val_files:
            batch = _load_pickle(os.path.join(root, fname))
            try:
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                y = np.asarray(batch[label_key], dtype=np.int64)
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"{os.path.join(root, fname)}: not a CIFAR batch ({one_line(e)})") from None
            if len(y) != len(data):
                raise DataError(f"{os.path.join(root, fname)}: {len(data)} images but {len(y)} labels")
            images.append(data.transpose(0, 2, 3, 1))
            labels.append(y)
        self.name = root
        self.kind = kind
        self.image_size = 32
        self.images = np.ascontiguousarray(np.concatenate(images))
        self.labels = np.concatenate(labels)
        if len(self.labels) == 0:
            raise DataError(f"{root}: CIFAR {split} split has no images")
        meta_path = os.path.join(root, meta_file)
        names = _load_pickle(meta_path).get(names_key) if os.path.isfile(meta_path) else None
        self.classes = list(names) if names else [str(k) for k in range(int(self.labels.max()) + 1)]

    def image(self, i: int) -> np.ndarray:
        return self.images[i]

    def describe(self, i: int) -> str:
        return f"{self.name} ({self.kind}) image {i}"


def _load_pickle(path: str) -> dict:
    try:
        with open_regular(path, "a CIFAR file") as f:
            obj = pickle.load(f, encoding="latin1")  # written by Python 2
    except FileNotFoundError:
        raise DataError(f"{path}: missing CIFAR file") from None
    except NotRegularFile as e:
        raise DataError(str(e)) from None
    except Exception as e:
        raise DataError(f"{path}: unreadable CIFAR file ({one_line(e)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR file (holds a {type(obj).__name__}, not a dict)")
    return obj


DIGITS_VAL_EVERY = 5  # images 0, 5, 10, ... are the validation split (360 images; 1,437 for training)


class DigitsSource(Source):
    """scikit-learn's digits (1,797 8x8 grey images with 17 levels, shipped with the library) upscaled (bilinear) to
    `size` px RGB; a fixed split: every 5th image is validation."""

    def __init__(self, split: str = "train", size: int = 32):
        from sklearn.datasets import load_digits

        if split not in SPLITS:
            raise DataError(f"digits: split {split!r} must be one of {', '.join(SPLITS)}")
        if size < 8:
            raise DataError(f"digits: size {size} must be >= 8 (the images are 8x8)")
        digits = load_digits()
        is_val = np.arange(len(digits.target)) % DIGITS_VAL_EVERY == 0
        keep = is_val if split == "val" else ~is_val
        # 0..16 grey levels -> 0..255
        self.grey = np.rint(digits.images[keep] * (255.0 / 16.0)).astype(np.uint8)
        self.labels = digits.target[keep].astype(np.int64)
        self.classes = [str(k) for k in range(10)]
        self.size = self.image_size = size
        self.name = f"digits ({split}, {size}px)"

    def pil(self, i: int) -> Image.Image:
        im = Image.fromarray(self.grey[i]).resize((self.size, self.size), Image.BILINEAR)
        return im.convert("RGB")


class SyntheticSource(Source):
    """`num_images` smooth random pictures (they compress and decode like photos, unlike white noise) of `size` px;
    image i depends on (seed, i) only; label = i % num_classes."""

    def __init__(self, num_images: int, num_classes: int, size: int = 64, seed: int = 0):
        if num_images < 1 or num_classes < 1 or size < 1:
            raise DataError(f"synthetic: num_images={num_images}, num_classes={num_classes}, size={size} "
                            "must all be >= 1")
        self.size, self.seed = size, seed
        self.image_size = size
        self.labels = np.arange(num_images, dtype=np.int64) % num_classes
        self.classes = [f"class_{k}" for k in range(num_classes)]
        self.name = f"synthetic ({num_images} images, {size}px)"

    def image(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, i])
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((self.size, self.size), Image.BICUBIC), dtype=np.int16)
        noisy = smooth + rng.integers(-8, 9, smooth.shape, dtype=np.int16)
        return np.clip(noisy, 0, 255).astype(np.uint8)


def open_source(kind: str, path: str = "", split: str = "train", size: int = 32, num_images: int = 0,
                num_classes: int = 0, seed: int = 0) -> Source:
    """The writer's sources by kind: imagefolder (path), cifar (path, split), digits (split, size),
    synthetic (num_images, num_classes, size, seed)."""
    if kind == "imagefolder":
        return ImageFolderSource(path)
    if kind == "cifar":
        return CifarSource(path, split)
    if kind == "digits":
        return DigitsSource(split, size)
    if kind == "synthetic":
        return SyntheticSource(num_images, num_classes, size, seed)
    raise DataError(f"unknown source kind {kind!r}: imagefolder | cifar | digits | synthetic")


def source_from_spec(spec: str, split: str) -> Source:
    """What `data.train` / `data.val` name for the torchvision loader: an ImageFolder directory, a CIFAR
    python folder (split picks its train or test batches), or `digits` / `digits:SIZE` (default 32 px)."""
    if not os.path.exists(spec) and (spec == "digits" or spec.startswith("digits:")):
        size = spec.partition(":")[2] or "32"
        if not size.isdigit():
            raise DataError(f"{spec}: expected digits or digits:SIZE with SIZE in pixels")
        return DigitsSource(split, int(size))
    if os.path.isdir(spec) and cifar_kind(spec):
        return CifarSource(spec, split)
    return ImageFolderSource(spec)


# Class names: label k is named classes[k]. The writer records them beside the .beton (a beton holds integer
# labels only); the trainer copies them into the run directory and its export, and predict prints them.

CLASSES_SUFFIX = ".classes.json"


def class_names_path(beton_path: str) -> str:
    """Where the writer records the class names of `beton_path`: data/x.beton -> data/x.classes.json."""
    root, ext = os.path.splitext(beton_path)
    return (root if ext == ".beton" else beton_path) + CLASSES_SUFFIX


def write_class_names(beton_path: str, classes: List[str]) -> str:
    """Record `classes` beside `beton_path` (atomically); returns the file written."""
    import json

    path = class_names_path(beton_path)
    atomic_write(path, json.dumps({"classes": [str(c) for c in classes]}, indent=1) + "\n")
    return path


def class_names_for(data_path: str) -> Optional[List[str]]:
    """The class names of a dataset, or None when nothing records them: a .beton's recorded names (see
    write_class_names), or those of a torchvision-loader spec (ImageFolder folders, CIFAR meta, digits)
    read without opening any image."""
    import json

    if not data_path:
        return None
    if os.path.isfile(data_path):
        path = class_names_path(data_path)
        if not os.path.lexists(path):  # a FIFO or a directory there is refused below, not taken for "none"
            return None
        try:
            with open_regular(path, "a class names file") as f:
                names = json.load(f)["classes"]
        except NotRegularFile as e:
            raise DataError(str(e)) from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: unreadable class names ({one_line(e)})") from None
        if not isinstance(names, list):
            raise DataError(f"{path}: 'classes' is not a list")
        return [str(c) for c in names]
    if not os.path.exists(data_path) and (data_path == "digits" or data_path.startswith("digits:")):
        return [str(k) for k in range(10)]
    if os.path.isdir(data_path):
        kind = cifar_kind(data_path)
        if kind:
            meta_file, names_key = _CIFAR[kind][2], _CIFAR[kind][4]
            meta_path = os.path.join(data_path, meta_file)
            names = _load_pickle(meta_path).get(names_key) if os.path.isfile(meta_path) else None
            return [str(c) for c in names] if names else None
        return sorted(e.name for e in os.scandir(data_path) if e.is_dir() and not e.name.startswith(".")) or None
    return None
