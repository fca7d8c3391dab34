"""`python -m resnext_dist.bench decode`: the host's work per batch of the data.decode=gpu path's preparation.

    python -m resnext_dist.bench decode                     # 256 ImageNet-like photos (375x500), jpg and proportion
    python -m resnext_dist.bench decode --write-modes jpg data.batch_size=64 --images 256
    python -m resnext_dist.bench decode --resize kernel       # only the one-launch path (the default times both)

It reads batches of stored bytes from a .beton of bench photos with FFCV (what data.decode=gpu's workers hand
over), keeps copies of them, then times the device decoder (device_decode.DeviceDecoder, with the crop boxes and
flips drawn as the loader draws them) on each batch, in this thread. Per batch it reports:
- host_ms: what the preparation costs the host beyond the work of torch ops: wall time minus the time spent inside
  torch ops (timed by a TorchDispatchMode; on a CPU the device's work runs inside them), minus the mode's own cost
  per op (measured first). It keeps what a GPU would not take off the host: numpy (headers, boxes, tables),
  Python, building the decode's inputs, host copies.
- ops: torch ops dispatched per batch (on a GPU each is a kernel launch or a copy, or a wrapper or view costing
  host time only: torch.from_numpy of each stored JPEG is one); the JPEG decode call counts as one.
- decode_ms: inside the JPEG decode call (one torchvision call per batch); device_ms: inside every other op (on a
  CPU: the device work done there; on a GPU: CUDA events around the batch, decode excluded).
The JPEGs' mean stored size is reported too (ImageNet's are ~110 KB at ~400x350). See docs/performance.md.

Each batch is prepared both ways (`--resize reference,kernel`): the reference (a copy per crop into a padded float
batch, roi_align: what data.decode=gpu did on a GPU before resize_kernel.py) and the kernel path (one Triton launch
for the batch: what it does on a GPU now). Without a CUDA device the kernel's launch is not run (Triton compiles
for GPUs; its interpreter is far slower than a launch): the kernel row's host_ms is the preparation up to the
launch, which on a GPU adds the launch's own host cost (tens of microseconds).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from resnext_dist.bench import report, workload
from resnext_dist.bench.photos import MAX_PHOTO_SIZE, prepare_data
from resnext_dist.errors import InputError

DEFAULTS = ["data.train_res=224", "data.batch_size=256"]
IMAGENET_TEXTURE = 26.0  # bench/photos.py's noise for 375x500 JPEGs of ~110 KB in the .beton (quality 90)
WRITE_MODES = ("jpg", "proportion")
RESIZES = ("reference", "kernel")


class OpClock(TorchDispatchMode):
    """Counts the torch ops dispatched while active and adds up the time spent inside them; the JPEG decode
    apart: the whole call of the decoder's `_decode_jpegs` (`decoding`) counts as one op and its wall time as
    decode time (on CUDA it is one torchvision op; on a CPU torchvision loops over the images in Python)."""

    def __init__(self):
        super().__init__()
        self.ops, self.op_s, self.decode_s, self.inside_decode = 0, 0.0, 0.0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.inside_decode:
            return func(*args, **(kwargs or {}))
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        self.op_s += time.perf_counter() - t0
        return out

    def decoding(self, decode):
        def timed(*args):
            t0, self.inside_decode = time.perf_counter(), True
            try:
                return decode(*args)
            finally:
                self.inside_decode = False
                self.ops += 1
                self.decode_s += time.perf_counter() - t0
        return timed


def mode_cost_s(n: int = 3000) -> float:
    """The OpClock's own host cost per op: a tiny op timed with and without it (so host_ms leaves it out)."""
    x = torch.zeros(4)

    def loop() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            torch.ops.aten.alias(x)
        return time.perf_counter() - t0

    loop()
    bare = min(loop() for _ in range(3))
    clock = OpClock()
    with clock:
        loop()
        timed = min(loop() for _ in range(3))
    inside = clock.op_s / (4 * n)  # what the clock counted as op time per op, over its 4 loops
    return max(0.0, (timed - bare) / n - inside)


