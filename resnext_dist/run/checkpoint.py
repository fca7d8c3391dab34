"""Checkpoints: what a run must keep to continue exactly where it stopped, written atomically, read without
running code, chosen once for all ranks.

A checkpoint is `TrainState.state_dict()` in one file `checkpoints/step_00001234.pt`:
  model (unwrapped), optimizer, GradScaler, LR scheduler, EMA, step, epoch, samples consumed in the epoch
  (the loader position), RNG states (python, numpy, torch, cuda), the tracker's state, the resolved config with
  its hash, its `lineage` (the run's identity hash, its step, the checkpoint it continued from) and `format`
  (FORMAT). Everything in it is a tensor or a plain value, so it loads with
  weights/safe_load.py; a file that needs more (a crafted pickle that would run code) is refused with
  `UnsafeCheckpoint`, never unpickled. The files' names, `latest`, and finding them are weights/layout.py's.
Writing: rank 0 writes `.tmp-<name>`, fsyncs, renames it into place, fsyncs the directory, then points
`latest` at it (same dance), then deletes all but the newest `checkpoint.keep`. A save killed half-way
leaves only a `.tmp-` file that nothing reads. Every rank learns whether the save worked (one
all-reduce), so a full or read-only disk stops all ranks together with `CheckpointWriteError`, whatever
layer raised (torch's zip writer says RuntimeError on a full disk, not OSError).
When: `Checkpointer` (every `every_steps` steps, and at epoch end, stop and finish, never twice for one state).
Which to resume: `choose_resume` on rank 0, broadcast to all: the newest *valid* file, where valid means a regular
file inside the checkpoints folder (not a link out of it), every byte matching its zip checksum (torch.load itself
reads a zeroed tensor without a word), and a lineage of this run: its config's identity keys equal the run's, and
its step the one in its name. Auto-resume skips any other with its reason; an explicit path must be valid.
Resuming an explicit earlier checkpoint (or none: resume=never) starts a branch: `branch` moves the abandoned
trajectory's later checkpoints aside (kept), so auto-resume and pruning see only the branch.
"""
from __future__ import annotations

import hashlib
import os
import random
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from resnext_dist import dist as rdist
from resnext_dist.errors import InputError
from resnext_dist.files import NotRegularFile, atomic_write, open_regular
from resnext_dist.readback import check, count, text
from resnext_dist.run.rundir import identity_diff, parse_config, show
from resnext_dist.weights.init import mismatch
from resnext_dist.weights.layout import (LATEST, abandoned_dir, checkpoint_candidates, checkpoint_name, checkpoint_step,
                                         list_checkpoints)
from resnext_dist.weights.safe_load import RefusedFile, UnreadableFile, brief, safe_load
# The format's name, not this module's path: a checkpoint written before the package moved still resumes.
FORMAT = "resnext_dist.checkpoint/2"  # 2: plain values only (1 held numpy RNG arrays and needed a full unpickle)
PLAIN = {"step": count, "epoch": count, "samples_in_epoch": count, "config": text(1 << 20)}  # its plain values


class CheckpointError(InputError):
    """An unreadable or incompatible checkpoint (exit 2: bad input, named in the message)."""


class UnsafeCheckpoint(CheckpointError):
    """A file that only a full unpickle could read: it is refused, never loaded (it could run code)."""


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
    tracker: Optional[Dict[str, Any]] = None  # the tracker's own state (resnext_dist.tracking), kept as it is
    config_yaml: str = ""
    identity: str = ""  # the run's identity hash (config/identity.py)
    parent: Optional[Dict[str, Any]] = None  # {"name", "step"} of the checkpoint this state continued from
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
            "tracker": self.tracker,
            "format": FORMAT,
            "config": self.config_yaml,
            "config_hash": hashlib.sha256(self.config_yaml.encode()).hexdigest()[:16],
            "lineage": {"identity": self.identity, "step": self.step, "parent": self.parent},
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
        # checkpoints written before the tracker's state was opaque hold its MLflow run id alone
        old_id = sd.get("mlflow_run_id")
        self.tracker = sd.get("tracker") or ({"mlflow_run_id": old_id} if old_id else None)
        set_rng_state(sd["rng"])


