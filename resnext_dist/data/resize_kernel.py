"""data.decode=gpu's crop, resize, flip and normalize for a whole batch in one Triton kernel.

The images of a batch are where their decode left them (nvJPEG's outputs, each its own allocation, channels
first; raw images in the rows FFCV read, copied to the device once as they are, channels last): no copy into a
common buffer and no padded batch. A table, one row per image, gives the kernel its address, strides, crop
box and flip; one program per (image, output row) reads its source pixels as uint8 and writes the finished
float32 row, normalized, in the output's memory format (channels-last or not, by its strides). So a batch is
one launch however many images it holds, and the memory beyond the decoded images is the output alone.

The resize is the reference's (device_decode.DeviceDecoder's roi_align path) sample for sample: roi_align with
aligned=True over the crop alone, ceil(crop / res) bilinear samples per output pixel and axis (an area average
when shrinking, bilinear when enlarging), the crop's last row and column repeated past its edge. The two agree
within float rounding (tests/unit/test_resize_kernel.py runs this kernel in Triton's interpreter on the CPU).

Triton is imported here and only here; device_decode.py imports this module only when the kernel is used (on a
CUDA device; the tests ask for Triton's interpreter).
"""
import functools

import numpy as np
import torch
import triton
import triton.language as tl

# A row of the table (int64): the image's address, its strides in bytes (channel, row, column), the crop box
# (top, left, height, width) and the flip (0 or 1).
COLUMNS = ("address", "stride_c", "stride_y", "stride_x", "top", "left", "height", "width", "flip")


def _body(table, out, scale, shift, res, out_sn, out_sc, out_sy, out_sx, BLOCK: tl.constexpr):
    n, ph = tl.program_id(0), tl.program_id(1)
    row = table + n * 9  # len(COLUMNS)
    base = tl.load(row).to(tl.pointer_type(tl.uint8))
    sc, sy, sx = tl.load(row + 1), tl.load(row + 2), tl.load(row + 3)
    top, left, h, w, flip = tl.load(row + 4), tl.load(row + 5), tl.load(row + 6), tl.load(row + 7), tl.load(row + 8)
    # roi_align's arithmetic (torchvision's roi_align_kernel, aligned=True, spatial_scale=1, sampling_ratio=-1),
    # in its order, so the two agree to float rounding.
    bin_h, bin_w = h.to(tl.float32) / res, w.to(tl.float32) / res
    grid_h, grid_w = (h + res - 1) // res, (w + res - 1) // res
    pw = tl.arange(0, BLOCK)
    valid = pw < res
    col = tl.where(flip != 0, res - 1 - pw, pw).to(tl.float32)  # a flipped row is the computed row reversed
    acc0 = tl.zeros((BLOCK,), tl.float32)
    acc1 = tl.zeros((BLOCK,), tl.float32)
    acc2 = tl.zeros((BLOCK,), tl.float32)
    origin = base + top * sy + left * sx
    for iy in range(0, grid_h):
        y = -0.5 + ph * bin_h + (iy + 0.5) * bin_h / grid_h.to(tl.float32)
        y = tl.maximum(y, 0.0)
        y_low = y.to(tl.int64)  # y >= 0: truncation is floor
        y_high = tl.minimum(y_low + 1, h - 1)  # past the crop's last row: that row again
        ly = y - y_low.to(tl.float32)
        hy = 1.0 - ly
        for ix in range(0, grid_w):
            x = -0.5 + col * bin_w + (ix + 0.5) * bin_w / grid_w.to(tl.float32)
            x = tl.maximum(x, 0.0)
            x_low = x.to(tl.int64)
            x_high = tl.minimum(x_low + 1, w - 1)
            lx = x - x_low.to(tl.float32)
            hx = 1.0 - lx
            w1, w2, w3, w4 = hy * hx, hy * lx, ly * hx, ly * lx
            p1 = origin + y_low * sy + x_low * sx
            p2 = origin + y_low * sy + x_high * sx
            p3 = origin + y_high * sy + x_low * sx
            p4 = origin + y_high * sy + x_high * sx
            acc0 += (w1 * tl.load(p1, mask=valid, other=0).to(tl.float32)
                     + w2 * tl.load(p2, mask=valid, other=0).to(tl.float32)
                     + w3 * tl.load(p3, mask=valid, other=0).to(tl.float32)
                     + w4 * tl.load(p4, mask=valid, other=0).to(tl.float32))
            acc1 += (w1 * tl.load(p1 + sc, mask=valid, other=0).to(tl.float32)
                     + w2 * tl.load(p2 + sc, mask=valid, other=0).to(tl.float32)
                     + w3 * tl.load(p3 + sc, mask=valid, other=0).to(tl.float32)
                     + w4 * tl.load(p4 + sc, mask=valid, other=0).to(tl.float32))
            acc2 += (w1 * tl.load(p1 + 2 * sc, mask=valid, other=0).to(tl.float32)
                     + w2 * tl.load(p2 + 2 * sc, mask=valid, other=0).to(tl.float32)
                     + w3 * tl.load(p3 + 2 * sc, mask=valid, other=0).to(tl.float32)
                     + w4 * tl.load(p4 + 2 * sc, mask=valid, other=0).to(tl.float32))
    count = (grid_h * grid_w).to(tl.float32)
    dst = out + n * out_sn + ph * out_sy + pw * out_sx
    tl.store(dst, (acc0 / count) * tl.load(scale) + tl.load(shift), mask=valid)
    tl.store(dst + out_sc, (acc1 / count) * tl.load(scale + 1) + tl.load(shift + 1), mask=valid)
    tl.store(dst + 2 * out_sc, (acc2 / count) * tl.load(scale + 2) + tl.load(shift + 2), mask=valid)


@functools.lru_cache(maxsize=1)
def _kernel():
    """The kernel: compiled by Triton for a CUDA device; on the CPU run by Triton's interpreter, which must be
    asked for before Triton is imported (TRITON_INTERPRET=1: the tests do so in a process of their own)."""
    return triton.jit(_body)


def crop_resize_normalize(table: torch.Tensor, out: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Fill `out` (N, 3, res, res) float32, any memory format) from the images `table` (N, 9) int64 on the same
    device, see COLUMNS) points at: the crop, resized to res x res, flipped where asked, times `scale` plus
    `shift` (3 values each). One launch."""
    n, _, res, res_w = out.shape
    assert res == res_w and table.shape == (n, len(COLUMNS)) and table.dtype == torch.int64
    if n == 0:
        return
    block = max(16, 1 << (res - 1).bit_length())
    sn, sc, sy, sx = out.stride()
    if out.device.type != "cuda" and not triton.knobs.runtime.interpret:
        raise RuntimeError("the resize kernel runs on a CUDA device, or on the CPU with TRITON_INTERPRET=1")
    options = {"num_warps": 4} if out.device.type == "cuda" else {}
    _kernel()[(n, res)](table, out, scale, shift, res, sn, sc, sy, sx, BLOCK=block, **options)


def table_rows(addresses: np.ndarray, strides: np.ndarray, boxes: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """The (N, 9) int64 table: addresses (N,), strides (N, 3) in bytes, boxes (N, 4), flips (N,)."""
    return np.concatenate([np.asarray(addresses, np.int64)[:, None], np.asarray(strides, np.int64),
                           np.asarray(boxes, np.int64), np.asarray(flips, np.int64)[:, None]], 1)
