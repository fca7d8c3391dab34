"""Where a run came from: code version, software versions, machine and launch context, as string tags.

    tags = provenance_tags(dist, run_dir)    # {"git.commit": "3f2a...", "git.dirty": "false", "world_size": "8", ...}

Used for MLflow run tags (resnext_dist.tracking); cheap (two `git` calls with a timeout) and never raises: what cannot
be found is "unknown". No MLflow import here.
"""
from __future__ import annotations

import getpass
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional

# The source tree this package was imported from (a git checkout for an editable install).
_SOURCE_DIR = Path(__file__).resolve().parents[2]

# Distributions whose versions decide what a run computes.
VERSIONED = ("torch", "torchvision", "ffcv", "numpy", "mlflow", "resnext_dist")


def git_state(path: Path = _SOURCE_DIR) -> Dict[str, str]:
    """{'commit': sha or 'unknown', 'dirty': 'true' | 'false' | 'unknown'}.

    Dirty means tracked files differ from the commit (like `git describe --dirty`); untracked files are
    ignored so that run outputs or notes in the checkout do not mark every run dirty.
    """
    commit = _git(path, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown", "dirty": "unknown"}
    status = _git(path, "status", "--porcelain", "--untracked-files=no")
    dirty = "unknown" if status is None else ("true" if status else "false")
    return {"commit": commit, "dirty": dirty}


def _git(path: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance_tags(dist, run_dir: Optional[str] = None) -> Dict[str, str]:
    """Tags describing this launch; `dist` is dist.DistInfo (world size, nodes, device)."""
    git = git_state()
    tags = {
        # mlflow.source.git.commit is MLflow's own key: the UI shows it on the run page.
        "mlflow.source.git.commit": git["commit"],
        "git.commit": git["commit"],
        "git.dirty": git["dirty"],
        "mlflow.source.name": "resnext_dist.train",
        "mlflow.user": _user(),
        "world_size": str(dist.world_size),
        "num_nodes": str(dist.num_nodes),
        "device": dist.device.type,
        "host": socket.gethostname(),
        "version.python": platform.python_version(),
    }
    for name in VERSIONED:
        tags[f"version.{name}"] = package_version(name)
    try:
        import torch  # already imported by the trainer; cheap here

        tags["version.torch"] = torch.__version__  # with the build's local tag, e.g. 2.14.1+cu130
        tags["version.cuda"] = str(torch.version.cuda or "none")
        if dist.device.type == "cuda":
            tags["gpu"] = torch.cuda.get_device_name(dist.device)
    except Exception:  # provenance must never stop a run
        pass
    env = os.environ
    if env.get("SLURM_JOB_ID"):
        tags["slurm.job_id"] = env["SLURM_JOB_ID"]
        if env.get("SLURM_ARRAY_JOB_ID"):
            tags["slurm.array_job_id"] = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
        if env.get("SLURM_RESTART_COUNT"):
            tags["slurm.restart_count"] = env["SLURM_RESTART_COUNT"]
    if env.get("TORCHELASTIC_RESTART_COUNT"):
        tags["torchrun.restart_count"] = env["TORCHELASTIC_RESTART_COUNT"]
    if run_dir:
        tags["run_dir"] = os.path.abspath(run_dir)
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