def stored_batches(path: str, batch: int, count: int) -> List[np.ndarray]:
    """The first `count` batches of stored-bytes rows, as data.decode=gpu's FFCV workers hand them over (copied:
    FFCV reuses its buffers)."""
    from ffcv.fields.decoders import IntDecoder
    from ffcv.loader import Loader, OrderOption

    from resnext_dist.data import device_decode

    loader = Loader(path, batch_size=batch, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=True,
                    pipelines={"image": [device_decode.StoredBytes(device_decode.stored_capacity(path))],
                               "label": [IntDecoder()]})
    out = []
    for images, _ in loader:
        # pinned on a GPU host, as FFCV's own buffers are there (a copy from pageable memory would wait)
        copy = torch.empty(images.shape, dtype=torch.uint8, pin_memory=torch.cuda.is_available()).numpy()
        copy[...] = images
        out.append(copy)
        if len(out) == count:
            break
    return out


@contextlib.contextmanager
def launch_left_out(kernel: bool, device: torch.device):
    """Without a CUDA device, the kernel path's launch does nothing (see the module's text)."""
    if not kernel or device.type == "cuda":
        yield
        return
    from resnext_dist.data import resize_kernel

    real = resize_kernel.crop_resize_normalize
    resize_kernel.crop_resize_normalize = lambda *args: None
    try:
        yield
    finally:
        resize_kernel.crop_resize_normalize = real