def _load_strict(module: torch.nn.Module, sd: Dict[str, torch.Tensor], path: str, what: str) -> None:
    """A strict load whose error names the file and the first mismatching keys (never a partial load)."""
    problems = mismatch(module.state_dict(), sd)
    if problems:
        raise CheckpointError(f"{path}: {what} does not match this config's model ({problems})")
    module.load_state_dict(sd, strict=True)


def rng_state() -> Dict[str, Any]:
    """python's, numpy's, torch's CPU and CUDA generators, so a resumed run draws what the uninterrupted one drew;
    as tensors and plain values (not numpy arrays or tuples of them), so the file loads with weights_only=True."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": list(internal), "gauss": gauss},
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """Saves `state` into `ckpt_dir` (keeping the newest `keep`) every `every_steps` steps (0 = never by
    count) and whenever `save()` is called (epoch end, stop, finish), never twice for the same state.

    "The same state" is (step, epoch, samples_in_epoch), not the step alone: a step-count save at an epoch's
    last step happens before the epoch counter advances, and the epoch-end save at the same step must still
    be written, or a resume would train past the end of an epoch it already finished and evaluate it again.
    Build it after resuming: the state it starts from is already on disk."""

    def __init__(self, state: TrainState, ckpt_dir: str, keep: int, every_steps: int, dist):
        self.state, self.ckpt_dir, self.keep, self.every_steps, self.dist = state, ckpt_dir, keep, every_steps, dist
        self._saved_key = self._key()
        self.last_saved_path: Optional[str] = None

    def _key(self) -> Tuple[int, int, int]:
        return self.state.step, self.state.epoch, self.state.samples_in_epoch

    @property
    def last_saved_step(self) -> int:
        return self._saved_key[0]

    def after_step(self) -> Optional[str]:
        """Call once after every optimizer step (on every rank): saves when the step count says so."""
        return self.save() if self.every_steps and self.state.step % self.every_steps == 0 else None

    def save(self) -> Optional[str]:
        """Save now unless this exact state was saved already; returns the path written (None if skipped).
        Collective: call on every rank."""
        if self._key() == self._saved_key:
            return None
        self.last_saved_path = save(self.state, self.ckpt_dir, self.keep, self.dist)
        self._saved_key = self._key()
        return self.last_saved_path


def save(state: TrainState, ckpt_dir: str, keep: int, dist) -> str:
    """Rank 0 writes; every rank returns the path or raises CheckpointWriteError together. The state's `parent`
    becomes this file: the next save continues from it."""
    name = checkpoint_name(state.step)
    path = os.path.join(ckpt_dir, name)
    error = ""
    if dist.is_main:
        try:
            atomic_save(state.state_dict(), path)
            atomic_write(os.path.join(ckpt_dir, LATEST), name + "\n")
            _prune(ckpt_dir, keep, state.step)
        except Exception as e:  # torch's serializer turns a full disk into RuntimeError; any failure counts
            error = f"could not save checkpoint {path}: {write_failure(e)}"
    # Sync point: all ranks learn the outcome, so nobody waits forever on a rank that failed; on failure
    # (only then) rank 0's message travels too, so every rank's error names the file and the cause.
    if rdist.any_rank(bool(error), dist.device):
        raise CheckpointWriteError(rdist.broadcast_object(error) or "checkpoint save failed on rank 0")
    state.parent = {"name": name, "step": state.step}
    return path


def write_failure(exc: BaseException) -> str:
    """The cause of a failed write in words: the OSError underneath if there is one (torch's zip writer
    reports a full disk as "unexpected pos 65152 vs 65048", with the real OSError as its context)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__
    return f"{type(exc).__name__}: {brief(exc)}"


