"""Runs data.decode=gpu's resize kernel (resnext_dist/data/resize_kernel.py) in Triton's interpreter on the CPU
against the reference path, and prints what tests/unit/test_resize_kernel.py checks, as JSON:

    TRITON_INTERPRET=1 python -m tests.kernel_interpreted

(Triton reads TRITON_INTERPRET when it is imported, hence a process of its own.)
"""
import io
import json

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from resnext_dist.data import device_decode, resize_kernel
from resnext_dist.data.errors import CorruptImage
from tests.stored_rows import rows_of


class Ops(TorchDispatchMode):
    """Counts the torch ops dispatched while active (on a GPU each is a launch or a copy), the JPEG decode and
    the resize kernel's launch as one each (torchvision decodes a list one image at a time on the CPU, in one
    call on CUDA; what Triton's interpreter does with torch is not the GPU's work). Not counted: wrapping a
    NumPy array (no device work) and torchvision's version query."""

    FREE = ("aten.lift_fresh", "torchvision._cuda_version")

    def __init__(self):
        super().__init__()
        self.count, self.paused = 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not self.paused and not str(func).startswith(self.FREE)
        return func(*args, **(kwargs or {}))

    def one(self, call):
        def counted(*args):
            self.count, self.paused = self.count + 1, True
            try:
                return call(*args)
            finally:
                self.paused = False
        return counted


def samples(count: int, seed: int = 0):
    """Photo-like images of mixed sizes, every other one stored as a JPEG, the rest raw (height x width x 3)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        h, w = int(rng.integers(9, 41)), int(rng.integers(9, 41))
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.stack([xx * 7 + k * 13, yy * 5, (xx * yy) % 97 * 2], -1)
        image = np.clip(image + rng.integers(0, 40, image.shape), 0, 255).astype(np.uint8)
        if k % 2 == 0:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG", quality=90)
            out.append((np.frombuffer(buffer.getvalue(), np.uint8), device_decode.JPEG, h, w))
        else:
            out.append((image.reshape(-1), device_decode.RAW, h, w))
    return out


def boxes_for(batch, seed: int):
    """Random-resized crops, and the awkward ones: the whole image, 1 x 1, one row, one column."""
    records = device_decode.headers(batch)
    u = device_decode.keyed_uniforms(seed, 0, records["index"])
    boxes = device_decode.random_crops(records["height"], records["width"], u)
    h, w = records["height"].astype(np.int64), records["width"].astype(np.int64)
    boxes[0] = (0, 0, h[0], w[0])
    boxes[1] = (h[1] - 1, w[1] - 1, 1, 1)
    boxes[2] = (3, 0, 1, w[2])
    boxes[3] = (0, w[3] // 2, h[3], 1)
    return boxes, u[:, -1] < 0.5


LAUNCH = resize_kernel.crop_resize_normalize


def decode(kernel: bool, batch, boxes, flips, res, channels_last=True):
    ops = Ops()
    resize_kernel.crop_resize_normalize = ops.one(LAUNCH)
    decoder = device_decode.DeviceDecoder(torch.device("cpu"), channels_last, "x.beton", kernel=kernel)
    decoder._decode_jpegs = ops.one(decoder._decode_jpegs)
    with ops:
        out = decoder(batch, boxes, flips, res)
    return out, ops.count


def main() -> None:
    result = {"max_abs_diff": {}, "kernel_ops": {}, "reference_ops": {}}
    data = samples(6)
    for n in (4, 6):
        batch = rows_of(data, list(range(n)))
        boxes, flips = boxes_for(batch, seed=n)
        for res, channels_last in ((12, True), (5, False)):
            got, kernel_ops = decode(True, batch, boxes, flips, res, channels_last)
            want, reference_ops = decode(False, batch, boxes, flips, res, channels_last)
            assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            result["max_abs_diff"][f"n{n}_res{res}"] = float((got - want).abs().max())
            result["kernel_ops"][f"n{n}_res{res}"] = kernel_ops
            result["reference_ops"][f"n{n}_res{res}"] = reference_ops
    broken = list(data)
    broken[2] = (broken[2][0][:40], device_decode.JPEG, broken[2][2], broken[2][3])  # a cut JPEG
    batch = rows_of(broken, [0, 1, 2, 3])
    try:
        decode(True, batch, *boxes_for(batch, 0), 4)
        result["corrupt"] = None
    except CorruptImage as e:
        result["corrupt"] = str(e)
    lying = list(data)
    lying[1] = (lying[1][0], device_decode.RAW, lying[1][2] + 5, lying[1][3])  # more rows than it stores
    batch = rows_of(lying, [0, 1, 2, 3])
    result["raw_too_short"] = {}
    for kernel in (True, False):
        try:
            decode(kernel, batch, np.array([(0, 0, 4, 4)] * 4), np.zeros(4, bool), 4)
            result["raw_too_short"][str(kernel)] = None
        except CorruptImage as e:
            result["raw_too_short"][str(kernel)] = str(e)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
