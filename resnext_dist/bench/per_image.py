"""Where a loader's time goes, per image, in one thread, with no workers, threads or batches: each decoder's and
resizer's milliseconds for one training image, and the CPU normalization every batch goes through last."""
from __future__ import annotations

import os
import time
from typing import Dict

import numpy as np
import torch

from resnext_dist.data import crop_decode
from resnext_dist.data.normalize import DeviceNormalize
from resnext_dist.errors import InputError


def per_image_costs(folder: str, res: int, n: int = 200) -> Dict[str, float]:
    """Milliseconds per image, in this thread, of the work each loader does for one training image (here a
    centered crop of half the image's area, resized to res px): FFCV's libjpeg-turbo decode of the whole
    JPEG and OpenCV INTER_AREA resize, our decode of the crop only and our INTER_AREA (crop_decode.py, when
    built; what data.crop_decode runs instead), and PIL's decode, torchvision's antialiased bilinear
    resize and the uint8 tensor."""
    from ffcv.libffcv import imdecode, resize_crop
    from PIL import Image
    from torchvision.transforms import v2

    files = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names if f.endswith(".jpg"))[:n]
    steps = ["ffcv_decode", "ffcv_crop_decode", "ffcv_resize", "ffcv_area_resize", "pil_decode", "pil_resize",
             "pil_to_tensor"]
    if not crop_decode.available():
        steps = [step for step in steps if step not in ("ffcv_crop_decode", "ffcv_area_resize")]
    costs = dict.fromkeys(steps, 0.0)
    out = np.empty((res, res, 3), np.uint8)
    for path in files:
        with open(path, "rb") as f:
            data = np.frombuffer(f.read(), np.uint8)
        w, h = Image.open(path).size
        ch, cw = int(h * 0.5 ** 0.5), int(w * 0.5 ** 0.5)
        top, left = (h - ch) // 2, (w - cw) // 2
        buf, part = np.empty((h, w, 3), np.uint8), np.empty((h, w, 3), np.uint8)
        times = [time.perf_counter()]
        if imdecode(data, buf, h, w, h, w, 0, 0, 1, 1, False, False) != 0:
            raise InputError(f"{path}: libjpeg-turbo could not decode it")
        times.append(time.perf_counter())
        if "ffcv_crop_decode" in costs:
            if crop_decode.decode_crop(data, part, top, left, ch, cw, 3 * w) < 0:
                raise InputError(f"{path}: libjpeg could not decode its crop")
            times.append(time.perf_counter())
        resize_crop(buf, top, top + ch, left, left + cw, out)
        times.append(time.perf_counter())
        if "ffcv_area_resize" in costs:
            crop_decode_resize(buf, top, left, ch, cw, out)
            times.append(time.perf_counter())
        img = Image.open(path).convert("RGB")
        times.append(time.perf_counter())
        img = v2.functional.resized_crop(img, top, left, ch, cw, [res, res], antialias=True)
        times.append(time.perf_counter())
        v2.functional.pil_to_tensor(img)
        times.append(time.perf_counter())
        for key, t0, t1 in zip(costs, times, times[1:]):
            costs[key] += t1 - t0
    return {f"ms_per_image_{key}": 1e3 * total / max(1, len(files)) for key, total in costs.items()}


def crop_decode_resize(image: np.ndarray, top: int, left: int, height: int, width: int, out: np.ndarray) -> None:
    """The resize data.crop_decode's decoders do: our INTER_AREA when the crop shrinks, else (it must grow
    in a dimension) FFCV's OpenCV call."""
    from ffcv.libffcv import resize_crop

    if crop_decode.resize_area(image, top, left, height, width, out) != 0:
        resize_crop(image, top, top + height, left, left + width, out)


def cpu_normalize_cost(res: int, batch: int, repeats: int = 10) -> float:
    """Milliseconds per image, in this thread, of what every loader's batch goes through last on a CPU
    device: uint8 to normalized float32 channels-last (data/normalize.py; on a GPU this runs on the
    device). It runs in the training process, beside the loop, whatever the workers do. Each batch is
    dropped before the next, as the training loop does, so outputs are recycled as they are there."""
    normalize = DeviceNormalize(torch.device("cpu"), channels_last=True)
    images = torch.randint(0, 256, (batch, res, res, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    labels = torch.zeros(batch, dtype=torch.int64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        normalize(images, labels)  # first touch
        start = time.perf_counter()
        for _ in range(repeats):
            normalize(images, labels)
        return 1e3 * (time.perf_counter() - start) / (repeats * batch)
    finally:
        torch.set_num_threads(threads)
