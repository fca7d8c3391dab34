"""`python -m resnext_dist.bench scaling`: weak scaling, 1 process vs N at the same per-process batch.

    python -m resnext_dist.bench scaling --device cpu --layers 1,1,1,1 --stem cifar --num-classes 10 \\
        --res 32 --batch 16        # gloo, 2 cores: ResNeXt-50's widths, one block per stage
    python -m resnext_dist.bench scaling --device cpu --nproc 2 --layers 1,1,1,1 --cardinality 8 \\
        --group-width 4 --base-channels 16 --stem cifar --num-classes 10 --res 32 --batch 32   # a narrow net
    python -m resnext_dist.bench scaling --arch resnext50_32x4d --batch 256 --res 224      # all GPUs (NCCL)

The trainer is launched for real on synthetic input: `python -m resnext_dist.train` for 1 process,
`torchrun --standalone --nproc_per_node=N -m resnext_dist.train` for N (DDP; gloo on CPU, NCCL on GPUs).
Each run's log.jsonl gives the global img/s after the warm-up intervals (as in `bench train`); per-rank
img/s = global / N, and the weak-scaling efficiency = img/s(N) / (N x img/s(1)).

A third measurement (on by default, --no-independent skips it) runs N single-process trainings at once,
with no process group: what the machine itself gives N processes side by side (shared cores, memory
bandwidth, caches, other load). `ddp vs independent` = img/s(N, DDP) / img/s(N independent) isolates what
DDP costs (gradient all-reduce, the per-step flag agreement) from what running N processes costs at all.

CPU fairness: with N ranks sharing the cores, each rank gets --threads intra-op threads (default 1, set
through OMP_NUM_THREADS) and so does the single process, so the comparison is 1 rank x 1 thread vs N ranks
x 1 thread each, not 1 rank using every core. Every trainer process starts in a session of its own, as
torchrun starts its ranks, so that Linux's per-session CPU fair share (autogroup) treats them alike. With
--repeats R the runs alternate (1, N, independent, 1, ...) and each reports its median try.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import torch

from resnext_dist.bench import BenchError, report
from resnext_dist.bench.model import Workload, add_workload_args, workload_columns, workload_from_args
from resnext_dist.bench.train import add_trainer_timing_args, median_try, summarize_log, trainer_overrides
from resnext_dist.config import load_config
from resnext_dist.runlog import read_log

TARGET_EFFICIENCY = 0.9


def launch_command(nproc: int, overrides: List[str]) -> List[str]:
    """The trainer's own command line: plain for one process, torchrun (a free port of its own) for N."""
    train = ["-m", "resnext_dist.train", *overrides]
    if nproc == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *train]


def child_env(device: str, threads: int, gpu: str = "") -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the trainer takes a GPU whenever it sees one
    elif gpu:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    # The children import this very package, wherever it lies (an editable install, or PYTHONPATH on a host).
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    return env