def time_batches(batches: List[np.ndarray], device: torch.device, res: int, repeats: int, warmup: int,
                 resize: str = "reference") -> Dict:
    """Per batch: host ms, ops, decode ms and device ms (medians over `repeats` passes after `warmup`)."""
    from resnext_dist.data import device_decode

    decoder = device_decode.DeviceDecoder(device, channels_last=True, kernel=resize == "kernel")
    decode_jpegs = decoder._decode_jpegs
    per_op = mode_cost_s()
    host, ops, decode, dev = [], [], [], []
    for rep in range(warmup + repeats):
        for epoch, stored in enumerate(batches):
            clock = OpClock()
            decoder._decode_jpegs = clock.decoding(decode_jpegs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            t0 = time.perf_counter()
            with launch_left_out(decoder.kernel, device), clock:
                boxes, flips = device_decode.train_boxes(device_decode.headers(stored), seed=0, epoch=epoch,
                                                         random_crop=True, val_crop_ratio=0.875)
                out = decoder(stored, boxes, flips, res)
            wall = time.perf_counter() - t0
            if device.type == "cuda":
                end.record()
                torch.cuda.synchronize(device)
                device_s = start.elapsed_time(end) / 1e3 - clock.decode_s
            else:
                device_s = clock.op_s
            del out
            if rep >= warmup:
                host.append(wall - clock.op_s - clock.decode_s - clock.ops * per_op)
                ops.append(clock.ops)
                decode.append(clock.decode_s)
                dev.append(device_s)
    return {"host_ms": 1e3 * float(np.median(host)), "ops": int(np.median(ops)),
            "decode_ms": 1e3 * float(np.median(decode)), "device_ms": 1e3 * float(np.median(dev)),
            "mode_cost_us_per_op": 1e6 * per_op, "launch_run": not decoder.kernel or device.type == "cuda"}


def jpeg_kb(path: str) -> float:
    """Mean stored size in KB of the .beton's JPEGs (0 when it holds none)."""
    from ffcv.reader import Reader

    from resnext_dist.data.device_decode import JPEG

    reader = Reader(path)
    meta = reader.metadata[f"f{reader.field_names.index('image')}"]
    table = np.sort(reader.alloc_table, order="ptr")
    sizes = table["size"][np.searchsorted(table["ptr"], meta["data_ptr"])]
    jpegs = sizes[meta["mode"] == JPEG]
    return float(jpegs.mean()) / 1e3 if len(jpegs) else 0.0


def parser():
    p = workload.bench_parser("decode", "Host ms per batch of data.decode=gpu's preparation (crop boxes, decode, "
                                        f"crop, resize, flip, normalize); without --config: {' '.join(DEFAULTS)}.")
    p.add_argument("--images", type=int, default=1024, help="photos in each .beton")
    p.add_argument("--photo-size", default="375x500", help=f"HxW of the photos, at most {MAX_PHOTO_SIZE[0]}x"
                   f"{MAX_PHOTO_SIZE[1]} (ImageNet-like: a longest side of 500)")
    p.add_argument("--texture", type=float, default=IMAGENET_TEXTURE, help="noise (std, levels) added to each "
                   "photo: 26 makes 375x500 JPEGs of ~110 KB once written, ImageNet's size (bench/photos.py)")
    p.add_argument("--write-modes", default="jpg,proportion", help=f"comma-separated, of {', '.join(WRITE_MODES)}")
    p.add_argument("--batches", type=int, default=2, help="distinct batches timed")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over them (the median counts)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes first")
    p.add_argument("--resize", default=",".join(RESIZES), help="comma-separated, of reference (a copy per crop, "
                   "roi_align: before) and kernel (one Triton launch per batch: now)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the decode runs")
    p.add_argument("--workdir", default="", help="keep the photos and .betons here (default: a temporary folder)")
    return p


def run(argv=None) -> int:
    args, device, cfg = workload.start(parser(), argv, defaults=DEFAULTS)
    modes = [m.strip() for m in args.write_modes.split(",") if m.strip()]
    if not modes or set(modes) - set(WRITE_MODES):
        raise InputError(f"--write-modes {args.write_modes!r}: choose from {', '.join(WRITE_MODES)}")
    resizes = [m.strip() for m in args.resize.split(",") if m.strip()]
    if not resizes or set(resizes) - set(RESIZES):
        raise InputError(f"--resize {args.resize!r}: choose from {', '.join(RESIZES)}")
    size = tuple(int(v) for v in args.photo_size.lower().split("x")) if args.photo_size.count("x") == 1 and \
        all(v.isdigit() for v in args.photo_size.lower().split("x")) else ()
    if len(size) != 2 or not all(8 <= v <= m for v, m in zip(size, MAX_PHOTO_SIZE)):
        raise InputError(f"--photo-size {args.photo_size!r}: expected HxW between 8x8 and "
                         f"{MAX_PHOTO_SIZE[0]}x{MAX_PHOTO_SIZE[1]}")
    batch, res = cfg.data.batch_size, cfg.data.train_res
    if args.batches < 1 or args.repeats < 1 or args.warmup < 0 or args.images < batch * args.batches:
        raise InputError(f"--images {args.images} must hold --batches {args.batches} of data.batch_size={batch}; "
                         "--repeats >= 1, --warmup >= 0")
    if args.texture < 0:
        raise InputError(f"--texture {args.texture} must be >= 0")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_decode_")
    os.makedirs(workdir, exist_ok=True)
    title = (f"bench decode: data.decode=gpu's preparation of batches of {batch} photos {size[0]}x{size[1]} -> "
             f"{res} px on {workload.device_label(device)}")
    rows, summary = [], {}
    try:
        for mode in modes:
            path = prepare_data(workdir, args.images, size, mode, texture=args.texture)["ffcv"]
            batches = stored_batches(path, batch, args.batches)
            kb = jpeg_kb(path)
            for resize in resizes:
                timing = time_batches(batches, device, res, args.repeats, args.warmup, resize)
                rows.append({"measure": f"{mode}, {resize}, {batch} images", "res": res, "batch": batch,
                             "write_mode": mode, "resize": resize, "jpeg_kb": kb, **timing})
                print(f"{mode}, {resize}: host {timing['host_ms']:.2f} ms, {timing['ops']} ops, decode "
                      f"{timing['decode_ms']:.1f} ms, device {timing['device_ms']:.1f} ms per batch"
                      f"{'' if timing['launch_run'] else ' (launch not run: no CUDA)'}; JPEGs {kb:.1f} KB", flush=True)
                summary.update({f"host_ms_per_batch_{mode}_{resize}": timing["host_ms"],
                                f"ops_per_batch_{mode}_{resize}": timing["ops"]})
            if set(RESIZES) <= set(resizes):
                summary[f"host_ms_kernel_vs_reference_{mode}"] = \
                    summary[f"host_ms_per_batch_{mode}_kernel"] / summary[f"host_ms_per_batch_{mode}_reference"]
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    notes = ["host_ms: wall time of a batch's preparation minus the time inside torch ops and the timer's own cost "
             "per op; ops: torch ops dispatched per batch; decode_ms: inside the JPEG decode call; device_ms: inside "
             "the other ops (a CPU) or CUDA events (a GPU); medians over the timed passes",
             "resize: reference = a copy per crop into a padded float batch + roi_align (before); kernel = one "
             "Triton launch per batch (now; without CUDA its launch is not run and its device work is left out)"]
    params = {"images": args.images, "photo_hw": list(size), "texture": args.texture, "write_modes": modes,
              "batches": args.batches, "repeats": args.repeats, "warmup": args.warmup, "device": device.type,
              "resize": resizes,
              "threads": torch.get_num_threads(), "batch": batch, "res": res}
    return report.finish("decode", device, args, argv, title=title, params=params, rows=rows, summary=summary,
                         notes=notes)
