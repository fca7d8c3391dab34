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
holds a half-written file; an existing output is kept unless --force is given.

Bad input exits 2 with one line naming the file: a missing or empty source, a class folder with no
images, an unreadable CIFAR batch, an existing output, a full disk ("no space left on device writing X").
A corrupt image is fatal by default: the write stops at the first one found, names it, and leaves nothing
behind (remove or fix the file and run again). With --skip-corrupt every image is decoded once before
writing; unreadable ones are left out, counted and listed on stderr (the labels of the others are unchanged).
Ctrl-C (SIGINT) or SIGTERM stops the write at once (exit 130 / 143): the writer processes are ended and
the temporary file removed. A writer process that dies ends the write instead of hanging it.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from resnext_dist.data.errors import CorruptImage, DataError
from resnext_dist.errors import one_line
from resnext_dist.data.sources import SPLITS, Source, open_source, write_class_names

WRITE_MODES = ("raw", "jpg", "smart", "proportion")
SMART_THRESHOLD = 3 * 256 * 256  # smart mode: JPEG-compress images whose raw pixels exceed 256x256 RGB
MAX_SIDE = 65535  # the beton stores width and height as uint16


def write_beton(source: Source, output: str, *, write_mode: str = "smart", max_resolution: Optional[int] = None,
                jpeg_quality: int = 90, compress_probability: float = 0.5, smart_threshold: int = SMART_THRESHOLD,
                workers: int = 0, indices: Optional[Sequence[int]] = None, chunk_size: int = 100,
                page_size: int = 0, force: bool = False, skip_corrupt: bool = False) -> int:
    """Write `source` (or its `indices`) to `output`; returns the number of images written."""
    from ffcv.fields import IntField, RGBImageField

    _check_options(write_mode, max_resolution, jpeg_quality, compress_probability, chunk_size, page_size)
    output = os.path.abspath(output)
    if os.path.isdir(output):
        raise DataError(f"{output}: is a directory, expected a .beton file path")
    if os.path.exists(output) and not force:
        raise DataError(f"{output}: already exists (pass --force to overwrite)")
    workers = workers if workers > 0 else len(os.sched_getaffinity(0))
    indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        raise DataError(f"{source.name}: no images to write")
    if skip_corrupt:
        bad = find_unreadable(source, indices, workers)
        if bad:
            print(f"skipped {len(bad)} unreadable image(s) of {len(indices)}:", file=sys.stderr)
            for _, message in bad[:20]:
                print(f"  {message}", file=sys.stderr)
            indices = np.setdiff1d(indices, [i for i, _ in bad])
            if len(indices) == 0:
                raise DataError(f"{source.name}: every image is unreadable")

    os.makedirs(os.path.dirname(output), exist_ok=True)
    tmp = os.path.join(os.path.dirname(output), f".{os.path.basename(output)}.{os.getpid()}.tmp")
    page_size = page_size or auto_page_size(source, max_resolution)
    failure = _Failure()
    image_field = RGBImageField(write_mode=write_mode, max_resolution=max_resolution or None,
                                smart_threshold=smart_threshold, jpeg_quality=jpeg_quality,
                                compress_probability=compress_probability)
    guarded = _GuardedSource(source, failure, max_resolution)
    # An instance attribute: the field's type (what the beton records) stays RGBImageField.
    image_field.encode = _GuardedEncode(image_field, page_size, guarded)
    try:
        with _stop_on_signals():
            writer = _writer_class()(tmp, {"image": image_field, "label": IntField()}, page_size=page_size,
                                     num_workers=min(workers, len(indices)), failure=failure, output=output)
            writer.from_indexed_dataset(guarded, indices=list(indices), chunksize=chunk_size)
            failure.raise_if_any()
            os.replace(tmp, output)
    except OSError as e:  # the main process's own writes (header, metadata, allocation table) on a full disk
        if e.errno is None:
            raise
        raise DataError(_disk_message(e, output)) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return len(indices)


def auto_page_size(source: Source, max_resolution: Optional[int]) -> int:
    """FFCV's 8 MiB pages, or 2 MiB ones (its minimum) when every image is known to be small: each
    writer process leaves one page partly empty, which matters for small datasets only."""
    sides = [s for s in (source.image_size, max_resolution) if s]
    return 2 * 2**20 if sides and 3 * min(sides) ** 2 <= 2**19 else 8 * 2**20


# ----------------------------------------------------------------------------------------------
# No exception may leave a writer worker: its page would never be written and the other workers would spin
# waiting for it. So failures are recorded in shared memory and the worker writes a 1-pixel placeholder
# instead; the main process sees the recorded failure (see _writer_class below), ends the workers, raises the
# recorded error and discards the file.

_PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)


class _Failure:
    """The first failure of any writer worker: 0 none, 1 bad input (exit 2), 2 a bug (a crash), 3 the disk
    (full, read-only: exit 2, the message is the whole line)."""

    def __init__(self):
        self.state = mp.Value(ctypes.c_int, 0)
        self.message = mp.Array(ctypes.c_char, 4096)

    def record(self, state: int, message: str) -> None:
        with self.state.get_lock():
            if not self.state.value:
                self.message.value = message.encode("utf-8", "replace")[:4095]
                self.state.value = state

    @property
    def failed(self) -> bool:
        return bool(self.state.value)

    def raise_if_any(self) -> None:
        message = self.message.value.decode("utf-8", "replace")
        if self.state.value == 1:
            raise CorruptImage(message)
        if self.state.value == 2:
            raise RuntimeError(f"writing failed at {message}")
        if self.state.value == 3:
            raise DataError(message)


class _GuardedSource:
    """The source as the writer workers read it: decode failures recorded, not raised."""

    def __init__(self, source: Source, failure: _Failure, max_resolution: Optional[int]):
        self.source, self.failure, self.max_resolution = source, failure, max_resolution
        self.current = -1  # the image this worker process is writing (for messages)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, int]:
        self.current = i
        if not self.failure.failed:
            try:
                image, label = self.source[i]
                side = max(image.shape[:2])
                if min(side, self.max_resolution or side) > MAX_SIDE:
                    raise CorruptImage(f"{self.source.describe(i)}: {image.shape[1]}x{image.shape[0]} px is more "
                                       f"than a beton stores ({MAX_SIDE} px a side); use --max-resolution")
                return image, label
            except CorruptImage as e:
                self.failure.record(1, str(e))
            except Exception as e:
                self.failure.record(2, f"{self.source.describe(i)}: {type(e).__name__}: {one_line(e)}")
        return _PLACEHOLDER, 0


class _TooLarge(Exception):
    pass


class _GuardedEncode:
    """RGBImageField.encode with a size check before FFCV's allocator (which raises in the worker when
    an image is larger than a page) and failures recorded instead of raised."""

    def __init__(self, field, page_size: int, guarded: _GuardedSource):
        self.field, self.page_size, self.guarded = field, page_size, guarded

    def __call__(self, destination, image, malloc):
        from ffcv.fields import RGBImageField

        def bounded_malloc(size):
            if size > self.page_size:
                raise _TooLarge(size)
            return malloc(size)

        try:
            return RGBImageField.encode(self.field, destination, image, bounded_malloc)
        except MemoryError:  # FFCV's "start a fresh page and retry" signal
            raise
        except _TooLarge as e:
            what = self.guarded.source.describe(self.guarded.current)
            self.guarded.failure.record(1, f"{what}: needs {e.args[0]} bytes, more than the {self.page_size >> 20} "
                                           "MiB page size; use --max-resolution or a larger --page-size")
        except Exception as e:
            what = self.guarded.source.describe(self.guarded.current)
            self.guarded.failure.record(2, f"{what}: {type(e).__name__}: {one_line(e)}")
        return RGBImageField.encode(self.field, destination, _PLACEHOLDER, malloc)


# ----------------------------------------------------------------------------------------------
# Full disks, signals and dead workers. FFCV's DatasetWriter waits for a count of finished images that a
# dead worker never reaches (forever), its workers spin waiting for a dead worker's page, and at exit
# multiprocessing joins those spinning workers (so Ctrl-C hung too). `_writer_class()` is FFCV's write loop
# with three changes: a worker's failed page write is recorded instead of killing it, the main process
# watches for a recorded failure or a dead worker and then ends the workers at once, and whatever ends the
# write (an error, Ctrl-C, SIGTERM) terminates the workers and frees the shared memory before it propagates.


class WriteInterrupted(Exception):
    """SIGINT or SIGTERM arrived while writing; the workers are gone and nothing was written."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _disk_message(e: OSError, output: str) -> str:
    return f"{(e.strerror or str(e)).lower()} writing {output}"


@contextlib.contextmanager
def _stop_on_signals():
    """SIGINT and SIGTERM raise WriteInterrupted in the main process while writing (the `finally` blocks then
    end the workers and remove the temporary file); the previous handlers come back afterwards."""
    def stop(signum, frame):
        raise WriteInterrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker(work_fn, *args) -> None:
    """A writer process: Ctrl-C is the main process's to answer (the terminal sends it to every process of
    the group), SIGTERM ends it, and it dies with the main process (even a SIGKILLed one)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    work_fn(*args)