def _run_all(jobs: List[Tuple[List[str], Dict[str, str], str]], timeout: float) -> None:
    """Start every (command, env, run_dir) at once, each in its own session; wait for all; raise on failure."""
    procs = []
    try:
        for cmd, env, run_dir in jobs:
            os.makedirs(run_dir, exist_ok=True)
            with open(os.path.join(run_dir, "output.txt"), "w") as out:
                procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"a run did not finish in --timeout {timeout:g} s: {' '.join(proc.args)}") \
                    from None
    finally:
        for proc in procs:  # only on an error: each child leads its own process group (its session)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    for proc, (cmd, _, run_dir) in zip(procs, jobs):
        if proc.returncode != 0:
            with open(os.path.join(run_dir, "output.txt")) as f:
                tail = "".join(f.readlines()[-20:])
            raise RuntimeError(f"run failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def run_once(w: Workload, mode: str, nproc: int, run_dir: str, args, device: str) -> Dict:
    """mode: 'single' (1 process), 'ddp' (torchrun, nproc ranks) or 'independent' (nproc single processes)."""
    max_steps = args.warmup_intervals * args.log_every + -(-args.steps // args.log_every) * args.log_every

    def overrides(directory: str, world: int) -> List[str]:
        return trainer_overrides(w, "synthetic", run_dir=directory, max_steps=max_steps, log_every=args.log_every,
                                 world_size=world) + list(args.set)

    if mode == "single":
        jobs = [(launch_command(1, overrides(run_dir, 1)), child_env(device, args.threads), run_dir)]
    elif mode == "ddp":
        jobs = [(launch_command(nproc, overrides(run_dir, nproc)), child_env(device, args.threads), run_dir)]
    else:
        jobs = [(launch_command(1, overrides(f"{run_dir}/p{i}", 1)),
                 child_env(device, args.threads, gpu=str(i) if device == "cuda" else ""), f"{run_dir}/p{i}")
                for i in range(nproc)]
    _run_all(jobs, args.timeout)
    world = nproc if mode == "ddp" else 1
    parts = [summarize_log(read_log(os.path.join(d, "log.jsonl")), global_batch=w.batch * world,
                           warmup_intervals=args.warmup_intervals) for _, _, d in jobs]
    total = sum(p["img_per_s"] for p in parts)
    return {"img_per_s": total, "data_wait": sum(p["data_wait"] * p["img_per_s"] for p in parts) / total,
            "command": " ".join(jobs[0][0]) + (f"  (x{nproc} at once)" if mode == "independent" else "")}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resnext_dist.bench scaling",
                                description="Weak scaling of the trainer: 1 process vs N at the same per-process "
                                            "batch, synthetic input.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_workload_args(p)
    p.set_defaults(threads=None)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="auto = all GPUs when there are several, else the CPU")
    p.add_argument("--nproc", type=int, default=0, help="processes of the N-process run (0 = GPUs, or 2 on a CPU)")
    add_trainer_timing_args(p, steps=60, log_every=10)
    p.add_argument("--repeats", type=int, default=1, help="alternate the runs this many times; median of each")
    p.add_argument("--independent", action=argparse.BooleanOptionalAction, default=True,
                   help="also run N single processes at once (no DDP): the machine's own parallel ceiling")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra trainer config override (repeatable)")
    p.add_argument("--run-root", default="", help="where the temporary run directories go (default: $TMPDIR)")
    p.add_argument("--keep-runs", action="store_true", help="keep the run directories")
    report.add_output_args(p)
    return p


def run(argv=None) -> int:
    args = parser().parse_args(argv)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = args.device if args.device != "auto" else ("cuda" if gpus > 1 else "cpu")
    if device == "cuda" and gpus < 2:
        raise BenchError(f"--device cuda: {gpus} GPU(s) visible, scaling needs 2 or more (or use --device cpu)")
    nproc = args.nproc or (gpus if device == "cuda" else 2)
    if nproc < 2:
        raise BenchError(f"--nproc {nproc}: the comparison needs at least 2 processes")
    if device == "cuda" and nproc > gpus:
        raise BenchError(f"--nproc {nproc}: only {gpus} GPUs visible")
    if device == "cpu" and args.threads is None:
        args.threads = 1
    args.threads = args.threads or 0
    if args.steps < 1 or args.log_every < 1 or args.warmup_intervals < 0 or args.repeats < 1:
        raise BenchError("--steps, --log-every and --repeats must be >= 1, --warmup-intervals >= 0")
    w = workload_from_args(args, device)
    load_config(None, trainer_overrides(w, "synthetic", run_dir="x", max_steps=1, log_every=1) + list(args.set))
    where = f"{device}, " + (f"{args.threads} thread(s) per process" if device == "cpu" else
                             f"{torch.cuda.get_device_name(0)} x{nproc}")
    title = f"bench scaling: {w.label()}, 1 vs {nproc} processes ({where})"
    print(title, flush=True)

    modes = ["single", "ddp"] + (["independent"] if args.independent else [])
    if args.run_root:
        os.makedirs(args.run_root, exist_ok=True)  # a fresh path is fine, as for --workdir
    root = tempfile.mkdtemp(prefix="resnext-scaling-", dir=args.run_root or None)
    runs: Dict[str, List[Dict]] = {mode: [] for mode in modes}
    try:
        for r in range(args.repeats):
            for mode in modes:
                s = run_once(w, mode, nproc, os.path.join(root, f"{mode}_r{r}"), args, device)
                runs[mode].append(s)
                print(f"{mode}, try {r + 1}: {s['img_per_s']:,.1f} img/s (data wait {s['data_wait']:.1%})",
                      flush=True)
    finally:
        if not args.keep_runs:
            shutil.rmtree(root, ignore_errors=True)

    mid = {mode: median_try(tries) for mode, tries in runs.items()}
    base = mid["single"]["img_per_s"]
    labels = {"single": ("trainer, 1 process", 1), "ddp": (f"trainer, {nproc} processes (DDP)", nproc),
              "independent": (f"{nproc} independent processes (no DDP)", nproc)}
    rows = []
    for mode in modes:
        s, (label, n) = mid[mode], labels[mode]
        rows.append({"measure": label, **workload_columns(w), "world_size": n, "img_per_s": s["img_per_s"],
                     "per_rank_img_per_s": s["img_per_s"] / n, "efficiency": s["img_per_s"] / (n * base),
                     "data_wait": s["data_wait"], "tries_img_per_s": [t["img_per_s"] for t in runs[mode]],
                     "command": s["command"]})
    efficiency = rows[1]["efficiency"]
    notes = [f"same per-process batch {w.batch}; efficiency = img/s({nproc}) / ({nproc} x img/s(1))"]
    summary = {"efficiency": efficiency, "target_efficiency": TARGET_EFFICIENCY,
               "meets_target": efficiency >= TARGET_EFFICIENCY, "img_per_s_1": base,
               f"img_per_s_{nproc}": rows[1]["img_per_s"]}
    if args.independent:
        summary["independent_efficiency"] = rows[2]["efficiency"]
        summary["ddp_vs_independent"] = rows[1]["img_per_s"] / rows[2]["img_per_s"]
        notes.append(f"independent: {nproc} single-process runs at once, no process group: the machine's own "
                     f"parallel ceiling; DDP reaches {summary['ddp_vs_independent']:.3f} of it")
    if device == "cpu":
        notes.append(f"CPU: every process uses {args.threads} intra-op thread(s) (OMP_NUM_THREADS={args.threads}), "
                     f"the single process too: 1 x {args.threads} vs {nproc} x {args.threads} threads on "
                     f"{os.cpu_count()} cores; gloo")
    if args.repeats > 1:
        notes.append(f"median of {args.repeats} alternating tries per measure (all tries are in the JSON)")
    params = {**w.params(), "device": device, "nproc": nproc, "threads_per_process": args.threads,
              "steps": args.steps, "log_every": args.log_every, "warmup_intervals": args.warmup_intervals,
              "repeats": args.repeats, "independent": args.independent, "set": list(args.set)}
    result = report.make_report("scaling", torch.device("cuda" if device == "cuda" else "cpu"), argv=argv,
                                params=params, rows=rows, summary=summary, notes=notes)
    return report.finish(result, args, title=title)
