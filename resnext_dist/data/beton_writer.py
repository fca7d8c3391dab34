"""The guarded FFCV write: what makes `python -m resnext_dist.data.write` safe on a full disk, under a signal
and when a worker dies (write.py is the command line and the choice of fields; this is the machinery).

FFCV 1.0's DatasetWriter waits for a count of finished images that a dead worker never sends, and joins spinning
workers on Ctrl-C; here its write loop runs watched: any worker failure or death, ENOSPC, SIGINT or SIGTERM ends
the write with one line, every worker ended, shared memory freed and the temporary file removed.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import queue
import signal
import time
from typing import Optional, Tuple

import numpy as np
from tqdm import tqdm

from resnext_dist.data.errors import CorruptImage, DataError
from resnext_dist.data.sources import Source
from resnext_dist.errors import one_line

MAX_SIDE = 65535  # the beton stores width and height as uint16

# No exception may leave a writer worker: its page would never be written and the other workers would spin
# waiting for it. So failures are recorded in shared memory and the worker writes a 1-pixel placeholder
# instead; the main process sees the recorded failure (see writer_class below), ends the workers, raises the
# recorded error and discards the file.

_PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)


class Failure:
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


class GuardedSource:
    """The source as the writer workers read it: decode failures recorded, not raised."""

    def __init__(self, source: Source, failure: Failure, max_resolution: Optional[int]):
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


class GuardedEncode:
    """RGBImageField.encode with a size check before FFCV's allocator (which raises in the worker when
    an image is larger than a page) and failures recorded instead of raised."""

    def __init__(self, field, page_size: int, guarded: GuardedSource):
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


# Full disks, signals and dead workers. FFCV's DatasetWriter waits for a count of finished images that a
# dead worker never reaches (forever), its workers spin waiting for a dead worker's page, and at exit
# multiprocessing joins those spinning workers (so Ctrl-C hung too). `writer_class()` is FFCV's write loop
# with three changes: a worker's failed page write is recorded instead of killing it, the main process
# watches for a recorded failure or a dead worker and then ends the workers at once, and whatever ends the
# write (an error, Ctrl-C, SIGTERM) terminates the workers and frees the shared memory before it propagates.


class WriteInterrupted(Exception):
    """SIGINT or SIGTERM arrived while writing; the workers are gone and nothing was written."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def disk_message(e: OSError, output: str) -> str:
    return f"{(e.strerror or str(e)).lower()} writing {output}"


@contextlib.contextmanager
def stop_on_signals():
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


def _guarded_allocator(failure: Failure, output: str):
    from resnext_dist.data import ffcv_cache  # noqa: F401  before FFCV: numba's compile from its disk cache
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
                failure.record(3, disk_message(e, output))

    return GuardedAllocator


def writer_class():
    from ffcv.writer import DatasetWriter

    class Writer(DatasetWriter):
        def __init__(self, fname, fields, *, page_size, num_workers, failure: Failure, output: str):
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
