"""`python -m resnext_dist.bench train`: the real trainer end to end against the ceiling, in one process.

    python -m resnext_dist.bench train --config configs/quickstart.yaml model.layers=[1,1,1,1] \\
        data.batch_size=32 --steps 40 --repeats 3      # ceiling, trainer on synthetic input, trainer on FFCV

The ceiling (bench model), then `resnext_dist.run.trainer.train(cfg)` per input (synthetic; the config's loader on
data.train) in a temporary run directory, tracking and validation off; its figures are the log.jsonl intervals
after --warmup-intervals, weighted by images and time ("wall img/s" also counts epoch ends). With --repeats the
measures take turns (`alternate`, which bench scaling uses too) and each reports its median try. What it
measures and the target: docs/performance.md.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import torch

from resnext_dist.bench import report, workload
from resnext_dist.bench.model import ceiling_row, measure_ceiling, release
from resnext_dist.config import TrainConfig, load_config
from resnext_dist.data import LOADERS
from resnext_dist.errors import InputError
from resnext_dist.run.trainer import train as train_run
from resnext_dist.runlog import read_log

TARGET_RATIO = 0.97
DATA_WAIT_LIMIT = 0.05
SYNTHETIC_POOL_BYTES = 2 * 2**30  # the synthetic loader's image pool on the device; epochs wrap beyond it
# inputs beyond the data.loader values: the FFCV loader with each data.decode, compared in one run
DECODED_INPUTS = {f"ffcv-{d}": ["data.loader=ffcv", f"data.decode={d}"] for d in ("cpu", "gpu")}
OWNED = {"train.max_steps": "--steps", "train.log_every_steps": "--log-every", "run.dir": "--run-root"}


def trainer_overrides(cfg: TrainConfig, loader: str, *, run_dir: str, max_steps: int, log_every: int,
                      world_size: int = 1) -> List[str]:
    """What the bench sets on top of the config for one trainer run: the input, the length, nothing else."""
    out = [*DECODED_INPUTS.get(loader, [f"data.loader={loader}"]), f"train.max_steps={max_steps}",
           f"train.log_every_steps={log_every}",
           "train.log_every_s=0",  # intervals of steps only: a timed line would split one
           f"train.epochs={max_steps}",  # >= 1 step per epoch, so max_steps always ends the run
           "train.progress_bar=false", "tracking.enabled=false", "checkpoint.every_steps=0",
           "checkpoint.resume=never", "data.val=''", "data.val_synthetic_size=0", "run.name=bench",
           f"run.dir={run_dir}"]
    if loader == "synthetic":
        # One pool of images per rank on the device, as many steps as fit in SYNTHETIC_POOL_BYTES.
        batch, res = cfg.data.batch_size, cfg.data.train_res
        fit = max(1, SYNTHETIC_POOL_BYTES // (3 * res * res * batch))
        out.append(f"data.synthetic_size={batch * world_size * min(max_steps + 1, fit)}")
    return out


def summarize_log(records: List[Dict], *, global_batch: int, warmup_intervals: int) -> Dict:
    """Steady-state throughput and data wait from a run's log.jsonl records (see the module docstring)."""
    intervals, prev = [], 0
    steps = [r for r in records if r.get("kind") == "step"]
    for n, r in enumerate(steps):
        if r["step"] == 1 and n + 1 < len(steps):
            prev = 1  # the trainer's line for its first step (start-up, compile): not an interval of its own
            continue
        images = (r["step"] - prev) * global_batch
        prev = r["step"]
        elapsed = images / r["img_per_s"] if r["img_per_s"] > 0 else 0.0
        intervals.append({"step": r["step"], "time": r["time"], "images": images, "elapsed": elapsed,
                          "wait": r["data_wait"] * elapsed, "peak_mem_mb": r.get("peak_mem_mb")})
    timed = intervals[warmup_intervals:]
    if not timed:
        raise InputError(f"the run logged {len(intervals)} interval(s), none after the {warmup_intervals} "
                         f"warm-up one(s): raise --steps or lower --log-every")
    images = sum(i["images"] for i in timed)
    elapsed = sum(i["elapsed"] for i in timed)
    start = intervals[warmup_intervals - 1] if warmup_intervals > 0 else None
    wall_images = (timed[-1]["step"] - (start["step"] if start else 0)) * global_batch
    wall_s = timed[-1]["time"] - start["time"] if start else None
    peaks = [i["peak_mem_mb"] for i in intervals if i["peak_mem_mb"] is not None]
    return {"img_per_s": images / elapsed, "data_wait": sum(i["wait"] for i in timed) / elapsed,
            "wall_img_per_s": wall_images / wall_s if wall_s else None, "timed_steps": images // global_batch,
            "timed_intervals": len(timed), "timed_s": elapsed, "peak_mem_mb": max(peaks) if peaks else None}


