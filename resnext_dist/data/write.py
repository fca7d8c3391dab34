"""Write a dataset to an FFCV .beton file: `python -m resnext_dist.data.write`.

    # ImageNet (FFCV's recommendation for ResNet-50-class models: 500 px max side, half JPEG, quality 90)
    python -m resnext_dist.data.write --source imagefolder --input /data/imagenet/train \\
        --output /data/imagenet_train.beton --max-resolution 500 --write-mode proportion \\
        --compress-probability 0.5
    # CIFAR-10/100 as torchvision downloads it (--split val = the test batches)
    python -m resnext_dist.data.write --source cifar --input data/cifar-10-batches-py --split val \\
        --output data/c10_val.beton
    # scikit-learn's digits, upscaled: the quickstart's embedded dataset
    python -m resnext_dist.data.write --source digits --split train --size 32 --output data/digits_train.beton
    # smooth random pictures for benchmarks
    python -m resnext_dist.data.write --source synthetic --num-images 4096 --num-classes 100 --size 350 \\
        --output bench.beton

The file has two fields, `image` (RGBImageField) and `label` (IntField), in the source's order; the class
names (label k is the k-th) go beside it, to x.classes.json for x.beton ({"classes": [...]}).
A progress bar shows on a terminal (not in logs or pipes).
It is written to a temporary file next to the output and renamed at the end, so the output path never
holds a half-written file; an existing output is kept unless --force is given. One writer per output: a second
writer of the same file exits 2 at once naming the first (its host and pid), which goes on undisturbed.

Bad input exits 2 with one line naming the file: a missing or empty source, a class folder with no
images, an unreadable CIFAR batch, an existing output or one that cannot be written (said before any work), a
full disk ("no space left on device writing X"). A FIFO or device among the images is named, never read.
A corrupt image is fatal by default: the write stops at the first one found, names it, and leaves nothing
behind (remove or fix the file and run again). With --skip-corrupt every image is decoded once before
writing; unreadable ones are left out, counted and listed on stderr (the labels of the others are unchanged).
Ctrl-C (SIGINT) or SIGTERM stops the write at once (exit 130 / 143): the writer processes are ended and
the temporary file removed. A writer process that dies ends the write instead of hanging it.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from resnext_dist.commandline import HelpFormatter, command_name
from resnext_dist.data.errors import CorruptImage, DataError
from resnext_dist.data.beton_writer import (MAX_SIDE, Failure, GuardedEncode, GuardedSource, WriteInterrupted,
                                            disk_message, stop_on_signals, writer_class)
from resnext_dist.data.sources import SPLITS, Source, open_source, write_class_names
from resnext_dist.errors import InputError
from resnext_dist.exclusive import ExclusiveLock, holder
from resnext_dist.files import check_output_file

WRITE_MODES = ("raw", "jpg", "smart", "proportion")
SMART_THRESHOLD = 3 * 256 * 256  # smart mode: JPEG-compress images whose raw pixels exceed 256x256 RGB


def write_beton(source: Source, output: str, *, write_mode: str = "smart", max_resolution: Optional[int] = None,
                jpeg_quality: int = 90, compress_probability: float = 0.5, smart_threshold: int = SMART_THRESHOLD,
                workers: int = 0, indices: Optional[Sequence[int]] = None, chunk_size: int = 100,
                page_size: int = 0, force: bool = False, skip_corrupt: bool = False,
                classes: Optional[List[str]] = None) -> int:
    """Write `source` (or its `indices`) to `output`, and `classes` beside it when given (write_class_names), as the
    output's one writer (BetonLock); returns the number of images written."""
    _check_options(write_mode, max_resolution, jpeg_quality, compress_probability, chunk_size, page_size)
    output = os.path.abspath(output)
    check_output_file(output, "--output")  # before any work: a folder we cannot write is said at once
    workers = workers if workers > 0 else len(os.sched_getaffinity(0))
    indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        raise DataError(f"{source.name}: no images to write")
    with BetonLock(output):  # from the exists-check to the class names: no other writer in between
        if os.path.exists(output) and not force:
            raise DataError(f"{output}: already exists (pass --force to overwrite)")
        if skip_corrupt:
            bad = find_unreadable(source, indices, workers)
            if bad:
                print(f"skipped {len(bad)} unreadable image(s) of {len(indices)}:", file=sys.stderr)
                for _, message in bad[:20]:
                    print(f"  {message}", file=sys.stderr)
                indices = np.setdiff1d(indices, [i for i, _ in bad])
                if len(indices) == 0:
                    raise DataError(f"{source.name}: every image is unreadable")
        _write(source, output, indices, workers, page_size or auto_page_size(source, max_resolution), chunk_size,
               write_mode=write_mode, max_resolution=max_resolution or None, smart_threshold=smart_threshold,
               jpeg_quality=jpeg_quality, compress_probability=compress_probability)
        if classes is not None:
            write_class_names(output, classes)  # a beton holds integer labels only
    return len(indices)


