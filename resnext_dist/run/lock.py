"""One live trainer per run directory: a lock held for the run's whole life.

Two trainers on one run directory corrupt each other (they write the same checkpoints and log.jsonl, and
resume from whatever the other wrote). So the trainer's rank 0 takes `RUN_DIR/.lock` before it writes
anything, and holds it until the process ends: an `ExclusiveLock` (exclusive.py: flock, released by the kernel
when its holder dies however it dies, and a lease naming the holder, so a second trainer exits 2 at once naming
who holds the directory). Only the global rank 0 takes it (every node's local rank 0 would lock each other out
on a shared directory). The file stays after the run; its lease is cleared.
"""
from __future__ import annotations

import os
from typing import Optional

from resnext_dist.errors import InputError
from resnext_dist.exclusive import ExclusiveLock, InUse, holder, read_lease as read_lease_file

LOCK_NAME = ".lock"


class RunDirInUse(InUse):
    """Another live trainer holds the run directory (exit 2, naming it)."""


class RunLock(ExclusiveLock):
    """`RunLock(run_dir).acquire()` takes the run directory or raises RunDirInUse; `release()` (or the
    process ending) gives it back. Also a context manager."""

    error = RunDirInUse

    def __init__(self, run_dir: str):
        self.run_dir = os.path.abspath(run_dir)
        super().__init__(os.path.join(self.run_dir, LOCK_NAME))

    def in_use_message(self, lease: dict) -> str:
        return (f"run directory {self.run_dir} is in use by {holder(lease)}; wait for that trainer to end or stop "
                f"it, or choose another run.dir")


def hold_run_dir(run_dir: str, dist) -> Optional[RunLock]:
    """Rank 0 takes the run directory's lock; every rank raises RunDirInUse together if it is held elsewhere.
    Collective (one all-reduce, plus a broadcast of the message when refused; InputError when the directory
    cannot be created); call it on every rank after the process group exists and before anything is written to
    the run directory. Returns the lock on rank 0 (keep it referenced for the run's life; `release()` it at the
    end), None elsewhere."""
    from resnext_dist import dist as rdist  # torch, for the collective only: RunLock alone stays light
    lock, error, in_use = None, "", False
    if dist.is_main:
        try:
            lock = RunLock(run_dir).acquire()
        except RunDirInUse as e:
            error, in_use = str(e), True
        except OSError as e:  # cannot create the directory or the lock file: the other ranks must not wait
            error = f"run directory {os.path.abspath(run_dir)}: cannot take its lock ({e.strerror or e})"
    # Sync point: every rank learns whether rank 0 holds the directory (and, only if not, why).
    if rdist.any_rank(bool(error), dist.device):
        error, in_use = rdist.broadcast_object((error, in_use))
        raise (RunDirInUse if in_use else InputError)(error)
    return lock


def read_lease(run_dir: str) -> dict:
    """The current holder's lease ({} when free or unreadable); for messages and tests."""
    return read_lease_file(os.path.join(run_dir, LOCK_NAME))
