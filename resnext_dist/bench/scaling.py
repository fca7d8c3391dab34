"""`python -m resnext_dist.bench scaling`: weak scaling, 1 process vs N at the same per-process batch.

    python -m resnext_dist.bench scaling --device cpu model.layers=[1,1,1,1] model.stem=cifar \\
        model.num_classes=10 data.train_res=32 data.batch_size=16        # gloo, 2 cores: ResNeXt-50's widths

The trainer launched for real on synthetic input with the bench's --config and overrides: `python -m
resnext_dist.train` for 1 process, torchrun for N (DDP), and N single processes at once (--no-independent skips
them). Efficiency = img/s(N) / (N x img/s(1)) from the runs' log.jsonl (as `bench train` reads it). On a CPU each
process gets --threads intra-op threads (default 1), and each starts in a session of its own, as torchrun starts
its ranks, so that Linux's per-session fair share (autogroup) treats them alike. See docs/performance.md.
"""
from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Tuple

import torch

from resnext_dist.bench import report, workload
from resnext_dist.bench.train import (OWNED, add_trainer_args, alternate, check_trainer_args, median_try,
                                      summarize_log, trainer_overrides, tries_notes)
from resnext_dist.config import load_config
from resnext_dist.errors import InputError
from resnext_dist.runlog import read_log

TARGET_EFFICIENCY = 0.9


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


def run_once(cfg, base: List[str], mode: str, nproc: int, run_dir: str, *, args, device: str) -> Dict:
    """mode: 'single' (1 process), 'ddp' (torchrun, nproc ranks, a free port of its own) or 'independent' (nproc
    single processes at once): the trainer's own command line, on synthetic input."""
    max_steps, world = check_trainer_args(args), nproc if mode == "ddp" else 1
    # The children import this very package, wherever it lies (an editable install, or PYTHONPATH on a host).
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p))
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"] if world > 1 else []

    def job(directory: str, gpu: str = ""):
        overrides = base + trainer_overrides(cfg, "synthetic", run_dir=directory, max_steps=max_steps,
                                             log_every=args.log_every, world_size=world)
        cmd = [sys.executable, *launcher, "-m", "resnext_dist.train",
               *(["--config", args.config] if args.config else []), *overrides]
        visible = "" if device == "cpu" else gpu  # on a CPU no GPU: the trainer takes one whenever it sees one
        return cmd, dict(env, CUDA_VISIBLE_DEVICES=visible) if device == "cpu" or gpu else env, directory

    jobs = [job(f"{run_dir}/p{i}", str(i)) for i in range(nproc)] if mode == "independent" else [job(run_dir)]
    _run_all(jobs, args.timeout)
    parts = [summarize_log(read_log(os.path.join(d, "log.jsonl")), global_batch=cfg.data.batch_size * world,
                           warmup_intervals=args.warmup_intervals) for _, _, d in jobs]
    total = sum(p["img_per_s"] for p in parts)
    return {"img_per_s": total, "data_wait": sum(p["data_wait"] * p["img_per_s"] for p in parts) / total,
            "command": " ".join(jobs[0][0]) + (f"  (x{nproc} at once)" if mode == "independent" else "")}


def parser():
    p = workload.bench_parser("scaling", "Weak scaling of the trainer: 1 process vs N at the same per-process "
                                         "batch, synthetic input.")
    p.set_defaults(threads=None)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="auto = all GPUs when there are several, else the CPU")
    p.add_argument("--nproc", type=int, default=0, help="processes of the N-process run (0 = GPUs, or 2 on a CPU)")
    add_trainer_args(p, steps=60, log_every=10)
    p.add_argument("--independent", action=argparse.BooleanOptionalAction, default=True,
                   help="also run N single processes at once (no DDP): the machine's own parallel ceiling")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    return p


def run(argv=None) -> int:
    args = parser().parse_intermixed_args(argv)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = args.device if args.device != "auto" else ("cuda" if gpus > 1 else "cpu")
    if device == "cuda" and gpus < 2:
        raise InputError(f"--device cuda: {gpus} GPU(s) visible, scaling needs 2 or more (or use --device cpu)")
    nproc = args.nproc or (gpus if device == "cuda" else 2)
    if nproc < 2:
        raise InputError(f"--nproc {nproc}: the comparison needs at least 2 processes")
    if device == "cuda" and nproc > gpus:
        raise InputError(f"--nproc {nproc}: only {gpus} GPUs visible")
    args.threads = args.threads if args.threads is not None else (1 if device == "cpu" else 0)
    check_trainer_args(args)
    cfg = workload.load(args, device, owned=OWNED, force=["data.loader=synthetic"])
    base = workload.overrides(args, device)
    load_config(args.config, base + trainer_overrides(cfg, "synthetic", run_dir="x", max_steps=1, log_every=1))
    where = f"{device}, " + (f"{args.threads} thread(s) per process" if device == "cpu" else
                             f"{torch.cuda.get_device_name(0)} x{nproc}")
    title = f"bench scaling: {workload.label(cfg)}, 1 vs {nproc} processes ({where})"
    print(title, flush=True)

    labels = {"single": ("trainer, 1 process", 1), "ddp": (f"trainer, {nproc} processes (DDP)", nproc),
              "independent": (f"{nproc} independent processes (no DDP)", nproc)}
    modes = ["single", "ddp"] + (["independent"] if args.independent else [])
    runs, root = alternate(args, "resnext-scaling-", {
        mode: functools.partial(run_once, cfg, base, mode, nproc, args=args, device=device) for mode in modes})
    base_rate, rows = median_try(runs["single"])["img_per_s"], []
    for mode in modes:
        s, (label, n) = median_try(runs[mode]), labels[mode]
        rows.append({"measure": label, **workload.columns(cfg), "world_size": n, "img_per_s": s["img_per_s"],
                     "per_rank_img_per_s": s["img_per_s"] / n, "efficiency": s["img_per_s"] / (n * base_rate),
                     "data_wait": s["data_wait"], "tries_img_per_s": [t["img_per_s"] for t in runs[mode]],
                     "command": s["command"]})
    efficiency = rows[1]["efficiency"]
    notes = [f"same per-process batch {cfg.data.batch_size}; efficiency = img/s({nproc}) / ({nproc} x img/s(1))"]
    summary = {"efficiency": efficiency, "target_efficiency": TARGET_EFFICIENCY,
               "meets_target": efficiency >= TARGET_EFFICIENCY, "img_per_s_1": base_rate,
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
    notes += tries_notes(args, root)
    params = {**workload.params(cfg), "device": device,
              "nproc": nproc, "threads_per_process": args.threads, "steps": args.steps, "log_every": args.log_every,
              "warmup_intervals": args.warmup_intervals, "repeats": args.repeats, "independent": args.independent}
    return report.finish("scaling", torch.device(device), args, argv, title=title, params=params, rows=rows,
                         summary=summary, notes=notes)
