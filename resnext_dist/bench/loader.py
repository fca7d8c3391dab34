"""`python -m resnext_dist.bench loader`: FFCV vs the torchvision loader (and synthetic) on the same JPEGs.

    python -m resnext_dist.bench loader                              # 2,048 photos, 176 px, 1 and 2 workers
    python -m resnext_dist.bench loader --workers 8,16 --res 224 --images 8000 --out bench_results/loader.json

It makes N JPEGs (quality 90) of 467x350 px, random crops (and mirror images) of scikit-learn's two sample
photographs, stores them as an ImageFolder and, with the real writer, as a .beton in jpg mode. Then it
times the trainer's own loaders (resnext_dist.data.build_loaders) on them: the same random-resized crop
at --res + flip, the same batch size and number of workers, uint8 to the device and normalization there.
Reported: images per second of the best timed epoch after --warmup untimed ones (the first FFCV epoch
also compiles its pipeline), images per CPU second (every process, workers included: robust to other
programs on a shared machine), and FFCV's speed-up over torchvision in both, at each worker count.
The loaders take turns epoch by epoch, so load from other programs falls on both alike.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch

from resnext_dist.bench import BenchError, report
from resnext_dist.config import DataConfig
from resnext_dist.dist import DistInfo

LOADERS = ("ffcv", "torchvision", "synthetic")
PHOTO_SIZE = (350, 467)  # height, width: ~350 px photos, the shape the targets were measured on


def make_photos(folder: str, n: int, *, classes: int = 10, quality: int = 90, seed: int = 0) -> None:
    """`n` JPEGs in folder/class_k/: random crops of load_sample_images' photos, half of them mirrored."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427x640 RGB photographs
    rng = np.random.default_rng(seed)
    h, w = PHOTO_SIZE
    for k in range(classes):
        os.makedirs(os.path.join(folder, f"class_{k}"), exist_ok=True)
    for i in range(n):
        photo = photos[i % len(photos)]
        top = rng.integers(0, photo.shape[0] - h + 1)
        left = rng.integers(0, photo.shape[1] - w + 1)
        crop = photo[top:top + h, left:left + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        Image.fromarray(np.ascontiguousarray(crop)).save(
            os.path.join(folder, f"class_{i % classes}", f"{i:06d}.jpg"), quality=quality)


def cpu_seconds() -> float:
    """CPU time of this process and its children (DataLoader workers), or NaN without psutil (an FFCV
    dependency). Unlike wall time it barely depends on what else runs on the machine."""
    try:
        import psutil
    except ImportError:
        return float("nan")
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def time_epochs(loaders: Dict[str, object], res: int, warmup: int, epochs: int, device: torch.device,
                torch_threads: int) -> Dict[str, Dict]:
    """Per loader: the best img/s over `epochs` timed epochs after `warmup` untimed ones, images per CPU
    second (all processes) of those epochs, and the first epoch's seconds. Loaders take turns epoch by
    epoch, so a busy machine slows them alike."""
    rates: Dict[str, List[float]] = {name: [] for name in loaders}
    cpu_rates: Dict[str, List[float]] = {name: [] for name in loaders}
    first_s: Dict[str, float] = {}
    for e in range(warmup + epochs):
        for name, train in loaders.items():
            torch.set_num_threads(torch_threads)  # FFCV sets it to its worker count: undo between loaders
            start, cpu_start, n = time.perf_counter(), cpu_seconds(), 0
            for images, labels in train.epoch(e, res):
                n += labels.shape[0]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
            first_s.setdefault(name, seconds)
            if e >= warmup:
                rates[name].append(n / seconds)
                cpu_rates[name].append(n / cpu if cpu > 0 else float("nan"))
    return {name: {"img_per_s": max(rates[name]), "epoch_img_per_s": rates[name],
                   "img_per_cpu_s": max(cpu_rates[name]), "first_epoch_s": first_s[name]} for name in loaders}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resnext_dist.bench loader", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=2048, help="number of JPEGs")
    p.add_argument("--res", type=int, default=176, help="random-resized-crop output size")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare at")
    p.add_argument("--loaders", default="ffcv,torchvision", help=f"comma-separated, of {', '.join(LOADERS)}")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (the best counts)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    p.add_argument("--no-os-cache", action="store_true", help="FFCV: its process cache instead of the OS's")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where batches go")
    p.add_argument("--workdir", default="", help="keep the JPEGs and the .beton here (default: a temporary "
                   "directory, removed afterwards); reused when it already holds them")
    report.add_output_args(p)
    return p


def _parse_args(argv):
    args = parser().parse_args(argv)
    try:
        args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        raise BenchError(f"--workers {args.workers!r}: expected comma-separated integers, e.g. 1,2") from None
    args.loader_list = [name.strip() for name in args.loaders.split(",") if name.strip()]
    bad = [name for name in args.loader_list if name not in LOADERS]
    if bad or not args.loader_list:
        raise BenchError(f"--loaders {args.loaders!r}: choose from {', '.join(LOADERS)}")
    if not args.worker_counts or min(args.worker_counts) < 1:
        raise BenchError(f"--workers {args.workers!r}: each count must be >= 1")
    if args.images < args.batch or args.batch < 1 or args.res < 8:
        raise BenchError(f"--images {args.images} must be >= --batch {args.batch} >= 1, and --res {args.res} >= 8")
    if args.epochs < 1 or args.warmup < 0:
        raise BenchError(f"--epochs {args.epochs} must be >= 1 and --warmup {args.warmup} >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device is visible")
    return args


def prepare_data(workdir: str, n: int) -> Dict[str, str]:
    """The ImageFolder and the jpg-mode .beton of the same photos, made unless already there."""
    from resnext_dist.data.sources import ImageFolderSource
    from resnext_dist.data.write import write_beton

    folder, beton = os.path.join(workdir, "photos"), os.path.join(workdir, "photos.beton")
    marker = os.path.join(workdir, f"photos-{n}.done")
    if not os.path.exists(marker):
        shutil.rmtree(folder, ignore_errors=True)
        print(f"making {n} JPEGs in {folder} ...", flush=True)
        make_photos(folder, n)
        write_beton(ImageFolderSource(folder), beton, write_mode="jpg", jpeg_quality=90, force=True)
        open(marker, "w").close()
    return {"ffcv": beton, "torchvision": folder, "synthetic": ""}


def run(argv=None) -> int:
    args = _parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    from resnext_dist.data import build_loaders

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_loader_")
    os.makedirs(workdir, exist_ok=True)
    try:
        paths = prepare_data(workdir, args.images)
        torch_threads = torch.get_num_threads()
        rows: List[Dict] = []
        summary: Dict[str, float] = {}
        for workers in args.worker_counts:
            loaders = {}
            for name in args.loader_list:
                cfg = DataConfig(loader=name, train=paths[name], batch_size=args.batch, num_workers=workers,
                                 train_res=args.res, random_crop=True, os_cache=not args.no_os_cache,
                                 synthetic_size=args.images)
                loaders[name], _ = build_loaders(cfg, DistInfo(device=device), seed=0, num_classes=10,
                                                 channels_last=True)
            timings = time_epochs(loaders, args.res, args.warmup, args.epochs, device, torch_threads)
            del loaders
            for name, timing in timings.items():
                label = f"{name}, {workers} worker{'s' if workers > 1 else ''}"
                rows.append({"measure": label, "res": args.res, "batch": args.batch, "workers": workers,
                             "loader": name, **timing})
                print(f"{label}: {timing['img_per_s']:,.1f} img/s, {timing['img_per_cpu_s']:,.1f} img per CPU s "
                      f"(first epoch {timing['first_epoch_s']:.1f} s)", flush=True)
            if "ffcv" in timings and "torchvision" in timings:
                ffcv, tv = timings["ffcv"], timings["torchvision"]
                summary[f"ffcv_vs_torchvision_{workers}_workers"] = ffcv["img_per_s"] / tv["img_per_s"]
                summary[f"ffcv_vs_torchvision_{workers}_workers_per_cpu_s"] = \
                    ffcv["img_per_cpu_s"] / tv["img_per_cpu_s"]
        params = {"images": args.images, "photo_hw": list(PHOTO_SIZE), "jpeg_quality": 90, "res": args.res,
                  "batch": args.batch, "workers": args.worker_counts, "loaders": args.loader_list,
                  "epochs": args.epochs, "warmup": args.warmup, "os_cache": not args.no_os_cache}
        notes = ["img/s: best timed epoch after the warm-up; same JPEGs, crop, flip, batch and workers for all",
                 "ffcv_vs_torchvision_N_workers: FFCV img/s / torchvision img/s at N workers (target >= 2.0)",
                 "..._per_cpu_s: the same ratio of images per CPU second (all processes), robust to other load",
                 f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} on "
                 f"{len(os.sched_getaffinity(0))} cores"]
        result = report.make_report("loader", device, argv=argv, params=params, rows=rows, summary=summary,
                                    notes=notes)
        return report.finish(result, args, title=f"bench loader: {args.images} JPEGs 467x350 -> {args.res} px "
                                                  f"random-resized crop + flip, on {device.type}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
