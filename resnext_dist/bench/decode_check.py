"""`python -m resnext_dist.bench decode_check`: is data.decode=gpu's output right while a model trains?

    python -m resnext_dist.bench decode_check                    # 375x500 photos, proportion mode, 224 px
    python -m resnext_dist.bench decode_check --repeats 4 data.batch_size=8 data.train_res=32 ...  # CPU-sized

One fixed batch of stored bytes (FFCV's rows, JPEGs and raw pixels: proportion mode) and fixed crop boxes are
decoded again and again by the decode-ahead thread (data/decode_ahead.py: its own CUDA stream, the event and
record_stream hand-over), while the main thread trains the model on each decoded batch as it comes (so the
training stream reads decode output while the next decode runs: the memory race of pytorch/vision#9606, if the
pipeline had one, would corrupt batches here). Each decoded batch must equal the first bit for bit, and the
first must match the same decode on the CPU (libjpeg-turbo) within the tests' tolerance (unnormalized pixels:
mean |diff| < 1.5 levels, max <= 12) and, on a CUDA device, where the resize is resize_kernel.py's one launch, the
reference resize (roi_align) of the same decode on the same device to float rounding (KERNEL_MAX, normalized
units). Exit 1 when any fails: launch/gpu_bench.sh runs it before any timing.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from resnext_dist.bench import report, workload
from resnext_dist.bench.decode import IMAGENET_TEXTURE, stored_batches
from resnext_dist.bench.photos import prepare_data
from resnext_dist.errors import InputError

DEFAULTS = ["data.train_res=224", "data.batch_size=256"]
MEAN_LEVELS, MAX_LEVELS = 1.5, 12  # tests/unit/test_device_decode.py's tolerance against the CPU path
KERNEL_MAX = 1e-3  # the kernel against the reference resize, same pixels in: float rounding (2e-7 on a CPU)


def pixels(images: torch.Tensor) -> np.ndarray:
    """Normalized float NCHW back to integer pixel levels (for the CPU comparison)."""
    from resnext_dist.data.normalize import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return (images.float().cpu() * std + mean).round().clamp(0, 255).to(torch.int32).numpy()


def check(stored: np.ndarray, cfg, device: torch.device, repeats: int) -> dict:
    """The batch decoded `repeats` times on `device` while the model trains on each; against itself and the CPU."""
    from resnext_dist.data import device_decode
    from resnext_dist.data.decode_ahead import decode_ahead
    from resnext_dist.models import build_model

    res = cfg.data.train_res
    boxes, flips = device_decode.train_boxes(device_decode.headers(stored), seed=0, epoch=0, random_crop=True,
                                             val_crop_ratio=cfg.data.val_crop_ratio)
    reference = device_decode.DeviceDecoder(torch.device("cpu"), channels_last=True)(stored, boxes, flips, res)
    decoder = device_decode.DeviceDecoder(device, channels_last=True)
    model = build_model(cfg.model).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    labels = torch.zeros(len(stored), dtype=torch.int64)
    source = ((stored, labels) for _ in range(repeats))
    first, unequal = None, 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else None
    for images, y in decode_ahead(source, lambda s: decoder(s, boxes, flips, res), device, ahead=2):
        if first is None:
            first = images.clone()
        with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
            loss = F.cross_entropy(model(images).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        unequal += int(not torch.equal(images, first))  # a read: this check waits, the trainer does not
    diff = np.abs(pixels(first) - pixels(reference))
    # the same decode on the same device, resized by the reference: the kernel's own error, apart from nvJPEG's
    same_device = device_decode.DeviceDecoder(device, channels_last=True, kernel=False)(stored, boxes, flips, res)
    kernel_max = float((first - same_device).abs().max())
    ok = unequal == 0 and diff.mean() < MEAN_LEVELS and diff.max() <= MAX_LEVELS and kernel_max <= KERNEL_MAX
    return {"repeats": repeats, "unequal_repeats": unequal, "cpu_mean_levels": float(diff.mean()),
            "cpu_max_levels": int(diff.max()), "resize": "kernel" if decoder.kernel else "reference",
            "vs_reference_resize_max": kernel_max, "ok": bool(ok)}


def parser():
    p = workload.bench_parser("decode_check", "data.decode=gpu's output while a model trains: the same batch "
                                              "decoded again and again equals itself bit for bit and the CPU decode "
                                              f"within the tests' tolerance; without --config: {' '.join(DEFAULTS)}.")
    p.add_argument("--photo-size", default="375x500", help="HxW of the photos (ImageNet-like: longest side 500)")
    p.add_argument("--repeats", type=int, default=30, help="decodes of the fixed batch, each trained on")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the decode runs")
    p.add_argument("--workdir", default="", help="keep the photos and .beton here (default: a temporary folder)")
    return p


def run(argv=None) -> int:
    args, device, cfg = workload.start(parser(), argv, defaults=DEFAULTS)
    parts = args.photo_size.lower().split("x")
    if len(parts) != 2 or not all(v.isdigit() and 8 <= int(v) <= 1000 for v in parts):
        raise InputError(f"--photo-size {args.photo_size!r}: expected HxW between 8x8 and 1000x1000")
    if args.repeats < 2:
        raise InputError(f"--repeats {args.repeats} must be >= 2")
    size, batch = (int(parts[0]), int(parts[1])), cfg.data.batch_size
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_decode_check_")
    os.makedirs(workdir, exist_ok=True)
    try:
        # at least one photo per class of the bench's photo folder (10); ImageNet-sized JPEGs (~110 KB at 375x500)
        path = prepare_data(workdir, max(batch, 10), size, "proportion", texture=IMAGENET_TEXTURE)["ffcv"]
        result = check(stored_batches(path, batch, 1)[0], cfg, device, args.repeats)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"decode check: {'ok' if result['ok'] else 'FAILED'}: {result['unequal_repeats']} of {args.repeats} "
          f"decodes differ from the first; against the CPU decode: mean {result['cpu_mean_levels']:.2f}, max "
          f"{result['cpu_max_levels']} levels (allowed < {MEAN_LEVELS}, <= {MAX_LEVELS}); {result['resize']} resize "
          f"against the reference on the same decode: max {result['vs_reference_resize_max']:.2g} (allowed <= "
          f"{KERNEL_MAX:g})", flush=True)
    title = (f"bench decode_check: {batch} photos {size[0]}x{size[1]} (proportion) -> {cfg.data.train_res} px, "
             f"decoded {args.repeats} times while training, on {workload.device_label(device)}")
    rows = [{"measure": "decode while training", "res": cfg.data.train_res, "batch": batch, **result}]
    params = {"photo_hw": list(size), "repeats": args.repeats, "device": device.type, "batch": batch,
              "res": cfg.data.train_res}
    code = report.finish("decode_check", device, args, argv, title=title, params=params, rows=rows,
                         summary={"decode_check_ok": result["ok"]})
    return code if result["ok"] else 1
