"""Checkpoints: what a run must keep to continue exactly where it stopped, written atomically.

A checkpoint is `TrainState.state_dict()` in one file `checkpoints/step_00001234.pt`:
  model (unwrapped), optimizer, GradScaler, LR scheduler, EMA, step, epoch, samples consumed in the epoch
  (the loader position), RNG states (python, numpy, torch, cuda), the MLflow run id, and the resolved
  config with its hash.
Writing: rank 0 writes `.tmp-<name>`, fsyncs, renames it into place, fsyncs the directory, then points
`latest` at it (same dance), then deletes all but the newest `checkpoint.keep`. A save killed half-way
leaves only a `.tmp-` file that nothing reads. Every rank learns whether the save worked (one
all-reduce), so a full or read-only disk stops all ranks together instead of leaving some waiting.
"""
from __future__ import annotations

import glob
import hashlib
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import torch

from resnext_dist import dist as rdist
from resnext_dist.errors import InputError
from resnext_dist.files import atomic_write

NAME = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(InputError):
    """An unreadable or incompatible checkpoint (exit 2: bad input, named in the message)."""


class CheckpointWriteError(RuntimeError):
    """Saving failed on rank 0 (disk full, read-only); raised on every rank."""


@dataclass
class TrainState:
    """Everything that changes during training; exactly what a checkpoint holds."""

    model: torch.nn.Module  # the unwrapped model (not DDP, not compiled)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler] = None
    ema: Optional[torch.nn.Module] = None
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based)
    samples_in_epoch: int = 0  # samples (over all ranks) of `epoch` already trained on
    mlflow_run_id: Optional[str] = None
    config_yaml: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "samples_in_epoch": self.samples_in_epoch,
            "rng": rng_state(),
            "mlflow_run_id": self.mlflow_run_id,
            "config": self.config_yaml,
            "config_hash": config_hash(self.config_yaml),
            **self.extra,
        }

    def load_state_dict(self, sd: Dict[str, Any], path: str) -> None:
        _load_strict(self.model, sd["model"], path, "model")
        if self.ema is not None:
            if sd.get("ema") is None:
                raise CheckpointError(f"{path}: has no EMA weights but train.ema_decay is set")
            _load_strict(self.ema, sd["ema"], path, "ema")
        self.optimizer.load_state_dict(sd["optimizer"])
        self.scheduler.load_state_dict(sd["scheduler"])
        if self.scaler is not None and sd.get("scaler"):
            self.scaler.load_state_dict(sd["scaler"])
        self.step, self.epoch, self.samples_in_epoch = sd["step"], sd["epoch"], sd["samples_in_epoch"]
        self.mlflow_run_id = sd.get("mlflow_run_id")
        set_rng_state(sd["rng"])


def _load_strict(module: torch.nn.Module, sd: Dict[str, torch.Tensor], path: str, what: str) -> None:
    """A strict load whose error names the file and the first mismatching keys (never a partial load)."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in sd and hasattr(sd[k], "shape") and sd[k].shape != v.shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            problems.append(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})")
    if problems:
        raise CheckpointError(f"{path}: {what} does not match this config's model ({'; '.join(problems)})")
    module.load_state_dict(sd, strict=True)


def config_hash(yaml_text: str) -> str:
    return hashlib.sha256(yaml_text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# RNG state: python, numpy, torch CPU and CUDA, so a resumed run draws what the uninterrupted one drew


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Files


def save(state: TrainState, ckpt_dir: str, keep: int, dist) -> str:
    """Rank 0 writes; every rank returns the path or raises CheckpointWriteError together."""
    name = f"step_{state.step:08d}.pt"
    path = os.path.join(ckpt_dir, name)
    error = ""
    if dist.is_main:
        try:
            atomic_save(state.state_dict(), path)
            atomic_write(os.path.join(ckpt_dir, "latest"), name + "\n")
            _prune(ckpt_dir, keep)
        except OSError as e:
            error = f"could not save checkpoint {path}: {e}"
    # Sync point: all ranks learn the outcome, so nobody waits forever on a rank that failed.
    if rdist.any_rank(bool(error), dist.device):
        raise CheckpointWriteError(error or "checkpoint save failed on rank 0")
    return path


def atomic_save(obj: Any, path: str) -> None:
    """torch.save that never leaves a partial file at `path`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _prune(ckpt_dir: str, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints; a failed delete is not worth stopping training for."""
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        try:
            os.remove(old)
        except OSError:
            pass


def list_checkpoints(ckpt_dir: str):
    """Complete checkpoint files, oldest first (`.tmp-` leftovers of interrupted saves are not listed)."""
    files = [p for p in glob.glob(os.path.join(ckpt_dir, "step_*.pt")) if NAME.match(os.path.basename(p))]
    return sorted(files)


def find_latest(ckpt_dir: str) -> Optional[str]:
    """The checkpoint `latest` names, else the newest complete one, else None."""
    pointer = os.path.join(ckpt_dir, "latest")
    if os.path.exists(pointer):
        with open(pointer) as f:
            candidate = os.path.join(ckpt_dir, f.read().strip())
        if os.path.exists(candidate):
            return candidate
    files = list_checkpoints(ckpt_dir)
    return files[-1] if files else None


def load_file(path: str) -> Dict[str, Any]:
    """Read a checkpoint onto the CPU; a truncated or foreign file is a CheckpointError naming it."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    if not isinstance(sd, dict) or "model" not in sd or "step" not in sd:
        raise CheckpointError(f"{path}: not a resnext_dist checkpoint (no model/step entries)")
    return sd


class Checkpointer:
    """When to save, and what was saved last: every `every_steps` steps, at each epoch end, on a stop and at the
    end. "Already saved" compares the whole position (step, epoch, samples), so the epoch-end save is written
    even when an every_steps save just captured the same step mid-epoch (else a resume would redo the epoch's
    evaluation)."""

    def __init__(self, state: TrainState, ckpt_dir: str, keep: int, every_steps: int, dist):
        self.state, self.ckpt_dir, self.keep, self.every_steps, self.dist = state, ckpt_dir, keep, every_steps, dist
        self.last_saved = self._position()

    def _position(self):
        return self.state.step, self.state.epoch, self.state.samples_in_epoch

    def after_step(self) -> None:
        if self.every_steps and self.state.step % self.every_steps == 0:
            self.save()

    def save(self) -> None:
        if self._position() != self.last_saved:
            save(self.state, self.ckpt_dir, self.keep, self.dist)
            self.last_saved = self._position()