def atomic_save(obj: Any, path: str) -> None:
    """torch.save that never leaves a partial file at `path` (nor its temporary file, whatever fails)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _prune(ckpt_dir: str, keep: int, step: int) -> None:
    """Delete all but the newest `keep` checkpoints up to `step` (the one just saved); a file numbered above it is
    no save of this trajectory (a branch moved its own aside), so not this save's to judge. A failed delete is not
    worth stopping training for."""
    for old in [p for p in list_checkpoints(ckpt_dir) if checkpoint_step(p) <= step][:-keep]:
        try:
            os.remove(old)
        except OSError:
            pass


def load_file(path: str, mmap: bool = False) -> Dict[str, Any]:
    """Read a checkpoint onto the CPU (weights/safe_load.py: weights_only). A file that would need a full unpickle
    is UnsafeCheckpoint (never unpickled); a truncated or foreign file is CheckpointError; both name the file.
    `mmap` maps tensor storage instead of reading it (a cheap validity check of a large file)."""
    try:
        sd = safe_load(path, "checkpoint", mmap=mmap)
    except RefusedFile as e:
        what = f" (it names {e.names})" if e.names else f" ({e.reason})"
        # resnext_dist's own format 1 held numpy RNG arrays: say so rather than leave its owner guessing.
        old = "; resnext_dist wrote numpy arrays only before checkpoint format 2" if (e.names or "").startswith(
            "numpy") else ""
        raise UnsafeCheckpoint(f"{path}: refused: not a plain tensors-and-values checkpoint{what}; loading it "
                               f"would need a full unpickle, which can run code{old}") from None
    except UnreadableFile as e:
        raise CheckpointError(f"{path}: no such checkpoint file" if e.missing else str(e)) from None
    if not isinstance(sd, dict) or "model" not in sd or "step" not in sd:
        raise CheckpointError(f"{path}: not a resnext_dist checkpoint (no model/step entries)")
    if sd.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {sd.get('format', 1)!r}, this version reads {FORMAT!r}")
    return sd


def verify(path: str) -> None:
    """Every byte of a checkpoint file as it was written: a regular file (files.open_regular: a FIFO is refused, never
    waited on) whose zip records all match their CRC-32 (torch.load does not check them: a zeroed stretch of a
    tensor loads as zeros). CheckpointError naming the file otherwise; a file that is not a zip is left to load_file
    (which refuses it). Reads the whole file once."""
    try:
        with open_regular(path, "a checkpoint") as f:
            if not zipfile.is_zipfile(f):
                return
            with zipfile.ZipFile(f) as archive:
                bad = archive.testzip()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except NotRegularFile as e:
        raise CheckpointError(str(e)) from None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:  # a torn directory or header
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {brief(e)})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt: {bad} does not match its checksum")


def check_lineage(sd: Dict[str, Any], path: str, cfg) -> None:
    """CheckpointError unless `sd` (read from `path`) belongs to the run of `cfg`: its recorded config has the
    run's identity (the differences named), and its step is the one its file name says."""
    problem = check(sd, PLAIN, required=PLAIN)
    if problem:
        raise CheckpointError(f"{path}: not a checkpoint of ours ({problem})")
    named = checkpoint_step(path)
    if named is not None and sd["step"] != named:
        raise CheckpointError(f"{path}: holds step {sd['step']}, its name says {named}: not the file this run "
                              f"saved under that name")
    try:
        recorded = parse_config(sd["config"], path)
    except InputError:
        raise CheckpointError(f"{path}: records no run config, so it cannot be this run's") from None
    # the global batch (0: the run's own) is build.with_global_batch's to compare, against the checkpoint's own
    diff = [d for d in identity_diff(cfg, recorded) if d[0] != "optim.global_batch_size"]
    if diff:
        there = ", ".join(f"{k}: {show(was)} there, {show(now)} here" for k, was, now in diff)
        raise CheckpointError(f"{path}: a checkpoint of another run ({there}); to start a new run from its "
                              f"weights, use model.init={path} with checkpoint.resume=never")


