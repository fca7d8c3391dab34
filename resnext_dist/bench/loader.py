"""`python -m resnext_dist.bench loader`: FFCV vs the torchvision loader (and synthetic) on the same JPEGs.

    python -m resnext_dist.bench loader --workers 1,2 --epochs 3           # 2,048 photos of 350x467, 176 px
    python -m resnext_dist.bench loader --workdir /tmp/photos --prepare-only --images 12800 --photo-size 300x400

It makes --images JPEGs cut from scikit-learn's sample photographs, as an ImageFolder and a .beton (kept and
reused with --workdir), then times the trainer's loaders (data.build_loaders with the config's data section) at
each worker count, taking turns epoch by epoch, and each loader's per-image work in one thread. `ffcv-full` is
FFCV with its own whole-image decoders (data.crop_decode=false). See docs/performance.md.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch

from resnext_dist.bench import report, workload
from resnext_dist.data.normalize import DeviceNormalize
from resnext_dist.dist import DistInfo
from resnext_dist.errors import InputError

LOADERS = ("ffcv", "ffcv-full", "torchvision", "synthetic")  # ffcv-full: data.crop_decode=false
PHOTO_SIZE = (350, 467)  # height, width: ~350 px photos, the shape the CPU targets were measured on
MAX_PHOTO_SIZE = (427, 640)  # scikit-learn's sample photographs
DEFAULTS = ["data.train_res=176", "data.batch_size=64"]  # without --config (the CPU figures' shape)


def _save_photos(folder: str, start: int, stop: int, size, classes: int, quality: int, seed: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427x640 RGB photographs
    h, w = size
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])  # image i is the same whichever process makes it
        photo = photos[i % len(photos)]
        top = rng.integers(0, photo.shape[0] - h + 1)
        left = rng.integers(0, photo.shape[1] - w + 1)
        crop = photo[top:top + h, left:left + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        Image.fromarray(np.ascontiguousarray(crop)).save(
            os.path.join(folder, f"class_{i % classes}", f"{i:06d}.jpg"), quality=quality)


def make_photos(folder: str, n: int, *, size=PHOTO_SIZE, classes: int = 10, quality: int = 90,
                seed: int = 0) -> None:
    """`n` JPEGs of `size` (h, w) in folder/class_k/: random crops of load_sample_images' photos, half of
    them mirrored; made by one process per core (12,800 of them take minutes in one)."""
    from concurrent.futures import ProcessPoolExecutor

    for k in range(classes):
        os.makedirs(os.path.join(folder, f"class_{k}"), exist_ok=True)
    procs = min(len(os.sched_getaffinity(0)), max(1, n // 500))
    bounds = np.linspace(0, n, procs + 1).astype(int)
    with ProcessPoolExecutor(procs) as pool:
        jobs = [pool.submit(_save_photos, folder, int(a), int(b), size, classes, quality, seed)
                for a, b in zip(bounds[:-1], bounds[1:])]
        for job in jobs:
            job.result()


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


def per_image_costs(folder: str, res: int, n: int = 200) -> Dict[str, float]:
    """Milliseconds per image, in this thread, of the work each loader does for one training image (here a
    centered crop of half the image's area, resized to res px): FFCV's libjpeg-turbo decode of the whole
    JPEG and OpenCV INTER_AREA resize, our decode of the crop only and our INTER_AREA (crop_decode.py, when
    built; what data.crop_decode runs instead), and PIL's decode, torchvision's antialiased bilinear
    resize and the uint8 tensor. Where the time goes, with no workers, threads or batches."""
    from ffcv.libffcv import imdecode, resize_crop
    from PIL import Image
    from torchvision.transforms import v2

    from resnext_dist.data import crop_decode

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

    from resnext_dist.data import crop_decode

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


def parser():
    p = workload.bench_parser("loader", "FFCV vs the torchvision loader (and synthetic) on the same JPEGs; without "
                                        f"--config: {' '.join(DEFAULTS)}.")
    p.add_argument("--images", type=int, default=2048, help="number of JPEGs")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare at")
    p.add_argument("--loaders", default="ffcv,ffcv-full,torchvision", help=f"comma-separated, of {', '.join(LOADERS)}")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (the best counts)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    p.add_argument("--photo-size", default=f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}",
                   help=f"HxW of the JPEGs, at most {MAX_PHOTO_SIZE[0]}x{MAX_PHOTO_SIZE[1]}")
    p.add_argument("--write-mode", default="jpg", choices=("jpg", "proportion"),
                   help="the .beton's storage: all JPEG, or proportion (a random half JPEG, half raw pixels)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where batches go")
    p.add_argument("--workdir", default="", help="keep the JPEGs and the .beton here (default: a temporary "
                   "directory, removed afterwards); reused when it already holds them")
    p.add_argument("--prepare-only", action="store_true",
                   help="make the JPEGs and the .beton in --workdir, print the .beton's path, time nothing")
    return p


def _check(args, cfg) -> None:
    """Validate the bench's own flags (args.worker_counts, args.loader_list, args.size); InputError."""
    try:
        args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        raise InputError(f"--workers {args.workers!r}: expected comma-separated integers, e.g. 1,2") from None
    if not args.worker_counts or min(args.worker_counts) < 1:
        raise InputError(f"--workers {args.workers!r}: each count must be >= 1")
    args.loader_list = [name.strip() for name in args.loaders.split(",") if name.strip()]
    if not args.loader_list or set(args.loader_list) - set(LOADERS):
        raise InputError(f"--loaders {args.loaders!r}: choose from {', '.join(LOADERS)}")
    if args.images < cfg.data.batch_size or cfg.data.train_res < 8:
        raise InputError(f"--images {args.images} must be >= data.batch_size={cfg.data.batch_size}, and "
                         f"data.train_res={cfg.data.train_res} >= 8")
    if args.epochs < 1 or args.warmup < 0:
        raise InputError(f"--epochs {args.epochs} must be >= 1 and --warmup {args.warmup} >= 0")
    size = args.photo_size.lower().split("x")
    args.size = tuple(int(v) for v in size) if len(size) == 2 and all(v.isdigit() for v in size) else ()
    if len(args.size) != 2 or not all(8 <= v <= m for v, m in zip(args.size, MAX_PHOTO_SIZE)):
        raise InputError(f"--photo-size {args.photo_size!r}: expected HxW between 8x8 and "
                         f"{MAX_PHOTO_SIZE[0]}x{MAX_PHOTO_SIZE[1]}, e.g. 300x400")
    if args.prepare_only and not args.workdir:
        raise InputError("--prepare-only needs --workdir (where the .beton is kept)")


def prepare_data(workdir: str, n: int, size=PHOTO_SIZE, write_mode: str = "jpg") -> Dict[str, str]:
    """The ImageFolder and the .beton of the same photos, each made unless already there (a marker file
    written last says a folder is complete; the writer itself writes the .beton atomically)."""
    from resnext_dist.data.sources import ImageFolderSource
    from resnext_dist.data.write import write_beton

    h, w = size
    folder = os.path.join(workdir, f"photos_{h}x{w}")
    beton = os.path.join(workdir, f"photos_{n}_{h}x{w}_{write_mode}.beton")
    marker = folder + f".{n}.done"
    if not os.path.exists(marker):
        shutil.rmtree(folder, ignore_errors=True)
        if os.path.exists(beton):
            os.remove(beton)  # made from the images just removed
        print(f"making {n} JPEGs of {h}x{w} in {folder} ...", flush=True)
        make_photos(folder, n, size=size)
        open(marker, "w").close()
    if not os.path.exists(beton):
        write_beton(ImageFolderSource(folder), beton, write_mode=write_mode, jpeg_quality=90)
    return {"ffcv": beton, "torchvision": folder, "synthetic": ""}


def run(argv=None) -> int:
    args = parser().parse_intermixed_args(argv)
    device = workload.pick_device(args.device)
    cfg = workload.load(args, device.type, defaults=DEFAULTS, force=["data.loader=synthetic"])
    _check(args, cfg)
    res, batch = cfg.data.train_res, cfg.data.batch_size
    from resnext_dist.data import build_loaders

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_loader_")
    os.makedirs(workdir, exist_ok=True)
    try:
        paths = prepare_data(workdir, args.images, args.size, args.write_mode)
        if args.prepare_only:
            print(paths["ffcv"])
            return 0
        torch_threads = torch.get_num_threads()
        rows: List[Dict] = []
        summary: Dict[str, float] = per_image_costs(paths["torchvision"], res)
        if device.type == "cpu":
            summary["ms_per_image_cpu_normalize"] = cpu_normalize_cost(res, batch)
        print("per image, one thread: " + ", ".join(f"{key[len('ms_per_image_'):]} {ms:.2f} ms"
                                                    for key, ms in summary.items()), flush=True)
        for workers in args.worker_counts:
            loaders = {}
            for name in args.loader_list:
                loader = "ffcv" if name == "ffcv-full" else name
                data = dataclasses.replace(cfg.data, loader=loader, train=paths[loader], val="", num_workers=workers,
                                           crop_decode=cfg.data.crop_decode and name != "ffcv-full",
                                           synthetic_size=args.images)
                loaders[name], _ = build_loaders(data, DistInfo(device=device), seed=0, num_classes=10,
                                                 channels_last=True)
            timings = time_epochs(loaders, res, args.warmup, args.epochs, device, torch_threads)
            del loaders
            for name, timing in timings.items():
                label = f"{name}, {workers} worker{'s' if workers > 1 else ''}"
                rows.append({"measure": label, "res": res, "batch": batch, "workers": workers, "loader": name,
                             **timing})
                print(f"{label}: {timing['img_per_s']:,.1f} img/s, {timing['img_per_cpu_s']:,.1f} img per CPU s "
                      f"(first epoch {timing['first_epoch_s']:.1f} s)", flush=True)
            if "ffcv" in timings and "torchvision" in timings:
                ffcv, tv = timings["ffcv"], timings["torchvision"]
                summary[f"ffcv_vs_torchvision_{workers}_workers"] = ffcv["img_per_s"] / tv["img_per_s"]
                summary[f"ffcv_vs_torchvision_{workers}_workers_per_cpu_s"] = \
                    ffcv["img_per_cpu_s"] / tv["img_per_cpu_s"]
            if "ffcv" in timings and "ffcv-full" in timings:
                summary[f"crop_decode_speedup_{workers}_workers"] = \
                    timings["ffcv"]["img_per_s"] / timings["ffcv-full"]["img_per_s"]
        params = {**{k: v for k, v in workload.params(cfg).items() if k.startswith("data.")}, "images": args.images,
                  "photo_hw": list(args.size), "write_mode": args.write_mode, "jpeg_quality": 90,
                  "workers": args.worker_counts, "loaders": args.loader_list, "epochs": args.epochs,
                  "warmup": args.warmup}
        notes = ["img/s: best timed epoch after the warm-up; same JPEGs, crop, flip, batch and workers for all",
                 "ffcv_vs_torchvision_N_workers: FFCV img/s / torchvision img/s at N workers (target >= 2.0); "
                 "..._per_cpu_s: the same ratio of images per CPU second (all processes), robust to other load",
                 "crop_decode_speedup_N_workers: FFCV decoding only each crop (data.crop_decode) / whole JPEGs",
                 "ms_per_image_*: one thread, one image (a centered crop of half its area to data.train_res px): "
                 "FFCV's decode + OpenCV INTER_AREA, ours (crop only + our INTER_AREA), PIL decode + resize"
                 + ("; cpu_normalize: a batch to normalized float32 per image, in the training process on a CPU"
                    if device.type == "cpu" else ""),
                 f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} on "
                 f"{len(os.sched_getaffinity(0))} cores"]
        return report.finish("loader", device, args, argv, params=params, rows=rows, summary=summary, notes=notes,
                             title=f"bench loader: {args.images} JPEGs {args.size[0]}x{args.size[1]} "
                                   f"({args.write_mode}) -> {res} px, batch {batch}, on {device.type}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
