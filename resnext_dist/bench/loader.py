"""`python -m resnext_dist.bench loader`: FFCV vs the torchvision loader (and synthetic) on the same JPEGs.

    python -m resnext_dist.bench loader --workers 1,2 --epochs 3           # 2,048 photos of 350x467, 176 px
    python -m resnext_dist.bench loader --loaders ffcv --decode cpu,gpu --cores 2,4,6,all   # data.decode, per core
    python -m resnext_dist.bench loader --workdir /tmp/photos --prepare-only --images 12800 --photo-size 300x400

It makes --images JPEGs cut from scikit-learn's sample photographs, as an ImageFolder and a .beton (kept and
reused with --workdir), then times the trainer's loaders (data.build_loaders with the config's data section) at
each worker count, taking turns epoch by epoch, and each loader's per-image work in one thread. `ffcv-full` is
FFCV with its own whole-image decoders (data.crop_decode=false); `ffcv-gpu` is data.decode=gpu (FFCV reads the
stored bytes; decoding and augmentation run on the device: its time per image and, on CUDA, its peak memory are
reported). --cores N,...: each count is measured in a child process pinned to that many cores
(os.sched_setaffinity, so every thread it starts stays on them) with as many workers as cores, so "images per
second per core" is measured, not inferred. The images: bench/photos.py; the per-image costs: bench/per_image.py.

Beyond memory: `ffcv-random` and `ffcv-pages` read through FFCV's own page cache (data.os_cache=false) in the exact
random order and in the page-friendly one (data.order); `ffcv-staged` is ffcv-pages reading a copy that
data.stage_dir made in WORKDIR/stage (the copy's time is the row's build_s). --memory-limit SIZE runs each loader
in a child process inside a memory cgroup of SIZE (bench/memory_limit.py) with the .beton dropped from the page
cache first, and once more `ffcv-in-cache` without the limit (the file cached by a warm-up epoch) as the
reference; rows report the bytes read from the disk per image and the cgroup's peak memory; a child killed by the
OOM killer is a row saying so. See docs/performance.md.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import torch

from resnext_dist.bench import report, workload
from resnext_dist.bench.memory_limit import MemoryCgroup, drop_from_page_cache, parse_size, read_bytes
from resnext_dist.bench.per_image import cpu_normalize_cost, per_image_costs
from resnext_dist.bench.photos import MAX_PHOTO_SIZE, PHOTO_SIZE, prepare_data
from resnext_dist.data import build_loaders
from resnext_dist.dist import DistInfo
from resnext_dist.errors import InputError

LOADERS = ("ffcv", "ffcv-full", "torchvision", "synthetic", "ffcv-random", "ffcv-pages", "ffcv-staged")
# How each ffcv variant reads the file (DataConfig fields; ffcv-full is data.crop_decode=false); STAGE: its folder
READING = {"ffcv-random": dict(os_cache=False, order="random"), "ffcv-pages": dict(os_cache=False, order="pages"),
           "ffcv-staged": dict(os_cache=False, order="pages", stage_dir="STAGE")}
DECODES = ("cpu", "gpu")  # data.decode of the ffcv loaders; gpu is timed as `ffcv-gpu`
DEFAULTS = ["data.train_res=176", "data.batch_size=64"]  # without --config (the CPU figures' shape)


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


class DeviceTimer:
    """Stands in for a data.decode=gpu loader's device decoder (`train.on_device`) and times its calls: CUDA
    events around each on a GPU (the stream's time from the decoder's first kernel to its last), wall time on
    a CPU. `ms_per_image()` since the last `reset()`."""

    def __init__(self, decoder, device: torch.device):
        self.decoder, self.device = decoder, device
        self.reset()

    def reset(self) -> None:
        self.seconds, self.images, self.events = 0.0, 0, []

    def __call__(self, stored, boxes, flips, res):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.decoder(stored, boxes, flips, res)
            end.record()
            self.events.append((start, end))
        else:
            t = time.perf_counter()
            out = self.decoder(stored, boxes, flips, res)
            self.seconds += time.perf_counter() - t
        self.images += len(boxes)
        return out

    def ms_per_image(self) -> float:
        if self.events:
            torch.cuda.synchronize(self.device)
            self.seconds += sum(s.elapsed_time(e) for s, e in self.events) / 1e3
            self.events = []
        return 1e3 * self.seconds / max(1, self.images)


def time_epochs(loaders: Dict[str, object], res: int, warmup: int, epochs: int, device: torch.device,
                torch_threads: int) -> Dict[str, Dict]:
    """Per loader: the best img/s over `epochs` timed epochs after `warmup` untimed ones, images per CPU
    second (all processes) of those epochs, and the first epoch's seconds; for data.decode=gpu loaders the
    device decoder's milliseconds per image, and on CUDA each loader's peak device memory. Loaders take turns
    epoch by epoch, so a busy machine slows them alike."""
    rates: Dict[str, List[float]] = {name: [] for name in loaders}
    cpu_rates: Dict[str, List[float]] = {name: [] for name in loaders}
    disk: Dict[str, List[int]] = {name: [0, 0] for name in loaders}  # bytes read from storage, images (timed)
    first_s: Dict[str, float] = {}
    peak_mb: Dict[str, float] = {}
    timers = {name: DeviceTimer(train.on_device, device) for name, train in loaders.items()
              if getattr(train, "on_device", None) is not None}
    for name, timer in timers.items():
        loaders[name].on_device = timer
    for e in range(warmup + epochs):
        for name, train in loaders.items():
            torch.set_num_threads(torch_threads)  # FFCV sets it to its worker count: undo between loaders
            if e == warmup and name in timers:
                timers[name].reset()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start, cpu_start, read_start, n = time.perf_counter(), cpu_seconds(), read_bytes(), 0
            for images, labels in train.epoch(e, res):
                n += labels.shape[0]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peak_mb[name] = max(peak_mb.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
            first_s.setdefault(name, seconds)
            if e >= warmup:
                disk[name][0] += read_bytes() - read_start
                disk[name][1] += n
                rates[name].append(n / seconds)
                cpu_rates[name].append(n / cpu if cpu > 0 else float("nan"))
    cores = len(os.sched_getaffinity(0))
    return {name: {"img_per_s": max(rates[name]), "epoch_img_per_s": rates[name], "cores": cores,
                   "img_per_s_per_core": max(rates[name]) / cores, "img_per_cpu_s": max(cpu_rates[name]),
                   "first_epoch_s": first_s[name], "read_mb_per_image": disk[name][0] / max(1, disk[name][1]) / 1e6,
                   **({"device_ms_per_image": timers[name].ms_per_image()} if name in timers else {}),
                   **({"peak_mem_mb": peak_mb[name]} if name in peak_mb else {})} for name in loaders}


def parser():
    p = workload.bench_parser("loader", "FFCV vs the torchvision loader (and synthetic) on the same JPEGs; without "
                                        f"--config: {' '.join(DEFAULTS)}.")
    p.add_argument("--images", type=int, default=2048, help="number of JPEGs")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare at")
    p.add_argument("--loaders", default="ffcv,ffcv-full,torchvision", help=f"comma-separated, of {', '.join(LOADERS)}")
    p.add_argument("--decode", default="cpu", help="comma-separated data.decode values for the ffcv loaders "
                   "(gpu: the `ffcv-gpu` loader; it runs on a CPU too, with CPU decode)")
    p.add_argument("--cores", default="", help="comma-separated core counts (or `all`): each measured in a child "
                   "process pinned to that many cores, with as many workers as cores (--workers is then ignored)")
    p.add_argument("--memory-limit", default="", metavar="SIZE", help="each loader in a child process limited to "
                   "SIZE of memory and page cache (a memory cgroup: root), the .beton out of the page cache first; "
                   "plus ffcv-in-cache, unlimited, as the reference. The .beton must be larger than SIZE")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (the best counts)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    p.add_argument("--photo-size", default=f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}",
                   help=f"HxW of the JPEGs, at most {MAX_PHOTO_SIZE[0]}x{MAX_PHOTO_SIZE[1]}")
    p.add_argument("--write-mode", default="jpg", choices=("jpg", "proportion"),
                   help="the .beton's storage: all JPEG, or proportion (a random half JPEG, half raw pixels)")
    p.add_argument("--texture", type=float, default=0.0, help="noise (std, levels) added to each photo: 26 makes "
                   "375x500 JPEGs of ~110 KB, ImageNet's size (bench/photos.py); 0: the smooth photos as they are")
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
    args.decode_list = [d.strip() for d in args.decode.split(",") if d.strip()]
    if not args.decode_list or set(args.decode_list) - set(DECODES):
        raise InputError(f"--decode {args.decode!r}: choose from {', '.join(DECODES)}")
    cpus = len(os.sched_getaffinity(0))
    args.core_counts = [cpus if c.strip() == "all" else int(c) if c.strip().isdigit() else -1
                        for c in args.cores.split(",") if c.strip()]
    if any(not 1 <= c <= cpus for c in args.core_counts):
        raise InputError(f"--cores {args.cores!r}: expected counts between 1 and this machine's {cpus} cores, or all")
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
    if args.texture < 0:
        raise InputError(f"--texture {args.texture} must be >= 0")
    args.limit_bytes = parse_size(args.memory_limit) if args.memory_limit else 0
    if args.prepare_only and not args.workdir:
        raise InputError("--prepare-only needs --workdir (where the .beton is kept)")


def variants(loader_list: List[str], decode_list: List[str]) -> List[tuple]:
    """(name, data.loader, data.decode, data.crop_decode) of each loader timed: ffcv and ffcv-full once per decode
    (with data.decode=gpu, ffcv and ffcv-full are the same `ffcv-gpu`: the CPU decodes nothing)."""
    out = []
    for name in loader_list:
        for decode in (decode_list if name in ("ffcv", "ffcv-full") else ["cpu"]):
            label = "ffcv-gpu" if decode == "gpu" else name
            if label not in [v[0] for v in out]:
                out.append((label, "ffcv" if name.startswith("ffcv") else name, decode, name != "ffcv-full"))
    return out


def run_pinned(args, argv: List[str], workdir: str, device: torch.device, title: str) -> int:
    """--cores: this bench once per core count, each in a child pinned to the first N cores of this process's,
    with N workers (numba's pool sized N too); the children's rows in one table."""
    cpus = sorted(os.sched_getaffinity(0))
    rows, summary, children = [], {}, []
    for n in args.core_counts:
        out = os.path.join(workdir, f"loader_{n}_cores.json")
        # later options win: the child's own cores, workers, data and output
        cmd = [sys.executable, "-m", "resnext_dist.bench", "loader", *argv, "--cores", "", "--workers", str(n),
               "--workdir", workdir, "--out", out, "--mlflow", ""]
        print(f"--- {n} core{'s' if n > 1 else ''}: cores {cpus[:n]}", flush=True)
        proc = subprocess.run(cmd, env={**os.environ, "NUMBA_NUM_THREADS": str(n)},
                              preexec_fn=lambda n=n: os.sched_setaffinity(0, cpus[:n]))
        if proc.returncode != 0:
            raise InputError(f"bench loader at {n} cores failed (exit {proc.returncode}; its output is above)")
        result = report.load_results([out])[0]
        children.append(result)
        rows += [{**row, "measure": f"{row['measure']}, {n} core{'s' if n > 1 else ''}"} for row in result["rows"]]
        summary.update({f"{key}_{n}_cores": value for key, value in result["summary"].items()
                        if not key.startswith("ms_per_image_")})
    summary.update({k: v for k, v in children[-1]["summary"].items() if k.startswith("ms_per_image_")})
    params = {k: v for k, v in children[-1]["params"].items() if k not in ("config", "overrides")}
    return report.finish("loader", device, args, argv, params={**params, "cores": args.core_counts}, rows=rows,
                         summary=summary, notes=children[-1]["notes"], title=f"{title}, at {args.cores} cores")


def run_limited(args, argv: List[str], workdir: str, beton: str, device: torch.device, title: str) -> int:
    """--memory-limit: each loader in a child process in a memory cgroup of that size, the .beton (and any staged
    copy) dropped from the page cache before it; first `ffcv-in-cache`, unlimited, after a warm read of the file."""
    limit = args.limit_bytes
    if os.path.getsize(beton) <= limit:
        raise InputError(f"--memory-limit {args.memory_limit}: {beton} ({os.path.getsize(beton) / 2**30:.2f} GiB) "
                         "fits in it; give more --images (or a larger --photo-size) or a smaller limit")
    stage = os.path.join(workdir, "stage")
    rows, summary = [], {}
    for name in ["ffcv-in-cache", *args.loader_list]:
        out = os.path.join(workdir, f"loader_{name}_limited.json")
        shutil.rmtree(stage, ignore_errors=True)  # ffcv-staged copies afresh: its build_s is the copy
        drop_from_page_cache(beton)
        cgroup = MemoryCgroup(limit, f"resnext_bench_{os.getpid()}_{name}") if name != "ffcv-in-cache" else None
        cmd = [sys.executable, "-m", "resnext_dist.bench", "loader", *argv, "--memory-limit", "", "--workdir", workdir,
               "--loaders", "ffcv" if cgroup is None else name, "--out", out, "--mlflow", ""]
        print(f"--- {name}: " + (f"limited to {limit / 2**30:.2f} GiB" if cgroup else "no limit"), flush=True)
        try:
            proc = subprocess.run(cmd, preexec_fn=cgroup.enter if cgroup else None)
            killed = cgroup is not None and proc.returncode != 0 and (cgroup.oom_kills() or proc.returncode == -9)
            peak = cgroup.peak() if cgroup else None
        finally:
            if cgroup:
                cgroup.remove()
        if killed:
            print(f"{name}: killed by the OOM killer at the {limit / 2**30:.2f} GiB limit", flush=True)
            rows.append({"measure": f"{name}: killed (out of memory)", "loader": name, "img_per_s": None,
                         **({"cgroup_peak_mb": peak / 2**20} if peak else {})})
            continue
        if proc.returncode != 0:
            raise InputError(f"bench loader {name} under --memory-limit failed (exit {proc.returncode}; its output is "
                             "above)")
        for row in report.load_results([out])[0]["rows"]:
            where = "in cache, no limit" if cgroup is None else f"{limit / 2**30:.2f} GiB limit"
            rows.append({**row, "loader": name, "measure": f"{row['measure'].replace('ffcv,', name + ',', 1)}, "
                         f"{where}", **({"cgroup_peak_mb": peak / 2**20} if peak else {})})
    reference = next((r for r in rows if r["loader"] == "ffcv-in-cache"), None)
    for row in rows:
        if reference and row.get("img_per_s") and row is not reference:
            key = f"vs_in_cache_{row['loader']}_{row['workers']}_workers"
            summary[key] = row["img_per_s"] / reference["img_per_s"]
            summary[key + "_per_cpu_s"] = row["img_per_cpu_s"] / reference["img_per_cpu_s"]
        if row.get("read_mb_per_image") is not None:
            summary[f"read_mb_per_image_{row['loader']}_{row['workers']}_workers"] = row["read_mb_per_image"]
    params = {"images": args.images, "photo_hw": list(args.size), "write_mode": args.write_mode, "texture": args.texture,
              "beton_bytes": os.path.getsize(beton), "memory_limit_bytes": limit, "loaders": args.loader_list,
              "workers": args.worker_counts, "epochs": args.epochs, "warmup": args.warmup}
    notes = [f"each loader in its own process limited to {limit / 2**30:.2f} GiB (memory + page cache, a memory "
             f"cgroup) on a {os.path.getsize(beton) / 2**30:.2f} GiB .beton, dropped from the page cache first; "
             "ffcv-in-cache: no limit, the file cached by the warm-up epoch",
             "read_mb_per_image: bytes read from the disk in the timed epochs (/proc/self/io read_bytes) / images; "
             "cgroup_peak_mb: the cgroup's peak charge (process memory + page cache)",
             "vs_in_cache_*: img/s / ffcv-in-cache's img/s at the same workers; ..._per_cpu_s: the same ratio of "
             "images per CPU second (robust to other load on the machine, blind to time spent waiting for the disk)"]
    return report.finish("loader", device, args, argv, params=params, rows=rows, summary=summary, notes=notes,
                         title=f"{title}, beyond memory")


def run(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, device, cfg = workload.start(parser(), argv, defaults=DEFAULTS)
    _check(args, cfg)
    res, batch = cfg.data.train_res, cfg.data.batch_size

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_loader_")
    os.makedirs(workdir, exist_ok=True)
    try:
        paths = prepare_data(workdir, args.images, args.size, args.write_mode, texture=args.texture)
        if args.prepare_only:
            print(paths["ffcv"])
            return 0
        title = (f"bench loader: {args.images} JPEGs {args.size[0]}x{args.size[1]} ({args.write_mode}) -> {res} px, "
                 f"batch {batch}, on {device.type}")
        if args.core_counts:
            return run_pinned(args, argv, workdir, device, title)
        if args.memory_limit:
            return run_limited(args, argv, workdir, paths["ffcv"], device, title)
        torch_threads = torch.get_num_threads()
        rows: List[Dict] = []
        summary: Dict[str, float] = per_image_costs(paths["torchvision"], res)
        if device.type == "cpu":
            summary["ms_per_image_cpu_normalize"] = cpu_normalize_cost(res, batch)
        print("per image, one thread: " + ", ".join(f"{key[len('ms_per_image_'):]} {ms:.2f} ms"
                                                    for key, ms in summary.items()), flush=True)
        for workers in args.worker_counts:
            loaders = {}
            loaders, build_s = {}, {}
            for name, loader, decode, crop in variants(args.loader_list, args.decode_list):
                reading = {k: os.path.join(workdir, "stage") if v == "STAGE" else v
                           for k, v in READING.get(name, {}).items()}
                data = dataclasses.replace(cfg.data, loader=loader, train=paths[loader], val="", num_workers=workers,
                                           crop_decode=cfg.data.crop_decode and crop, decode=decode,
                                           synthetic_size=args.images, **reading)
                start = time.perf_counter()  # ffcv-staged: the copy to WORKDIR/stage (the first time)
                loaders[name], _ = build_loaders(data, DistInfo(device=device), seed=0, num_classes=10,
                                                 channels_last=True)
                build_s[name] = time.perf_counter() - start
            timings = time_epochs(loaders, res, args.warmup, args.epochs, device, torch_threads)
            del loaders
            for name, timing in timings.items():
                label = f"{name}, {workers} worker{'s' if workers > 1 else ''}"
                rows.append({"measure": label, "res": res, "batch": batch, "workers": workers, "loader": name,
                             "build_s": build_s[name], **timing})
                device_ms = (f", device part {timing['device_ms_per_image']:.3f} ms/image"
                             if "device_ms_per_image" in timing else "")
                print(f"{label}: {timing['img_per_s']:,.1f} img/s ({timing['img_per_s_per_core']:,.1f} per core of "
                      f"{timing['cores']}), {timing['img_per_cpu_s']:,.1f} img per CPU s (first epoch "
                      f"{timing['first_epoch_s']:.1f} s){device_ms}, {timing['read_mb_per_image']:.3f} MB read "
                      "from disk per image", flush=True)
            if "ffcv" in timings and "torchvision" in timings:
                ffcv, tv = timings["ffcv"], timings["torchvision"]
                summary[f"ffcv_vs_torchvision_{workers}_workers"] = ffcv["img_per_s"] / tv["img_per_s"]
                summary[f"ffcv_vs_torchvision_{workers}_workers_per_cpu_s"] = \
                    ffcv["img_per_cpu_s"] / tv["img_per_cpu_s"]
            if "ffcv" in timings and "ffcv-gpu" in timings:
                summary[f"gpu_vs_cpu_decode_{workers}_workers"] = \
                    timings["ffcv-gpu"]["img_per_s"] / timings["ffcv"]["img_per_s"]
            if "ffcv" in timings and "ffcv-full" in timings:
                summary[f"crop_decode_speedup_{workers}_workers"] = \
                    timings["ffcv"]["img_per_s"] / timings["ffcv-full"]["img_per_s"]
        params = {**{k: v for k, v in workload.params(cfg).items() if k.startswith("data.")}, "images": args.images,
                  "photo_hw": list(args.size), "write_mode": args.write_mode, "texture": args.texture,
                  "jpeg_quality": 90,
                  "workers": args.worker_counts, "loaders": args.loader_list, "decode": args.decode_list,
                  "cores": len(os.sched_getaffinity(0)), "epochs": args.epochs,
                  "warmup": args.warmup}
        notes = ["img/s: best timed epoch after the warm-up; same JPEGs, crop, flip, batch and workers for all",
                 "ffcv_vs_torchvision_N_workers: FFCV img/s / torchvision img/s at N workers (target >= 2.0); "
                 "..._per_cpu_s: the same ratio of images per CPU second (all processes), robust to other load",
                 "crop_decode_speedup_N_workers: FFCV decoding only each crop (data.crop_decode) / whole JPEGs",
                 "ffcv-gpu: data.decode=gpu; device_ms_per_image: its device part (decode, crop, resize, flip, "
                 "normalize; CUDA events on a GPU); gpu_vs_cpu_decode_N_workers: its img/s / ffcv's; per core: "
                 "img/s / the cores this process may use",
                 "ms_per_image_*: one thread, one image (a centered crop of half its area to data.train_res px): "
                 "FFCV's decode + OpenCV INTER_AREA, ours (crop only + our INTER_AREA), PIL decode + resize"
                 + ("; cpu_normalize: a batch to normalized float32 per image, in the training process on a CPU"
                    if device.type == "cpu" else ""),
                 "read_mb_per_image: bytes read from the disk (/proc/self/io read_bytes) in the timed epochs / "
                 "images; ffcv-random, ffcv-pages: data.os_cache=false, data.order=random / pages; ffcv-staged: "
                 "ffcv-pages on a copy data.stage_dir made (build_s: the copy)",
                 f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} on "
                 f"{len(os.sched_getaffinity(0))} cores"]
        return report.finish("loader", device, args, argv, params=params, rows=rows, summary=summary, notes=notes,
                             title=title)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
