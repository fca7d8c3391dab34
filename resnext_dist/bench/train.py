"""`python -m resnext_dist.bench train`: the real trainer end to end against the ceiling, in one process.

    python -m resnext_dist.bench train --arch resnext50_32x4d --batch 256 --res 224 --data /tmp/bench.beton \\
        --workers 16 --out r50_224.json                  # ceiling, trainer on synthetic input, trainer on FFCV
    python -m resnext_dist.bench train --layers 1,1,1,1 --cardinality 4 --group-width 4 --base-channels 16 \\
        --stem cifar --num-classes 10 --res 32 --batch 32 --steps 40 --log-every 10 --threads 1   # CPU

Same workload (arch, batch, resolution, precision, memory format, compile) three ways, in this order:
  1. the ceiling: bench model's bare step on input already on the device;
  2. the trainer, `resnext_dist.train.run(cfg)` with data.loader=synthetic (the trainer's own overhead);
  3. the trainer with data.loader=ffcv on --data (the whole input pipeline as well).
The trainer runs are real runs in a temporary run directory (removed afterwards unless --keep-runs), with
tracking off, train.max_steps set, and checkpoints only at epoch ends. Their figures come from the run's
log.jsonl: `img_per_s` and `data_wait` of every log interval after the first --warmup-intervals (compilation,
cuDNN autotuning and FFCV's JIT compile fall there), weighted by the interval's images and time. The
"wall img/s" column also counts what happens between log intervals (epoch ends: a checkpoint, the loader's
restart), so it is lower when epochs are short.

Target: the trainer with FFCV input at >= 0.97 of the ceiling, with the data-wait fraction reported.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Dict, List

import torch

from resnext_dist.bench import BenchError, report
from resnext_dist.bench.model import (Workload, add_workload_args, ceiling_row, device_label, measure_ceiling,
                                      release, workload_columns, workload_from_args)
from resnext_dist.config import load_config
from resnext_dist.runlog import read_log

TARGET_RATIO = 0.97
DATA_WAIT_LIMIT = 0.05
SYNTHETIC_POOL_BYTES = 2 * 2**30  # the synthetic loader's image pool on the device; epochs wrap beyond it


def trainer_overrides(w: Workload, loader: str, *, run_dir: str, max_steps: int, log_every: int,
                      data: str = "", workers: int = 0, world_size: int = 1) -> List[str]:
    """The trainer's config for one bench run: the workload, the input, and nothing that is not training."""
    out = w.trainer_overrides() + [
        f"data.loader={loader}", f"train.max_steps={max_steps}", f"train.log_every_steps={log_every}",
        f"train.epochs={max_steps}",  # >= 1 step per epoch, so max_steps always ends the run
        "train.progress_bar=false", "tracking.enabled=false", "checkpoint.every_steps=0",
        "checkpoint.resume=never", "data.val_synthetic_size=0", "run.name=bench", f"run.dir={run_dir}"]
    if loader == "synthetic":
        # One pool of images per rank on the device; as many steps as fit in SYNTHETIC_POOL_BYTES
        # (epochs beyond it just wrap around, as a real loader's would).
        fit = max(1, SYNTHETIC_POOL_BYTES // (3 * w.res * w.res * w.batch))
        out.append(f"data.synthetic_size={w.batch * world_size * min(max_steps + 1, fit)}")
    else:
        out += [f"data.train={data}", f"data.num_workers={workers}"]
    return out


def summarize_log(records: List[Dict], *, global_batch: int, warmup_intervals: int) -> Dict:
    """Steady-state throughput and data wait from a run's log.jsonl records (see the module docstring)."""
    steps = [r for r in records if r.get("kind") == "step"]
    intervals, prev = [], 0
    for r in steps:
        images = (r["step"] - prev) * global_batch
        prev = r["step"]
        elapsed = images / r["img_per_s"] if r["img_per_s"] > 0 else 0.0
        intervals.append({"step": r["step"], "time": r["time"], "images": images, "elapsed": elapsed,
                          "wait": r["data_wait"] * elapsed, "peak_mem_mb": r.get("peak_mem_mb")})
    timed = intervals[warmup_intervals:]
    if not timed:
        raise BenchError(f"the run logged {len(intervals)} interval(s), none after the {warmup_intervals} "
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


def run_trainer(overrides: List[str], run_dir: str, *, global_batch: int, warmup_intervals: int) -> Dict:
    """Train in this process with the given config; the summary of its log."""
    from resnext_dist.train import run as train_run

    cfg = load_config(None, overrides)
    t0 = time.perf_counter()
    train_run(cfg)
    total = time.perf_counter() - t0
    summary = summarize_log(read_log(os.path.join(run_dir, "log.jsonl")), global_batch=global_batch,
                            warmup_intervals=warmup_intervals)
    summary["run_s"] = total
    return summary


# ----------------------------------------------------------------------------------------------
# Command line


def add_trainer_timing_args(p, *, steps: int, log_every: int) -> None:
    """How long each trainer run is and which of its log intervals count (bench train and bench scaling)."""
    p.add_argument("--steps", type=int, default=steps, help="timed trainer steps (rounded up to whole log intervals)")
    p.add_argument("--log-every", type=int, default=log_every, help="steps per log interval (train.log_every_steps)")
    p.add_argument("--warmup-intervals", type=int, default=1, help="log intervals left out at the start")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resnext_dist.bench train",
                                description="The trainer end to end (synthetic and FFCV input) against the "
                                            "bare-step ceiling, measured in the same process.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_workload_args(p)
    g = p.add_argument_group("trainer runs")
    g.add_argument("--data", default="", help="a .beton file: adds a run with FFCV input")
    g.add_argument("--workers", type=int, default=8, help="FFCV decoding workers (data.num_workers)")
    g.add_argument("--inputs", default="", help="comma-separated trainer inputs to run: synthetic, ffcv "
                   "(default: synthetic, plus ffcv when --data is given)")
    add_trainer_timing_args(g, steps=100, log_every=20)
    g.add_argument("--ceiling-steps", type=int, default=50, help="timed steps of the ceiling")
    g.add_argument("--ceiling-warmup", type=int, default=10, help="untimed steps of the ceiling first")
    g.add_argument("--no-ceiling", action="store_true", help="skip the ceiling (ratios are then not reported)")
    g.add_argument("--repeats", type=int, default=1, help="alternate ceiling and trainer runs this many times; "
                   "the median of each is reported (for noisy shared machines)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra trainer config override, e.g. --set train.nan_check=false (repeatable)")
    g.add_argument("--run-root", default="", help="where the temporary run directories go (default: $TMPDIR)")
    g.add_argument("--keep-runs", action="store_true", help="keep the run directories (log.jsonl, checkpoints)")
    report.add_output_args(p)
    return p


def _inputs(args) -> List[str]:
    names = [s.strip() for s in args.inputs.split(",") if s.strip()] if args.inputs else \
        ["synthetic"] + (["ffcv"] if args.data else [])
    for name in names:
        if name not in ("synthetic", "ffcv"):
            raise BenchError(f"--inputs: unknown input {name!r} (synthetic, ffcv)")
    if "ffcv" in names:
        if not args.data:
            raise BenchError("--inputs ffcv needs --data FILE.beton")
        if not os.path.isfile(args.data):
            raise BenchError(f"--data {args.data}: no such file")
    if not names:
        raise BenchError("--inputs: nothing to run")
    return names


def run(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.steps < 1 or args.log_every < 1 or args.warmup_intervals < 0 or args.repeats < 1:
        raise BenchError("--steps, --log-every and --repeats must be >= 1, --warmup-intervals >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # what the trainer will pick
    w = workload_from_args(args, device.type)
    inputs = _inputs(args)
    timed_steps = -(-args.steps // args.log_every) * args.log_every
    max_steps = args.warmup_intervals * args.log_every + timed_steps
    if args.run_root:
        os.makedirs(args.run_root, exist_ok=True)  # a fresh path is fine, as for --workdir
    root = tempfile.mkdtemp(prefix="resnext-bench-", dir=args.run_root or None)

    def plan(name: str, attempt: int):
        run_dir = os.path.join(root, f"{name}.{attempt}")
        return trainer_overrides(w, name, run_dir=run_dir, max_steps=max_steps, log_every=args.log_every,
                                 data=os.path.abspath(args.data) if args.data else "",
                                 workers=args.workers) + list(args.set), run_dir

    for name in inputs:  # every config is checked before any measuring starts
        load_config(None, plan(name, 0)[0])
    title = f"bench train: {w.label()} on {device_label(device)}"
    print(title, flush=True)

    # Each try measures the ceiling, then each input; with --repeats the tries alternate and each measure
    # reports its median try (on a shared machine single tries swing both ways by 10 % and more).
    ceilings, trainer_runs = [], {name: [] for name in inputs}
    try:
        for attempt in range(args.repeats):
            if not args.no_ceiling:
                m = measure_ceiling(w, device, steps=args.ceiling_steps, warmup=args.ceiling_warmup)
                ceilings.append(m)
                print(f"ceiling, try {attempt + 1}: {m['img_per_s']:,.1f} img/s", flush=True)
            for name in inputs:
                if args.threads:
                    torch.set_num_threads(args.threads)  # FFCV sets torch's thread count to its worker count
                overrides, run_dir = plan(name, attempt)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)  # the run's peak, not the ceiling's before it
                s = run_trainer(overrides, run_dir, global_batch=w.batch, warmup_intervals=args.warmup_intervals)
                release(device, compiled=w.compile)
                trainer_runs[name].append(s)
                print(f"trainer ({name}), try {attempt + 1}: {s['img_per_s']:,.1f} img/s, "
                      f"data wait {s['data_wait']:.1%}", flush=True)
    finally:
        if not args.keep_runs:
            shutil.rmtree(root, ignore_errors=True)

    rows, summary, notes = [], {}, []
    ceiling = None
    if ceilings:
        mid = median_try(ceilings)
        ceiling = mid["img_per_s"]
        rows.append({**ceiling_row(w, mid), "tries_img_per_s": [m["img_per_s"] for m in ceilings]})
        summary["ceiling_img_per_s"] = ceiling
    for name, tries in trainer_runs.items():
        s = median_try(tries)
        ratio = s["img_per_s"] / ceiling if ceiling else None
        label = "; ".join([name, *args.set])  # overrides show in the row: A/B runs stay apart
        rows.append({"measure": f"trainer ({label})", "input": name, **workload_columns(w),
                     "img_per_s": s["img_per_s"], "wall_img_per_s": s["wall_img_per_s"], "ratio": ratio,
                     "data_wait": s["data_wait"], "timed_steps": s["timed_steps"], "timed_s": s["timed_s"],
                     "peak_mem_mb": s["peak_mem_mb"], "run_s": s["run_s"],
                     "tries_img_per_s": [t["img_per_s"] for t in tries]})
        summary[f"{name}_img_per_s"] = s["img_per_s"]
        summary[f"{name}_data_wait"] = s["data_wait"]
        if ratio is not None:
            summary[f"{name}_ratio"] = ratio

    notes.append(f"trainer img/s: log.jsonl intervals after the first {args.warmup_intervals} "
                 f"({args.log_every} steps each); wall img/s also counts epoch ends")
    if args.repeats > 1:
        notes.append(f"median of {args.repeats} alternating tries per measure (all tries are in the JSON)")
    if args.keep_runs:
        notes.append(f"run directories kept in {root}")
    judged = "ffcv_ratio" if "ffcv_ratio" in summary else "synthetic_ratio"  # the target is about real input
    if judged in summary:
        summary["target_ratio"] = TARGET_RATIO
        summary["meets_target"] = summary[judged] >= TARGET_RATIO
    notes += _explain(rows, device)
    params = {**w.params(), "inputs": inputs, "data": args.data, "workers": args.workers, "steps": timed_steps,
              "log_every": args.log_every, "warmup_intervals": args.warmup_intervals,
              "ceiling_steps": args.ceiling_steps, "ceiling_warmup": args.ceiling_warmup, "set": list(args.set),
              "repeats": args.repeats, "threads": torch.get_num_threads()}
    result = report.make_report("train", device, argv=argv, params=params, rows=rows, summary=summary, notes=notes)
    return report.finish(result, args, title=title)


def _explain(rows: List[Dict], device: torch.device) -> List[str]:
    """Say where the time went when the trainer falls short: input (data wait) or the step itself."""
    notes = []
    by_input = {r.get("input"): r for r in rows}
    syn, ffcv = by_input.get("synthetic"), by_input.get("ffcv")
    if ffcv and ffcv["data_wait"] > DATA_WAIT_LIMIT:
        where = "GPU run" if device.type == "cuda" else "CPU run"
        notes.append(f"ffcv: data wait {ffcv['data_wait']:.1%} > {DATA_WAIT_LIMIT:.0%} on a {where}: the loader "
                     f"delivers fewer images/s than the step takes (compare `bench loader` at these workers and "
                     f"this resolution); the step waits for input")
    if syn and syn.get("ratio") is not None and syn["ratio"] < TARGET_RATIO and syn["data_wait"] < DATA_WAIT_LIMIT:
        notes.append(f"synthetic: {syn['ratio']:.3f} of the ceiling with {syn['data_wait']:.1%} data wait: the "
                     f"trainer's own per-step work (host syncs, logging, scheduler, normalization) costs the rest")
    return notes
