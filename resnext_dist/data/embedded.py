"""The embedded dataset: scikit-learn's handwritten digits as FFCV .beton files, made on first use.

A config names it with a symbolic path instead of a file, so a recipe works on a fresh clone from any directory:

    data:
      loader: ffcv
      train: embedded:digits/train
      val: embedded:digits/val

`resolve(path)` turns those into the files of a per-user cache outside the repository (`cache_dir()`), writing them
the first time (`ensure_digits()`): one process of a machine writes while the others wait on a file lock, and each
file is renamed into place, so nodes sharing a home directory never see half a file, whichever of them writes first.
Any other path is left as it is (a relative path is relative to the working directory).

Importing this module is cheap (no torch, no FFCV): the writer is imported only when a file must be made.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
from typing import Tuple

from resnext_dist.errors import InputError

PREFIX = "embedded:"
DIGITS_SIZE = 16  # px: the quickstart's resolution (8x8 digits upscaled, RGB)
# The file names carry the format, so a change of size or writer makes new files instead of reusing old ones.
_FILES = {"digits/train": f"digits{DIGITS_SIZE}_raw_train.beton", "digits/val": f"digits{DIGITS_SIZE}_raw_val.beton"}
NAMES = tuple(PREFIX + name for name in _FILES)


def is_embedded(path: str) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def cache_dir() -> str:
    """Where the embedded data lives: per user, outside the repository."""
    if os.environ.get("RESNEXT_DIST_CACHE"):
        return os.path.abspath(os.environ["RESNEXT_DIST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "resnext_dist")


def ensure_digits(cache: str = None) -> Tuple[str, str]:
    """(train_path, val_path) of the digits .beton files in `cache` (default `cache_dir()`), written once."""
    cache = os.path.abspath(cache or cache_dir())
    paths = tuple(os.path.join(cache, _FILES[f"digits/{split}"]) for split in ("train", "val"))
    if all(os.path.isfile(p) for p in paths):
        return paths  # the common case: no lock, no import
    try:
        os.makedirs(cache, exist_ok=True)
        lock = open(os.path.join(cache, ".digits.lock"), "a")
    except OSError as e:
        raise InputError(f"cannot create the embedded-data cache {cache}: {e.strerror} "
                         f"(set RESNEXT_DIST_CACHE to a writable folder)") from None
    with lock:
        # Blocks while another process of this machine writes; it releases when that one is done (or dies).
        fcntl.flock(lock, fcntl.LOCK_EX)
        for split, path in zip(("train", "val"), paths):
            if not os.path.isfile(path):  # made by the process we waited for, or by another node
                _write_digits(split, path)
    return paths


def _write_digits(split: str, path: str) -> None:
    from resnext_dist.data.sources import class_names_for, open_source, write_class_names
    from resnext_dist.data.write import write_beton

    print(f"resnext_dist: writing the embedded digits ({split}) to {path} (once per machine)",
          file=sys.stderr, flush=True)
    # A name unique to this host and process: a node sharing the folder that writes at the same moment
    # renames its own complete file; both are the same bytes.
    staged = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{socket.gethostname()}.{os.getpid()}")
    try:
        write_beton(open_source("digits", split=split, size=DIGITS_SIZE), staged, write_mode="raw", workers=1,
                    force=True)
        write_class_names(path, class_names_for("digits"))  # before the data: a found .beton has its names
        os.replace(staged, path)
    finally:
        if os.path.exists(staged):
            os.remove(staged)


def class_names(path: str, key: str = "data path"):
    """The class names of the embedded dataset `path`, known without writing its files; InputError naming `key`
    for a name that is none of ours."""
    if path not in NAMES:
        raise InputError(f"{key}={path!r}: no such embedded dataset; known: {', '.join(NAMES)}")
    return [str(k) for k in range(10)]


def resolve(path: str, key: str = "data path") -> str:
    """The file behind `path`: an embedded dataset's cached file (made if needed), else `path` itself."""
    if not is_embedded(path):
        return path
    if path not in NAMES:
        raise InputError(f"{key}={path!r}: no such embedded dataset; known: {', '.join(NAMES)}")
    train, val = ensure_digits()
    return train if path.endswith("/train") else val