def median_try(tries: List[Dict]) -> Dict:
    """The try with the median img/s (the lower middle one of an even count): its other figures stay its own."""
    return sorted(tries, key=lambda t: t["img_per_s"])[(len(tries) - 1) // 2]


def alternate(args, prefix: str, measures: Dict[str, Callable[[str], Dict]]) -> Tuple[Dict[str, List[Dict]], str]:
    """--repeats tries, each running every measure once in turn with a run directory of its own (in a fresh
    folder in --run-root, removed unless --keep-runs): on a shared machine single tries swing both ways by 10 %
    and more, and alternating spreads the swings over all measures. Returns {measure: tries}, the folder."""
    tries: Dict[str, List[Dict]] = {name: [] for name in measures}
    if args.run_root:
        os.makedirs(args.run_root, exist_ok=True)
    root = tempfile.mkdtemp(prefix=prefix, dir=args.run_root or None)
    try:
        for attempt in range(args.repeats):
            for name, measure in measures.items():
                slug = re.sub(r"[^\w.-]+", "_", name).strip("_")  # trainer (ffcv) -> trainer_ffcv
                s = measure(os.path.join(root, f"{slug}.{attempt}"))
                tries[name].append(s)
                wait = f", data wait {s['data_wait']:.1%}" if "data_wait" in s else ""
                print(f"{name}, try {attempt + 1}: {s['img_per_s']:,.1f} img/s{wait}", flush=True)
    finally:
        if not args.keep_runs:
            shutil.rmtree(root, ignore_errors=True)
    return tries, root


def tries_notes(args, root: str) -> List[str]:
    notes = [f"median of {args.repeats} alternating tries per measure (all tries are in the JSON)"]
    return (notes if args.repeats > 1 else []) + ([f"run directories kept in {root}"] if args.keep_runs else [])


def add_trainer_args(p, *, steps: int, log_every: int) -> None:
    """The flags of a bench that runs the trainer (train, scaling): its length, what counts, where it runs."""
    g = p.add_argument_group("trainer runs")
    g.add_argument("--steps", type=int, default=steps, help="timed trainer steps (rounded up to whole log intervals)")
    g.add_argument("--log-every", type=int, default=log_every, help="steps per log interval (train.log_every_steps)")
    g.add_argument("--warmup-intervals", type=int, default=1, help="log intervals left out at the start")
    g.add_argument("--repeats", type=int, default=1, help="alternate the measures this many times; the median "
                   "try of each is reported (for noisy shared machines)")
    g.add_argument("--run-root", default="", help="where the temporary run directories go (default: $TMPDIR)")
    g.add_argument("--keep-runs", action="store_true", help="keep the run directories (log.jsonl, checkpoints)")


def check_trainer_args(args) -> int:
    """Validate the trainer-run flags; the trainer's train.max_steps (warm-up and timed intervals)."""
    if args.steps < 1 or args.log_every < 1 or args.warmup_intervals < 0 or args.repeats < 1:
        raise InputError("--steps, --log-every and --repeats must be >= 1, --warmup-intervals >= 0")
    return (args.warmup_intervals + -(-args.steps // args.log_every)) * args.log_every


def parser():
    p = workload.bench_parser("train", "The trainer end to end (synthetic and real input) against the bare-step "
                                       "ceiling, measured in the same process.")
    p.add_argument("--inputs", default="", help="comma-separated trainer inputs (data.loader values) to run "
                   "(default: synthetic, plus data.loader when it is not synthetic)")
    add_trainer_args(p, steps=100, log_every=20)
    g = p.add_argument_group("ceiling")
    g.add_argument("--ceiling-steps", type=int, default=50, help="timed steps of the ceiling")
    g.add_argument("--ceiling-warmup", type=int, default=10, help="untimed steps of the ceiling first")
    g.add_argument("--no-ceiling", action="store_true", help="skip the ceiling (ratios are then not reported)")
    return p


def _inputs(args, cfg: TrainConfig) -> List[str]:
    names = [s.strip() for s in args.inputs.split(",") if s.strip()] if args.inputs else \
        ["synthetic"] + ([cfg.data.loader] if cfg.data.loader != "synthetic" else [])
    if not names:
        raise InputError("--inputs: nothing to run")
    for name in names:
        if name not in (*LOADERS, *DECODED_INPUTS):
            known = ", ".join([*LOADERS, *DECODED_INPUTS])
            raise InputError(f"--inputs: unknown input {name!r} ({known})")
        if name != "synthetic" and not cfg.data.train:
            raise InputError(f"--inputs {name} needs data.train=FILE")
        if name != "synthetic" and not os.path.exists(cfg.data.train):
            raise InputError(f"data.train={cfg.data.train}: no such file")
    return names


def run(argv=None) -> int:
    args = parser().parse_intermixed_args(argv)
    max_steps = check_trainer_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # what the trainer will pick
    cfg = workload.load(args, device.type, owned=OWNED)
    inputs, base = _inputs(args, cfg), workload.overrides(args, device.type)

    def plan(name: str, run_dir: str) -> List[str]:
        return base + trainer_overrides(cfg, name, run_dir=run_dir, max_steps=max_steps, log_every=args.log_every)

    def trainer(name: str, run_dir: str) -> Dict:
        if args.threads:
            torch.set_num_threads(args.threads)  # FFCV sets torch's thread count to its worker count
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # the run's peak, not the ceiling's before it
        t0 = time.perf_counter()
        train_run(load_config(args.config, plan(name, run_dir)))
        s = summarize_log(read_log(os.path.join(run_dir, "log.jsonl")), global_batch=cfg.data.batch_size,
                          warmup_intervals=args.warmup_intervals)
        release(device, compiled=cfg.train.compile)
        return dict(s, run_s=time.perf_counter() - t0)

    for name in inputs:  # every config is checked before any measuring starts
        load_config(args.config, plan(name, "unused"))
    title = f"bench train: {workload.label(cfg)} on {workload.device_label(device)}"
    print(title, flush=True)
    measures = {} if args.no_ceiling else {
        "ceiling": lambda _: measure_ceiling(cfg, device, steps=args.ceiling_steps, warmup=args.ceiling_warmup)}
    measures.update({f"trainer ({name})": functools.partial(trainer, name) for name in inputs})
    tries, root = alternate(args, "resnext-bench-", measures)

    rows, summary, ceiling = [], {}, None
    if "ceiling" in tries:
        mid = median_try(tries["ceiling"])
        ceiling = summary["ceiling_img_per_s"] = mid["img_per_s"]
        rows.append({**ceiling_row(cfg, mid), "tries_img_per_s": [m["img_per_s"] for m in tries["ceiling"]]})
    for name in inputs:
        s = median_try(tries[f"trainer ({name})"])
        ratio = s["img_per_s"] / ceiling if ceiling else None
        rows.append({"measure": f"trainer ({'; '.join([name, *workload.extra_overrides(args)])})", "input": name,
                     **workload.columns(cfg), "img_per_s": s["img_per_s"], "wall_img_per_s": s["wall_img_per_s"],
                     "ratio": ratio, "data_wait": s["data_wait"], "timed_steps": s["timed_steps"],
                     "timed_s": s["timed_s"], "peak_mem_mb": s["peak_mem_mb"], "run_s": s["run_s"],
                     "tries_img_per_s": [t["img_per_s"] for t in tries[f"trainer ({name})"]]})
        summary.update({f"{name}_img_per_s": s["img_per_s"], f"{name}_data_wait": s["data_wait"],
                        **({f"{name}_ratio": ratio} if ratio is not None else {})})
    notes = [f"trainer img/s: log.jsonl intervals after the first {args.warmup_intervals} "
             f"({args.log_every} steps each); wall img/s also counts epoch ends", *tries_notes(args, root)]
    real = [f"{name}_ratio" for name in inputs if name != "synthetic" and f"{name}_ratio" in summary]
    judged = (real or ["synthetic_ratio"])[0]  # the target is about real input
    if judged in summary:
        summary.update(target_ratio=TARGET_RATIO, meets_target=summary[judged] >= TARGET_RATIO)
    notes += _explain(rows, device)
    params = {**workload.params(cfg), "inputs": inputs,
              "steps": max_steps - args.warmup_intervals * args.log_every, "log_every": args.log_every,
              "warmup_intervals": args.warmup_intervals, "ceiling_steps": args.ceiling_steps,
              "ceiling_warmup": args.ceiling_warmup, "repeats": args.repeats, "threads": torch.get_num_threads()}
    return report.finish("train", device, args, argv, title=title, params=params, rows=rows, summary=summary,
                         notes=notes)


def _explain(rows: List[Dict], device: torch.device) -> List[str]:
    """Say where the time went when the trainer falls short: input (data wait) or the step itself."""
    notes, where = [], "GPU" if device.type == "cuda" else "CPU"
    for row in rows:
        name = row.get("input")
        if name and name != "synthetic" and row["data_wait"] > DATA_WAIT_LIMIT:
            notes.append(f"{name}: data wait {row['data_wait']:.1%} > {DATA_WAIT_LIMIT:.0%} on a {where} run: the "
                         f"loader delivers fewer images/s than the step takes (compare `bench loader` at these "
                         f"workers and this resolution); the step waits for input")
        if name == "synthetic" and row.get("ratio") is not None and row["ratio"] < TARGET_RATIO \
                and row["data_wait"] < DATA_WAIT_LIMIT:
            notes.append(f"synthetic: {row['ratio']:.3f} of the ceiling with {row['data_wait']:.1%} data wait: the "
                         f"trainer's own per-step work (host syncs, logging, scheduler, normalization) costs the rest")
    return notes