class BetonLock(ExclusiveLock):
    """The one writer of a .beton: `.NAME.lock` beside it, removed when the write ends; a second writer exits 2
    naming the first (exclusive.py)."""

    error = DataError

    def __init__(self, output: str):
        self.output = output
        super().__init__(os.path.join(os.path.dirname(output), f".{os.path.basename(output)}.lock"), remove=True)

    def in_use_message(self, lease: dict) -> str:
        return (f"{self.output}: being written by {holder(lease)}; wait for that writer to end or stop it, or "
                "choose another --output")


def _write(source: Source, output: str, indices: np.ndarray, workers: int, page_size: int, chunk_size: int,
           **image_options) -> None:
    """The FFCV write itself, to a temporary file renamed onto `output` at the end (beton_writer.py guards it)."""
    from resnext_dist.data import ffcv_cache  # noqa: F401  before FFCV: numba's compile from its disk cache
    from ffcv.fields import IntField, RGBImageField

    tmp = os.path.join(os.path.dirname(output), f".{os.path.basename(output)}.{os.getpid()}.tmp")
    failure = Failure()
    image_field = RGBImageField(**image_options)
    guarded = GuardedSource(source, failure, image_options["max_resolution"])
    # An instance attribute: the field's type (what the beton records) stays RGBImageField.
    image_field.encode = GuardedEncode(image_field, page_size, guarded)
    try:
        with stop_on_signals():
            writer = writer_class()(tmp, {"image": image_field, "label": IntField()}, page_size=page_size,
                                     num_workers=min(workers, len(indices)), failure=failure, output=output)
            writer.from_indexed_dataset(guarded, indices=list(indices), chunksize=chunk_size)
            failure.raise_if_any()
            os.replace(tmp, output)
    except OSError as e:  # the main process's own writes (header, metadata, allocation table) on a full disk
        if e.errno is None:
            raise
        raise DataError(disk_message(e, output)) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def auto_page_size(source: Source, max_resolution: Optional[int]) -> int:
    """FFCV's 8 MiB pages, or 2 MiB ones (its minimum) when every image is known to be small: each
    writer process leaves one page partly empty, which matters for small datasets only."""
    sides = [s for s in (source.image_size, max_resolution) if s]
    return 2 * 2**20 if sides and 3 * min(sides) ** 2 <= 2**19 else 8 * 2**20


_check_source: Optional[Source] = None  # --skip-corrupt decodes every image once, in parallel: each process's source


def _init_check(source: Source) -> None:
    global _check_source
    _check_source = source


def _check_chunk(chunk: np.ndarray) -> List[Tuple[int, str]]:
    bad = []
    for i in chunk:
        try:
            _check_source[int(i)]
        except CorruptImage as e:
            bad.append((int(i), str(e)))
    return bad


