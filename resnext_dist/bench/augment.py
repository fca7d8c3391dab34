"""`python -m resnext_dist.bench augment`: what the training augmentations cost per batch on the device
(data/augment*.py), each part alone and the V2 recipe's set together, against the plain alternative of calling
torchvision's v2.TrivialAugmentWide once per image (what a per-sample CPU pipeline does, here on the same device),
and kornia's batched candidates when kornia is installed (bench/augment_kornia.py).
The batch is data.batch_size images of data.train_res px (the bench's defaults: 256 at 176 px)."""
from __future__ import annotations

import time

import numpy as np
import torch
from torchvision.transforms import v2

from resnext_dist.bench import augment_kornia, report, workload
from resnext_dist.data.augment_batch import BatchAugment
from resnext_dist.data.normalize import DeviceNormalize

PARTS = {  # row -> BatchAugment's arguments (the V2 recipe's values)
    "trivialaugment": dict(policy="trivialaugment"),
    "randaugment": dict(policy="randaugment"),
    "random erasing 0.1": dict(erasing=0.1),
    "mixup 0.2 / cutmix 1.0": dict(mixup_alpha=0.2, cutmix_alpha=1.0),
    "V2 set (all four but randaugment)": dict(policy="trivialaugment", erasing=0.1, mixup_alpha=0.2,
                                              cutmix_alpha=1.0),
}


def measure(fn, device: torch.device, repeats: int) -> float:
    """Milliseconds per call, the best of `repeats` after one untimed call."""
    fn(0)
    best = float("inf")
    for k in range(1, repeats + 1):
        t0 = time.perf_counter()
        fn(k)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 1000.0 * best


def parser():
    p = workload.bench_parser("augment", __doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="where to run")
    p.add_argument("--repeats", type=int, default=3, help="timed batches per row (the best is reported)")
    return p


def run(argv=None) -> int:
    args = parser().parse_intermixed_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = workload.pick_device(args.device)
    cfg = workload.load(args, device.type, defaults=["data.batch_size=256", "data.train_res=176"],
                        force=["data.loader=synthetic"])
    n, res = cfg.data.batch_size, cfg.data.train_res
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=gen).to(device)
    labels = torch.randint(0, 1000, (n,), generator=gen).to(device)
    images, labels = DeviceNormalize(device, cfg.train.channels_last)(pixels, labels)
    images = images.clone()  # the CPU normalizer recycles its outputs
    rows = []
    for name, kw in PARTS.items():
        aug = BatchAugment(**{**dict(policy=None, erasing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0), **kw}, seed=0,
                           num_classes=1000, device=device)
        ms = measure(lambda k: aug(images, labels, np.arange(k * n, (k + 1) * n), epoch=0), device, args.repeats)
        rows.append({"measure": name, "ms_per_batch": ms, "img_per_s": 1000.0 * n / ms})
    tv = v2.TrivialAugmentWide()
    ms = measure(lambda k: [tv(pixels[i]) for i in range(n)], device, args.repeats)
    rows.append({"measure": "torchvision TrivialAugmentWide, one call per image", "ms_per_batch": ms,
                 "img_per_s": 1000.0 * n / ms})
    per_image, v2_set = rows[-1]["ms_per_batch"], rows[4]["ms_per_batch"]
    kornia = augment_kornia.rows(pixels, labels, lambda fn: measure(fn, device, args.repeats))
    notes = ["kornia not installed: its candidates were not measured"] if kornia is None else []
    for row in rows + (kornia or []):
        row["img_per_s"] = 1000.0 * n / row["ms_per_batch"]
        row["vs_per_image_call"] = per_image / row["ms_per_batch"]
    summary = {"v2_set_ms_per_batch": v2_set}
    if kornia:
        summary["kornia_v2_set_vs_ours"] = kornia[-1]["ms_per_batch"] / v2_set  # > 1: kornia's is slower
    return report.finish("augment", device, args, argv, rows=rows + (kornia or []), notes=notes,
                         title=f"bench augment: batch {n} x {res} px on {workload.device_label(device)}",
                         params={"batch": n, "res": res, "device": device.type, "repeats": args.repeats,
                                 "threads": torch.get_num_threads()},
                         summary=summary)
