"""data.decode=gpu off the training thread: a background thread per loader turns FFCV's batches of stored bytes
into ready, normalized batches, `ahead` of the step, on a CUDA stream of its own.

Why a thread: the decode (nvJPEG's host phase, libjpeg-turbo on a CPU) ends in a wait for the device, and run in
the loader's next() it held the training thread, so the step could not be queued meanwhile; torchvision's decode
and torch's kernels release the GIL, so a thread overlaps them with the step. Why a stream of its own: every
allocation of the decode is then made on that stream, so the caching allocator never hands nvJPEG memory that
kernels queued on the training stream still read (pytorch/vision#9606: the decode writes from nvJPEG's stream,
which waits for nobody). The hand-over: the thread records an event after a batch; the consumer makes its
stream wait for it (no host wait) and `record_stream`s the tensors, so their memory is not reused by the decode
stream before the step that reads them is done. On a CPU the same thread and queue run, without stream or event
(the tests exercise the threading). The batches come out in FFCV's order, one by one: the same batches in the
same order as decoding them in place (`ahead=0`).
"""
from __future__ import annotations

import contextlib
import queue
import threading
from typing import Callable, Iterator, Tuple

import torch

_DONE = object()


def decode_ahead(batches: Iterator, decode: Callable, device: torch.device, ahead: int) \
        -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """`(decode(stored), labels)` for each `(stored, labels)` of `batches`, made by a background thread up to
    `ahead` batches ahead (0: in the caller's thread, as before). An exception of the decode (a DataError naming
    the image) is raised here, in order, after the batches before it. Closing this generator stops the thread
    and closes `batches` (FFCV's prefetch thread) from the thread that iterated it."""
    if ahead <= 0:
        try:
            for stored, labels in batches:
                yield decode(stored), labels
        finally:
            batches.close()
        return
    cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None
    ready: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():  # never block forever on a consumer that left
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        if cuda:
            torch.cuda.set_device(device)  # the current device is per thread: a new one starts on GPU 0
        try:
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                for stored, labels in batches:
                    images, labels = decode(stored), labels.to(device, non_blocking=cuda)
                    event = torch.cuda.Event() if cuda else None
                    if event is not None:
                        event.record(stream)
                    if not put((images, labels, event)):
                        return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there in order
            put(e)
        finally:
            batches.close()

    thread = threading.Thread(target=work, name="resnext_dist-decode-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            images, labels, event = item
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)  # the device waits, not the host
                images.record_stream(current)
                labels.record_stream(current)
            yield images, labels
    finally:
        stop.set()
        thread.join()