def find_unreadable(source: Source, indices: np.ndarray, workers: int) -> List[Tuple[int, str]]:
    """(index, message) for every image of `indices` that does not decode."""
    chunks = np.array_split(indices, max(1, len(indices) // 256))
    bad: List[Tuple[int, str]] = []
    with mp.Pool(workers, initializer=_init_check, initargs=(source,)) as pool, \
            tqdm(total=len(indices), desc="checking images", unit="img", disable=None) as bar:
        for chunk, found in zip(chunks, pool.imap(_check_chunk, chunks)):
            bad.extend(found)
            bar.update(len(chunk))
    return bad


def _check_options(write_mode, max_resolution, jpeg_quality, compress_probability, chunk_size, page_size) -> None:
    if write_mode not in WRITE_MODES:
        raise DataError(f"write mode {write_mode!r} must be one of {', '.join(WRITE_MODES)}")
    if max_resolution is not None and not 0 <= max_resolution <= MAX_SIDE:
        raise DataError(f"max resolution {max_resolution} must be in [0, {MAX_SIDE}] (0 = keep the source size)")
    if not 1 <= jpeg_quality <= 100:
        raise DataError(f"JPEG quality {jpeg_quality} must be in [1, 100]")
    if not 0.0 <= compress_probability <= 1.0:
        raise DataError(f"compress probability {compress_probability} must be in [0, 1]")
    if chunk_size < 1:
        raise DataError(f"chunk size {chunk_size} must be >= 1")
    if page_size and (page_size < 2**21 or page_size >= 2**32 or page_size & (page_size - 1)):
        raise DataError(f"page size {page_size} bytes must be a power of two from 2 MiB to 2 GiB")


def subset_indices(num_images: int, subset: int, seed: int) -> np.ndarray:
    """`subset` images drawn without replacement (seeded), kept in source order; all if subset >= len."""
    if subset >= num_images:
        return np.arange(num_images)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_images, size=subset, replace=False))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=command_name("resnext_dist.data.write"),
                                description=__doc__.split("\n\n")[0].strip(),
                                epilog="Bad input exits 2 with one line naming the file. A corrupt image is fatal "
                                       "(named; nothing is written) unless --skip-corrupt is given.",
                                formatter_class=HelpFormatter)
    p.add_argument("--source", required=True, choices=("imagefolder", "cifar", "digits", "synthetic"),
                   help="what to read")
    p.add_argument("--input", default="", help="imagefolder: the class-folder root; cifar: the python folder")
    p.add_argument("--output", required=True, help="the .beton file to write")
    p.add_argument("--split", default=None, choices=SPLITS,
                   help="cifar/digits: which split (default train); imagefolder: read INPUT/SPLIT")
    p.add_argument("--size", type=int, default=None, help="digits/synthetic: image side in px (32 / 64)")
    p.add_argument("--num-images", type=int, default=1000, help="synthetic: number of images")
    p.add_argument("--num-classes", type=int, default=10, help="synthetic: number of classes")
    p.add_argument("--max-resolution", type=int, default=0, help="shrink images so the longer side is at most "
                   "this (0 = keep)")
    p.add_argument("--write-mode", default="smart", choices=WRITE_MODES,
                   help="raw pixels, JPEG, smart (JPEG only above --smart-threshold bytes), or proportion "
                        "(JPEG with --compress-probability)")
    p.add_argument("--smart-threshold", type=int, default=SMART_THRESHOLD, help="smart: raw size in bytes "
                   "above which an image is JPEG-compressed")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality (1-100)")
    p.add_argument("--compress-probability", type=float, default=0.5, help="proportion: fraction stored as JPEG")
    p.add_argument("--workers", type=int, default=0, help="writer processes (0 = all cores)")
    p.add_argument("--chunk-size", type=int, default=100, help="images per work item")
    p.add_argument("--page-size", type=int, default=0, help="beton page size in MiB, a power of two >= 2 "
                   "(0 = 8, or 2 when all images are known to be small); the largest stored image must fit")
    p.add_argument("--subset", type=int, default=0, help="write only this many images, drawn at random (seeded) "
                   "and kept in source order (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed for --subset, synthetic images and proportion mode")
    p.add_argument("--skip-corrupt", action="store_true", help="check every image first and leave out "
                   "unreadable ones (default: the first unreadable image is fatal)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.source in ("imagefolder", "cifar") and not args.input:
            raise DataError(f"--source {args.source} needs --input")
        if args.subset < 0:
            raise DataError(f"--subset {args.subset} must be >= 0")
        path = args.input
        if args.source == "imagefolder" and args.split:
            path = os.path.join(args.input, args.split)
        size = args.size or (32 if args.source == "digits" else 64)
        source = open_source(args.source, path, split=args.split or "train", size=size,
                             num_images=args.num_images, num_classes=args.num_classes, seed=args.seed)
        indices = subset_indices(len(source), args.subset, args.seed) if args.subset else None
        np.random.seed(args.seed)  # proportion mode draws with np.random in the (forked) workers
        n = write_beton(source, args.output, write_mode=args.write_mode, max_resolution=args.max_resolution,
                        jpeg_quality=args.jpeg_quality, compress_probability=args.compress_probability,
                        smart_threshold=args.smart_threshold, workers=args.workers, indices=indices,
                        chunk_size=args.chunk_size, page_size=args.page_size * 2**20, force=args.force,
                        skip_corrupt=args.skip_corrupt, classes=source.classes)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WriteInterrupted as e:
        print(f"resnext_dist.data.write: {e}; nothing written to {args.output}", file=sys.stderr)
        return 128 + e.signum
    size_mb = os.path.getsize(args.output) / 2**20
    print(f"wrote {n} images ({len(source.classes)} classes) to {args.output} ({size_mb:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