def choose_resume(cfg, ckpt_dir: str, dist, skipped: Optional[List[Tuple[str, str]]] = None) -> Optional[str]:
    """The checkpoint every rank must load, or None to start fresh. Collective: call on every rank.

    `cfg.checkpoint.resume` is "never"; "auto" = the newest valid checkpoint of `ckpt_dir` (see the module
    docstring; each one passed over (path, reason) is appended to `skipped` on every rank, for a warning
    event), None when there is none, CheckpointError when there are some and none is valid; or a path, which
    must be valid. Rank 0 decides and broadcasts the path, so ranks never resume from different files. A file
    that is unsafe to load (UnsafeCheckpoint) is never skipped: it raises, as does any CheckpointError of an
    explicit path, on every rank with rank 0's message.
    """
    choice: Tuple[Optional[str], List[Tuple[str, str]], str, bool] = (None, [], "", False)
    if dist.is_main:
        choice = _choose(cfg, ckpt_dir)
    path, passed_over, error, unsafe = rdist.broadcast_object(choice)
    if error:
        raise (UnsafeCheckpoint if unsafe else CheckpointError)(error)
    if skipped is not None:
        skipped.extend(passed_over)
    return path


def _choose(cfg, ckpt_dir: str):
    """(path, skipped, error message, unsafe) as rank 0 sees it; never raises."""
    resume = cfg.checkpoint.resume
    if resume == "never":
        return None, [], "", False
    candidates = checkpoint_candidates(ckpt_dir) if resume == "auto" else [resume]
    skipped: List[Tuple[str, str]] = []
    for path in candidates:
        try:
            if resume == "auto" and not _inside(path, ckpt_dir):
                raise CheckpointError(f"{path}: a link out of {ckpt_dir} (to {os.path.realpath(path)})")
            verify(path)
            check_lineage(load_file(path, mmap=True), path, cfg)
            return path, skipped, "", False
        except UnsafeCheckpoint as e:
            return None, skipped, str(e), True
        except CheckpointError as e:
            if resume != "auto":
                return None, skipped, str(e), False
            skipped.append((path, str(e)))
    if skipped:  # checkpoints exist and none is valid: starting over would silently throw the run away
        others = f" nor are {len(skipped) - 1} older ones" if len(skipped) > 1 else " and there is no other"
        return None, skipped, f"{skipped[0][1]};{others} in {ckpt_dir}", False
    return None, skipped, "", False


def _inside(path: str, folder: str) -> bool:
    """Is `path`, links followed, a file directly in `folder` (itself possibly a link: checkpoints on another
    disk)?"""
    return os.path.dirname(os.path.realpath(path)) == os.path.realpath(folder)


def branch(resumed: Optional[str], at: int, ckpt_dir: str) -> Tuple[List[str], str]:
    """Start a branch at step `at` from the checkpoint `resumed` by hand (None: a fresh start over the same run
    directory): the checkpoints of `ckpt_dir` it leaves behind (a step at or above `at`; every one for a fresh
    start) are moved to an `abandoned-at-...` folder (kept: that trajectory is not deleted), and `latest` names
    `resumed` if it is in `ckpt_dir`. Returns (names moved, folder); nothing moved: ([], ""). Rank 0, before the
    branch saves."""
    own = resumed is not None and _inside(resumed, ckpt_dir)
    later = [p for p in list_checkpoints(ckpt_dir) if resumed is None or (
        checkpoint_step(p) >= at and not (own and os.path.samefile(p, resumed)))]
    if not later:
        return [], ""
    folder = abandoned_dir(ckpt_dir, at, time.strftime("%Y%m%dT%H%M%S"))
    os.makedirs(folder, exist_ok=True)
    for path in later:
        os.replace(path, os.path.join(folder, os.path.basename(path)))
    if own:
        atomic_write(os.path.join(ckpt_dir, LATEST), os.path.basename(resumed) + "\n")
    else:
        try:
            os.remove(os.path.join(ckpt_dir, LATEST))
        except FileNotFoundError:
            pass
    return [os.path.basename(p) for p in later], folder
