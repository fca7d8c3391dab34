"""data.decode=gpu: the stored bytes of a batch -> normalized channels-last float images on the device.

FFCV still reads the .beton (memory-mapped, the sharded order and skip-on-resume of ffcv.py), but its worker
threads only copy each sample's stored bytes (`StoredBytes`, an FFCV decoder): the JPEG as written, or the
pixels of an image stored raw (`proportion`/`raw` write modes). Everything costly then runs on the device
in `DeviceDecoder`: one batched `torchvision.io.decode_jpeg(list, device=...)` (nvJPEG on a GPU, libjpeg-turbo
on a CPU: the same call), the raw images' rows copied to the device once, as FFCV holds them (no host copy), and
then, on a CUDA device, one kernel for the whole batch (resize_kernel.py: crop, resize to the epoch's resolution,
flip and normalize into channels-last memory, reading each image where its decode left it). So the CPU cost
per image is a memcpy in FFCV's worker, and the device's per batch is the decode, a copy and one launch.
Elsewhere (a CPU: the tests' device) the same resize runs as the reference it was built from: the crops copied
into one padded float batch and one `roi_align`.

Crop boxes and flips are drawn on the host, before decoding, from a counter-based generator keyed by
(seed, epoch, dataset index, copy) (`keyed_uniforms`): image k of epoch e gets the same crop whichever rank
reads it, however many workers there are, and whether or not the run was resumed. The copy is 0 but with
repeated augmentation (data.ra_reps = R: each image R times per epoch, sharding.py), where copy c of an image
(its epoch position modulo R) gets its own crop and flip; copy 0's key is the image's index alone, so the crops
without repeats are those of before. The boxes follow
torchvision's / FFCV's RandomResizedCrop exactly (FFCV's get_random_crop, vectorized: scale 0.08-1,
log-uniform ratio 3/4-4/3, 10 tries, then the same center-crop fallback); validation uses FFCV's center
crop (side = data.val_crop_ratio x the shorter side). The resize (the kernel's and the reference's alike) is
roi_align with as many bilinear samples per output pixel as the shrink factor (an area average, like the CPU
path's INTER_AREA; bilinear when enlarging), over each crop alone (its edge pixels repeated, as OpenCV sees a
crop): pixels within a few levels of the CPU path's for the same box.

A stored JPEG that does not decode (the file was damaged after it was written: the writer encodes every JPEG
itself) raises DataError naming the file and the dataset index; the CPU path's decoders hand such an image on
as whatever their buffer held, silently.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from ffcv.fields.rgb_image import IMAGE_MODES, SimpleRGBImageDecoder
from ffcv.libffcv import memcpy
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.state import State

from resnext_dist.data.errors import CorruptImage, DataError
from resnext_dist.data.keyed import mix as _mix
from resnext_dist.data.normalize import scale_shift
from resnext_dist.errors import one_line

# Each sample's row: a 24-byte header, then its stored bytes (a JPEG, or height x width x 3 raw pixels).
HEADER = np.dtype([("index", "<i8"), ("length", "<u4"), ("height", "<u4"), ("width", "<u4"), ("mode", "u1"),
                   ("pad", "u1", (3,))])
JPEG, RAW = int(IMAGE_MODES["jpg"]), int(IMAGE_MODES["raw"])
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # RandomResizedCrop's defaults (torchvision, FFCV)
TRIES = 10
UNIFORMS = 2 * TRIES + 3  # per image: 10 tries x (scale, ratio), top, left, flip
# Copy c of image k draws with key k + c x COPY_STRIDE: distinct for any .beton under 2^40 images.
COPY_STRIDE = np.uint64(1 << 40)


def stored_capacity(path: str, field: str = "image") -> int:
    """The largest stored size in bytes of `field` over the .beton's samples (each row's capacity)."""
    from ffcv.reader import Reader

    reader = Reader(path)
    ptrs = reader.metadata[f"f{reader.field_names.index(field)}"]["data_ptr"]
    table = np.sort(reader.alloc_table, order="ptr")
    return int(table["size"][np.searchsorted(table["ptr"], ptrs)].max())


class StoredBytes(SimpleRGBImageDecoder):
    """FFCV decoder for an RGBImageField that decodes nothing: each sample becomes a row of HEADER.itemsize +
    `capacity` bytes holding its header (dataset index, stored length, height, width, mode) and its stored
    bytes as they are in the file. (A subclass of the field's decoder class: FFCV takes the first operation
    of a pipeline as its decoder only if it is one.) Nothing here may raise: an exception in FFCV's
    pipeline thread would leave the loader waiting forever."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = int(capacity)

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, AllocationQuery]:
        shape = (HEADER.itemsize + self.capacity,)
        return replace(previous_state, jit_mode=True, shape=shape, dtype=np.dtype("u1")), \
            AllocationQuery(shape, np.dtype("u1"))

    def generate_code(self) -> Callable:
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        my_memcpy = Compiler.compile(memcpy)
        put = Compiler.compile(_put)
        header = HEADER.itemsize

        def copy_stored(batch_indices, destination, metadata, storage_state):
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                data = mem_read(field["data_ptr"], storage_state)
                row = destination[dst_ix]
                put(row, 0, 8, np.uint64(source_ix))
                put(row, 8, 4, np.uint64(data.size))
                put(row, 12, 4, np.uint64(field["height"]))
                put(row, 16, 4, np.uint64(field["width"]))
                row[20] = field["mode"]
                my_memcpy(data, row[header:header + data.size])
            return destination[:len(batch_indices)]

        copy_stored.is_parallel = True
        return copy_stored