class _WholeWrites:
    """A raw file whose write() writes everything or raises: FFCV ignores the count an unbuffered write
    returns, so a disk filling up mid-page would otherwise leave a silently short page."""

    def __init__(self, raw):
        self.raw = raw

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        while view:
            n = self.raw.write(view)
            if not n:
                raise OSError(28, os.strerror(28))  # ENOSPC
            view = view[n:]
        return len(data)

    def __getattr__(self, name):
        return getattr(self.raw, name)


def _guarded_allocator(failure: _Failure, output: str):
    from ffcv.memory_allocator import MemoryAllocator

    class GuardedAllocator(MemoryAllocator):
        """FFCV's page allocator whose page writes are whole and whose write errors are recorded, not raised
        (an exception would kill the worker and leave the others spinning)."""

        def __enter__(self):
            super().__enter__()
            self.fp = _WholeWrites(self.fp)

        def flush_page(self):
            if failure.failed:
                return  # the main process is ending the write; nothing more goes to disk
            try:
                super().flush_page()
            except OSError as e:
                failure.record(3, _disk_message(e, output))

    return GuardedAllocator


def _writer_class():
    from ffcv.writer import DatasetWriter

    class Writer(DatasetWriter):
        def __init__(self, fname, fields, *, page_size, num_workers, failure: _Failure, output: str):
            super().__init__(fname, fields, page_size=page_size, num_workers=num_workers)
            self.failure, self.output = failure, output

        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
            """FFCV 1.0's loop (ffcv/writer.py), watched, and ended cleanly whatever happens."""
            from ffcv.writer import Process, Queue, Value

            self.num_samples = num_samples
            self.prepare()
            processes = []
            try:
                workqueue, allocations_queue = Queue(), Queue()
                for q in (workqueue, allocations_queue):
                    # A write ended early leaves items no worker will read: exit must not wait to flush them.
                    q.cancel_join_thread()
                for todo in queue_content:
                    workqueue.put(todo)
                for _ in range(self.num_workers):
                    workqueue.put(None)
                done_number = Value(ctypes.c_uint64, 0)
                allocator = _guarded_allocator(self.failure, self.output)(self.fname, self.data_region_start,
                                                                          self.page_size)
                worker_args = (workqueue, self.metadata_sm, self.metadata_type, self.fields, allocator, done_number,
                               allocations_queue, *extra_worker_args)
                # Signals stay blocked while the workers are forked, so none lands in a worker before it has set
                # its own handlers (it would run the main process's and die with a traceback).
                stops = {signal.SIGINT, signal.SIGTERM}
                signal.pthread_sigmask(signal.SIG_BLOCK, stops)
                try:
                    for _ in range(self.num_workers):
                        processes.append(Process(target=_worker, args=(work_fn, *worker_args)))
                        processes[-1].start()
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)

                # FFCV's bar draws ten updates a second even in Slurm logs and pipes; disable=None is tqdm's
                # "only on a terminal". A disabled tqdm does not count, so the loop keeps its own count.
                done = 0
                with tqdm(total=self.num_samples, disable=None) as progress:
                    while done < self.num_samples:
                        self._check(processes)
                        now = done_number.value
                        progress.update(now - done)
                        done = now
                        time.sleep(0.1)
                allocation_list = []
                for _ in processes:
                    while True:
                        try:
                            allocation_list.extend(allocations_queue.get(timeout=0.5))
                            break
                        except queue.Empty:
                            self._check(processes)
                for p in processes:
                    p.join()
                self.finalize(allocation_list)
            finally:
                for p in processes:
                    if p.is_alive():
                        p.terminate()
                for p in processes:
                    p.join(5)
                    if p.is_alive():
                        p.kill()
                        p.join()
                self.metadata_sm.close()
                self.metadata_sm.unlink()

        def _check(self, processes) -> None:
            """Raise (ending the write) once a worker recorded a failure or died without finishing."""
            if self.failure.failed:
                self.failure.raise_if_any()
            dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a writer process died (exit code {dead[0]}) writing {self.output}")

    return Writer


# ----------------------------------------------------------------------------------------------
# --skip-corrupt: decode everything once, in parallel

_check_source: Optional[Source] = None


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


# ----------------------------------------------------------------------------------------------
# Command line


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
    from resnext_dist.cli import HelpFormatter, command_name  # defaults shown only where they say something
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
                        skip_corrupt=args.skip_corrupt)
        write_class_names(args.output, source.classes)  # a beton holds integer labels only
    except DataError as e:
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
