"""What this Slurm cluster can run: checks made before anything is submitted.

Cheap (one `sinfo`, one `sbatch --test-only`, one `squeue`): an unknown partition, more nodes, CPUs, GPUs or memory
than a node has, options Slurm refuses, or a second job on a run directory that already has one become a one-line
SlurmOptionError (exit 2) instead of a job that waits forever.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Tuple

from resnext_dist.config import TrainConfig
from resnext_dist.errors import InputError


class SlurmOptionError(InputError):
    """A slurm.* setting the cluster cannot run (one line naming the key)."""


def tasks_per_node(s) -> int:
    """One task per GPU; 1 for a CPU job unless tasks_per_node says otherwise."""
    return s.tasks_per_node or s.gpus_per_node or 1


def run(cmd: List[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _gpus_in(gres: str) -> int:
    """GPUs in an sinfo %G field, e.g. 'gpu:8', 'gpu:a100:4(S:0-1),gpu:v100:2' -> 8, 6; '(null)' -> 0."""
    total = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if m:
            total += int(m.group(1))
    return total


def cluster_nodes() -> Tuple[Dict[str, List[Dict[str, Any]]], str]:
    """({partition: [{node, cpus, gpus, mem_mb, state}]}, name of the default partition or '')."""
    out = run(["sinfo", "-h", "-N", "-o", "%N|%P|%c|%G|%m|%t"])
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SlurmOptionError(f"sinfo failed: {last[0]}")
    parts: Dict[str, List[Dict[str, Any]]] = {}
    default = ""
    for line in out.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        node, part, cpus, gres, mem, state = fields
        if part.endswith("*"):
            part = default = part[:-1]
        mem_mb = int(re.sub(r"\D.*", "", mem) or 0)
        parts.setdefault(part, []).append(
            dict(node=node, cpus=int(cpus), gpus=_gpus_in(gres), mem_mb=mem_mb, state=state))
    return parts, default


def check_against_cluster(cfg: TrainConfig, script: str) -> None:
    """SlurmOptionError (one line, naming the slurm.* key) if this cluster can never run the job."""
    s = cfg.slurm
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise SlurmOptionError("sbatch/sinfo not found: run this on a Slurm login node (or start the local "
                               "cluster: eval \"$(bash slurm/dev-cluster/start.sh)\")")
    parts, default = cluster_nodes()
    name, up, fit = check_fits(s, parts, default)
    if up < s.nodes:  # may come back: say so, but submit
        print(f"warning: only {up} of the {fit} nodes of partition {name} that fit the job are up "
              f"(the others are down or drained); the job waits until {s.nodes} are", file=sys.stderr)
    _check_with_sbatch(script)


def check_fits(s, parts: Dict[str, List[Dict[str, Any]]], default: str) -> Tuple[str, int, int]:
    """(partition, fitting nodes that are up, fitting nodes) for config.SlurmConfig `s` on the nodes `cluster_nodes()`
    found; SlurmOptionError naming the key when no node set can ever run the job. GPUs come first: a GPU
    job on CPU nodes is a GPU problem, whatever its CPU count."""
    name = s.partition or default
    if name not in parts:
        known = ", ".join(sorted(parts)) or "none"
        what = f"slurm.partition={s.partition!r}: no such partition" if s.partition else \
            "slurm.partition is empty and the cluster has no default partition"
        raise SlurmOptionError(f"{what} (partitions: {known})")
    nodes = parts[name]
    tasks = tasks_per_node(s)
    if s.nodes > len(nodes):
        raise SlurmOptionError(f"slurm.nodes={s.nodes}: partition {name} has only {len(nodes)} node(s)")
    if s.gpus_per_node and not any(n["gpus"] for n in nodes):
        with_gpus = sorted(p for p, ns in parts.items() if any(n["gpus"] for n in ns))
        where = f"GPU partitions: {', '.join(with_gpus)}" if with_gpus else "this cluster has no GPUs"
        raise SlurmOptionError(f"slurm.gpus_per_node={s.gpus_per_node}: the nodes of partition {name} have no "
                               f"GPUs ({where}; slurm.gpus_per_node=0 runs on CPUs)")
    need = [("gpus", s.gpus_per_node, "GPUs", f"slurm.gpus_per_node={s.gpus_per_node}"),
            ("cpus", tasks * s.cpus_per_task, "CPUs",
             f"slurm.cpus_per_task={s.cpus_per_task} x {tasks} task(s) per node = {tasks * s.cpus_per_task} CPUs"),
            ("mem_mb", s.mem_gb * 1024, "MB", f"slurm.mem_gb={s.mem_gb}")]
    for key, amount, unit, label in need:
        most = max(n[key] for n in nodes)
        if amount > most:
            raise SlurmOptionError(f"{label}: nodes of partition {name} have at most {most} {unit}")
    fit = [n for n in nodes if all(n[key] >= amount for key, amount, _, _ in need)]
    if len(fit) < s.nodes:
        raise SlurmOptionError(f"slurm.nodes={s.nodes}: only {len(fit)} node(s) of partition {name} have "
                               f"{tasks * s.cpus_per_task} CPUs, {s.gpus_per_node} GPUs and {s.mem_gb} GB")
    return name, sum(not _unusable(n["state"]) for n in fit), len(fit)


def _check_with_sbatch(script: str) -> None:
    """Everything else (account, qos, constraint, additional_parameters): ask Slurm, submitting nothing."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(script)
    try:
        out = run(["sbatch", "--test-only", f.name])
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        lines = [re.sub(r"^sbatch: (error: )?", "", ln.strip()) for ln in (out.stderr + out.stdout).splitlines()
                 if ln.strip() and not ln.startswith("Try ")]
        reason = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "unknown reason")
        raise SlurmOptionError(f"Slurm refuses these slurm.* options: {reason}")


def _unusable(state: str) -> bool:
    """sinfo %t states of a node that takes no jobs now ('*' = not responding)."""
    return state.endswith("*") or state.startswith(("down", "drain", "drng", "fail", "inval", "maint"))


def check_run_dir_free(cfg: TrainConfig) -> None:
    """Refuse a second job on a run directory that already has one queued or running (they would fight
    over its checkpoints)."""
    out = run(["squeue", "--me", "-h", "-t", "PENDING,RUNNING,REQUEUED,SUSPENDED,COMPLETING", "-o", "%i|%T|%o"])
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        job_id, state, command = (line.split("|", 2) + ["", ""])[:3]
        folder = cfg.slurm.folder.replace("%j", job_id.split("_")[0])
        if os.path.dirname(command) == folder:
            raise SlurmOptionError(
                f"run.dir={cfg.run.dir} already has job {job_id} ({state}); wait for it, cancel it "
                f"(scancel {job_id}), or choose another run.name")