def _put(row, offset, size, value):
    """Little-endian `value` into row[offset:offset + size] (numba-compiled: no views, plain shifts)."""
    for k in range(size):
        row[offset + k] = (value >> np.uint64(8 * k)) & np.uint64(255)


def headers(stored: np.ndarray) -> np.ndarray:
    """The HEADER records of a batch of StoredBytes rows."""
    return np.ascontiguousarray(stored[:, :HEADER.itemsize]).view(HEADER).reshape(-1)


# ---- crop boxes and flips, on the host (keyed.py's SplitMix64 without its stream: crops stay as they were)


def keyed_uniforms(seed: int, epoch: int, indices: np.ndarray, count: int = UNIFORMS) -> np.ndarray:
    """(len(indices), count) uniforms in [0, 1), a function of (seed, epoch, index, k) only: a counter-based
    generator, so no state is carried from batch to batch (nothing to save in a checkpoint)."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as intended
        key = _mix(_mix(np.full(1, seed, np.uint64)) + np.uint64(epoch))
        base = _mix(key + np.asarray(indices, np.uint64))
        bits = _mix(base[:, None] + np.arange(count, dtype=np.uint64)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def random_crops(heights: np.ndarray, widths: np.ndarray, u: np.ndarray, scale=SCALE, ratio=RATIO) -> np.ndarray:
    """(N, 4) boxes (top, left, height, width): FFCV's get_random_crop for each image with the uniforms in row
    u[n] (u[n, 2t], u[n, 2t + 1]: try t's area and log-ratio; u[n, 20], u[n, 21]: the top and left)."""
    heights, widths = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    log_ratio = np.log(np.asarray(ratio, np.float64))
    area = (heights * widths).astype(np.float64)[:, None]
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, 0:2 * TRIES:2])
    aspect = np.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[:, 1:2 * TRIES:2])
    w = np.round(np.sqrt(target * aspect)).astype(np.int64)  # round half to even, as Python's round
    h = np.round(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
    first, rows = fits.argmax(1), np.arange(len(heights))
    h, w = h[rows, first], w[rows, first]
    top = (u[:, 2 * TRIES] * (heights - h + 1)).astype(np.int64)
    left = (u[:, 2 * TRIES + 1] * (widths - w + 1)).astype(np.int64)
    # no try fitted: the whole image, cut to the nearest allowed ratio, centered
    in_ratio = widths / heights
    fall_w = np.where(in_ratio < min(ratio), widths, np.where(
        in_ratio > max(ratio), np.round(heights * max(ratio)).astype(np.int64), widths))
    fall_h = np.where(in_ratio < min(ratio), np.round(widths / min(ratio)).astype(np.int64), heights)
    none = ~fits.any(1)
    h, w = np.where(none, fall_h, h), np.where(none, fall_w, w)
    top = np.where(none, (heights - h) // 2, top)
    left = np.where(none, (widths - w) // 2, left)
    return np.stack([top, left, h, w], 1)


def center_crops(heights: np.ndarray, widths: np.ndarray, ratio: float) -> np.ndarray:
    """(N, 4) boxes: FFCV's get_center_crop (a square of ratio x the shorter side, centered)."""
    heights, widths = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    side = (ratio * np.minimum(heights, widths)).astype(np.int64)
    return np.stack([(heights - side) // 2, (widths - side) // 2, side, side], 1)


def train_boxes(records: np.ndarray, *, seed: int, epoch: int, random_crop: bool,
                val_crop_ratio: float, copies: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(boxes, flips) of a training batch: random-resized crops and coin flips keyed by (seed, epoch, index,
    copy) (`copies`: each image's copy number under repeated augmentation; None: all 0), or
    (data.random_crop=false) center crops and no flips."""
    if not random_crop:
        return center_crops(records["height"], records["width"], val_crop_ratio), np.zeros(len(records), bool)
    keys = records["index"].astype(np.uint64)
    if copies is not None:
        keys = keys + np.asarray(copies, np.uint64) * COPY_STRIDE
    u = keyed_uniforms(seed, epoch, keys)
    return random_crops(records["height"], records["width"], u), u[:, -1] < 0.5


# ---- on the device


class DeviceDecoder:
    """`(stored rows, boxes, flips, res) -> float32 (N, 3, res, res) normalized, channels-last if asked`.

    `kernel`: resize with resize_kernel.py's one launch (None: on a CUDA device; the tests ask for it on the CPU
    under Triton's interpreter) or with the reference (roi_align over a padded batch of crops)."""

    def __init__(self, device: torch.device, channels_last: bool, path: str = "", kernel: Optional[bool] = None):
        self.device, self.path = torch.device(device), path
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.scale, self.shift = scale_shift(self.device)
        self.channel_scale, self.channel_shift = self.scale.reshape(3), self.shift.reshape(3)  # the kernel's
        self.kernel = self.device.type == "cuda" if kernel is None else bool(kernel)
        self._done: Optional[torch.cuda.Event] = None  # recorded after the last batch's kernel (CUDA)

    def __call__(self, stored: np.ndarray, boxes: np.ndarray, flips: np.ndarray, res: int) -> torch.Tensor:
        records = headers(stored)
        if self.kernel:
            return self._in_one_launch(np.ascontiguousarray(stored), records, boxes, flips, res)
        return self._reference(stored, records, boxes, flips, res)

    def _in_one_launch(self, stored: np.ndarray, records: np.ndarray, boxes: np.ndarray, flips: np.ndarray,
                       res: int) -> torch.Tensor:
        from resnext_dist.data import resize_kernel  # Triton: imported only when the kernel is used

        cuda = self.device.type == "cuda"
        if self._done is not None:
            # nvJPEG writes its outputs from a stream of its own that waits for nobody, into memory the caching
            # allocator may just have taken back from the last batch's images, which that batch's kernel (queued
            # on this stream) may still be reading (pytorch/vision#9606): let it finish first.
            self._done.synchronize()
        n, header = len(records), HEADER.itemsize
        addresses, strides = np.zeros(n, np.int64), np.zeros((n, 3), np.int64)
        raw = np.flatnonzero(records["mode"] != JPEG)
        copied = None
        if len(raw):
            self._check_raw(records[raw])
            # The rows from the first raw image to the last, as FFCV holds them (in pinned memory on a GPU host):
            # one asynchronous copy, no host copy. Channels last: strides (1, 3 x width, 3).
            first = int(raw[0])
            block = torch.from_numpy(stored[first:int(raw[-1]) + 1]).to(self.device, non_blocking=cuda)
            if cuda:
                copied = torch.cuda.Event()
                copied.record()
            addresses[raw] = block.data_ptr() + (raw - first) * stored.shape[1] + header
            widths = records["width"][raw].astype(np.int64)
            strides[raw] = np.stack([np.ones_like(widths), 3 * widths, np.full_like(widths, 3)], 1)
        jpegs = np.flatnonzero(records["mode"] == JPEG)
        if len(jpegs):
            data = [torch.from_numpy(stored[k, header:header + int(records["length"][k])]) for k in jpegs]
            decoded = self._decode_jpegs(data, records["index"][jpegs])
            for k, image in zip(jpegs.tolist(), decoded):
                self._check_size(records[k], image.shape[1:])
                addresses[k], strides[k] = image.data_ptr(), image.stride()  # uint8: strides are bytes
        table = self._to_device(resize_kernel.table_rows(addresses, strides, boxes, flips))
        out = torch.empty((n, 3, res, res), dtype=torch.float32, device=self.device, memory_format=self.memory_format)
        resize_kernel.crop_resize_normalize(table, out, self.channel_scale, self.channel_shift)
        if cuda:
            self._done = torch.cuda.Event()
            self._done.record()
            if copied is not None:
                copied.synchronize()  # FFCV refills its rows once this batch is handed on
        return out

    def _reference(self, stored: np.ndarray, records: np.ndarray, boxes: np.ndarray, flips: np.ndarray,
                   res: int) -> torch.Tensor:
        from torchvision.ops import roi_align

        images = self.decode(stored, records)
        n = len(records)
        # Every crop into one padded float batch, one row and one column more than the tallest / widest crop:
        # roi_align's bilinear samples near a crop's far edges read that row / column, which repeats the edge.
        # Cost: n x 3 x hb x wb float32 (256 crops of up to 500 px: up to 770 MB), a copy kernel per crop.
        hb, wb = int(boxes[:, 2].max()) + 1, int(boxes[:, 3].max()) + 1
        crops = torch.empty((n, 3, hb, wb), dtype=torch.float32, device=self.device)
        for k, (image, (top, left, h, w)) in enumerate(zip(images, boxes.tolist())):
            crops[k, :, :h, :w].copy_(image[:, top:top + h, left:left + w])
        # One small copy to the device: per crop its row, height, width and flip.
        meta = self._to_device(np.stack([np.arange(n), boxes[:, 2], boxes[:, 3], flips]).astype(np.int64))
        rows, hs, ws = meta[0], meta[1], meta[2]
        crops[rows, :, hs, :] = crops[rows, :, hs - 1, :]
        crops[rows, :, :, ws] = crops[rows, :, :, ws - 1]
        # (k, x1, y1, x2, y2) per crop; aligned=True: pixel centers at +0.5; sampling_ratio=-1: ceil(crop / res)
        # bilinear samples per output pixel and axis, i.e. an area average when shrinking.
        zeros = torch.zeros_like(hs)
        rois = torch.stack([rows, zeros, zeros, ws, hs], 1).float()
        out = roi_align(crops, rois, (res, res), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        if flips.any():
            out = torch.where(meta[3].bool().view(-1, 1, 1, 1), out.flip(3), out)
        x = torch.empty(out.shape, dtype=torch.float32, device=self.device, memory_format=self.memory_format)
        return torch.addcmul(self.shift, out, self.scale, out=x)

    def decode(self, stored: np.ndarray, records: np.ndarray) -> List[torch.Tensor]:
        """(3, height, width) uint8 images on the device: the JPEGs in one batched decode, raw pixels copied."""
        header = HEADER.itemsize
        images: List[torch.Tensor] = [None] * len(records)
        jpegs = [k for k in range(len(records)) if records["mode"][k] == JPEG]
        if jpegs:
            data = [torch.from_numpy(stored[k, header:header + int(records["length"][k])]) for k in jpegs]
            for k, image in zip(jpegs, self._decode_jpegs(data, records["index"][jpegs])):
                images[k] = image
        raw = [k for k in range(len(records)) if records["mode"][k] != JPEG]
        if raw:  # stored raw (height x width x 3, RGB): their rows to the device in one copy
            self._check_raw(records[raw])
            rows = self._raw_rows(stored, raw, header + int((records["height"][raw] * records["width"][raw]).max()) * 3)
            for row, k in zip(rows, raw):
                h, w = int(records["height"][k]), int(records["width"][k])
                images[k] = row[header:header + h * w * 3].view(h, w, 3).permute(2, 0, 1)
        for k, image in enumerate(images):
            self._check_size(records[k], image.shape[1:])
        return images

    def _check_raw(self, records: np.ndarray) -> None:
        """Each raw image's stored length is its height x width x 3 (else the resize would read past its row)."""
        sizes = records["height"].astype(np.int64) * records["width"].astype(np.int64) * 3
        bad = np.flatnonzero(records["length"].astype(np.int64) != sizes)
        if len(bad):
            k = bad[0]
            raise self._error(records["index"][k], f"its raw pixels are {int(records['length'][k])} bytes, the .beton "
                                                   f"says {int(records['height'][k])}x{int(records['width'][k])}x3")

    def _check_size(self, record, size) -> None:
        if tuple(size) != (int(record["height"]), int(record["width"])):
            raise self._error(record["index"], f"decodes to {tuple(size)}, the .beton says "
                                               f"{int(record['height'])}x{int(record['width'])}")

    def _raw_rows(self, stored: np.ndarray, raw: List[int], width: int) -> torch.Tensor:
        """Rows `raw` of FFCV's buffer, cut to `width` bytes (a row's capacity is the largest image of the file),
        on the device. On CUDA one host copy, straight into pinned memory (not a gather and then a pinned copy of
        it), then an asynchronous copy to the device."""
        source = torch.from_numpy(stored)[:, :width]
        index = torch.as_tensor(raw, dtype=torch.int64)
        if self.device.type != "cuda":
            return torch.index_select(source, 0, index)
        pinned = torch.empty((len(raw), width), dtype=torch.uint8, pin_memory=True)
        torch.index_select(source, 0, index, out=pinned)
        return pinned.to(self.device, non_blocking=True)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """A host array on the device without waiting for the stream: from pageable memory a copy to the GPU
        waits for every kernel queued before it (the previous training step); from pinned memory it does not
        (torch keeps the pinned buffer until the copy is done)."""
        host = torch.from_numpy(array)
        if self.device.type != "cuda":
            return host.to(self.device)
        return host.pin_memory().to(self.device, non_blocking=True)

    def _decode_jpegs(self, data: List[torch.Tensor], indices: np.ndarray) -> List[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            pass
        # The batch failed: find the image at fault (one at a time; only ever on this error path).
        for one, index in zip(data, indices):
            try:
                decode_jpeg([one], mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError as e:
                raise self._error(index, f"its stored JPEG does not decode ({one_line(e)})") from None
        raise DataError(f"{self.path}: a batch of {len(data)} JPEGs does not decode, though each one does")

    def _error(self, index, problem: str) -> CorruptImage:
        return CorruptImage(f"{self.path}: image {int(index)}: {problem} (data.decode=gpu); the file is damaged: "
                         f"write it again (python -m resnext_dist.data.write)")
