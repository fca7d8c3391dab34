"""Where weights lie on disk, said once for those who write them (the trainer, export.py, run/checkpoint.py) and
those who read them (model.init, evaluate, predict, a resume):

    an export folder   model.safetensors (the state dict) + model.json (how to rebuild and feed it: export.py)
    a run directory    export/ (an export folder: the run's one final-weights file; a run of an earlier version
                       may hold final_weights.pt, a state dict, instead or beside it),
                       checkpoints/step_NNNNNNNN.pt with `latest` naming the newest (run/checkpoint.py), and
                       checkpoints/abandoned-at-step_NNNNNNNN-TIME/: a trajectory left by a resume from an earlier
                       checkpoint (its later saves, kept)

`find_weights(PATH)` is the file model.init=PATH reads: an export (its folder, model.json or a .safetensors file),
a run directory (its export/, else an earlier version's final_weights.pt, else its newest checkpoint), or any other
file.
"""
from __future__ import annotations

import glob
import os
import re
from typing import List, Optional, Tuple

from resnext_dist.errors import InputError
from resnext_dist.readback import read_regular

WEIGHTS_FILE, META_FILE = "model.safetensors", "model.json"
EXPORT_DIR, FINAL_WEIGHTS, CHECKPOINTS_DIR, LATEST = "export", "final_weights.pt", "checkpoints", "latest"
CHECKPOINT_NAME = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def export_folders(path: str) -> Tuple[str, str]:
    """Where a directory's export may be: the directory itself (an export folder), or its export/ (a run directory)."""
    return path, os.path.join(path, EXPORT_DIR)


def find_weights(path: str) -> Tuple[str, str]:
    """(file to read, what it is: "export", "final weights", "checkpoint" or "state dict") for PATH (see the
    module docstring); InputError if there is none."""
    if not path:
        raise InputError("no weights given (model.init is empty)")
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or directory (weights)")
    if os.path.isdir(path):
        for candidate, kind in [(os.path.join(folder, WEIGHTS_FILE), "export") for folder in export_folders(path)] + [
                (os.path.join(path, FINAL_WEIGHTS), "final weights")]:
            if os.path.isfile(candidate):
                return candidate, kind
        latest = find_latest(os.path.join(path, CHECKPOINTS_DIR))
        if latest:
            return latest, "checkpoint"
        raise InputError(f"{path}: a directory with no weights (no {WEIGHTS_FILE}, {EXPORT_DIR}/, {FINAL_WEIGHTS} "
                         f"or {CHECKPOINTS_DIR}/)")
    if path.endswith(".json"):
        return os.path.join(os.path.dirname(path), WEIGHTS_FILE), "export"
    if path.endswith(".safetensors"):
        return path, "export"
    return path, "state dict"


def checkpoint_step(path: str) -> Optional[int]:
    """The step a checkpoint's file name says (step_00001234.pt -> 1234), None for another name."""
    found = CHECKPOINT_NAME.match(os.path.basename(path))
    return int(found.group(1)) if found else None


def abandoned_dir(ckpt_dir: str, step: int, when: str) -> str:
    """Where a branch started at `step` puts the abandoned trajectory's later checkpoints (kept, never listed)."""
    return os.path.join(ckpt_dir, f"abandoned-at-{checkpoint_name(step)[:-3]}-{when}")


def list_checkpoints(ckpt_dir: str) -> List[str]:
    """Complete checkpoint files, oldest first (`.tmp-` leftovers of interrupted saves are not listed, nor the
    abandoned trajectories' folders)."""
    files = [p for p in glob.glob(os.path.join(ckpt_dir, "step_*.pt")) if CHECKPOINT_NAME.match(os.path.basename(p))]
    return sorted(files)


def read_latest(ckpt_dir: str) -> Optional[str]:
    """The checkpoint `latest` names (a file name of ours, nothing else: not a path), or None."""
    data, _ = read_regular(os.path.join(ckpt_dir, LATEST), 256)
    name = data.decode("utf-8", "replace").strip() if data else ""
    return os.path.join(ckpt_dir, name) if CHECKPOINT_NAME.match(name) else None


def checkpoint_candidates(ckpt_dir: str) -> List[str]:
    """Checkpoint files in the order a resume tries them: the one `latest` names (the newest save of the current
    trajectory), then the others newest first; files numbered above `latest`'s, which no save of this trajectory
    wrote, last."""
    files, named = list_checkpoints(ckpt_dir)[::-1], read_latest(ckpt_dir)
    if named not in files:
        return files
    top = checkpoint_step(named)
    return [named] + [f for f in files if checkpoint_step(f) < top] + [f for f in files if checkpoint_step(f) > top]


def find_latest(ckpt_dir: str) -> Optional[str]:
    """The checkpoint `latest` names, else the newest complete one, else None (existence only; what
    `checkpoint.resume=auto` resumes is run/checkpoint.choose_resume's newest *valid* one)."""
    return next(iter(checkpoint_candidates(ckpt_dir)), None)
