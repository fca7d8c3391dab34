"""One live trainer per run directory: a lock held for the run's whole life.

Two trainers on one run directory corrupt each other (they write the same checkpoints and log.jsonl, and
resume from whatever the other wrote). So the trainer's rank 0 takes `RUN_DIR/.lock` before it writes
anything, and holds it until the process ends:

- the lock is `fcntl.flock` on that file. It is released by the kernel when its holder dies, however it dies
  (SIGKILL, OOM, node reboot on a local disk), so a lock left by a dead trainer never blocks the next one.
  flock works across hosts on NFSv4 (Linux maps it to a byte-range lock since 2.6.12), Lustre mounted with
  `flock`, GPFS and BeeGFS; only the global rank 0 takes it (every node's local rank 0 would lock each
  other out on a shared directory).
- the file's content is a lease, one JSON line naming the holder (host, pid, Slurm job id, start time), so a
  second trainer exits 2 at once naming who holds the directory instead of an anonymous "locked".
- where the filesystem refuses flock (ENOLCK: an NFS mount without a lock manager), the lease alone decides:
  a lease naming a live process on this host blocks; any other lease is taken over (with no lock service,
  liveness on another host cannot be checked).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from typing import Optional

from resnext_dist.errors import InputError
from resnext_dist.readback import count, optional, text, timestamp

LOCK_NAME = ".lock"
LEASE = {"host": text(255), "pid": count, "slurm_job_id": optional(text(64)), "started": timestamp}


class RunDirInUse(InputError):
    """Another live trainer holds the run directory (exit 2, naming it)."""


class RunLock:
    """`RunLock(run_dir).acquire()` takes the run directory or raises RunDirInUse; `release()` (or the
    process ending) gives it back. Also a context manager."""

    def __init__(self, run_dir: str):
        self.run_dir = os.path.abspath(run_dir)
        self.path = os.path.join(self.run_dir, LOCK_NAME)
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        os.makedirs(self.run_dir, exist_ok=True)
        # Not O_TRUNC: the holder's lease must stay readable until we know we hold the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunDirInUse(self._in_use_message(_read_lease(fd))) from None
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                lease = _read_lease(fd)  # no lock service here: the lease alone decides
                if _alive_here(lease):
                    raise RunDirInUse(self._in_use_message(lease)) from None
            _write_lease(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Clear the lease and drop the lock. The file stays: deleting a lock file races with a trainer that
        has just opened it (it would lock a file nobody else sees)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _in_use_message(self, lease: dict) -> str:
        who = f"pid {lease.get('pid', '?')} on host {lease.get('host', '?')}"
        if lease.get("slurm_job_id"):
            who += f" (Slurm job {lease['slurm_job_id']})"
        since = lease.get("started")
        when = f" since {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(since))}" if since else ""
        return (f"run directory {self.run_dir} is in use by {who}{when}; wait for that trainer to end or stop "
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
    try:
        fd = os.open(os.path.join(run_dir, LOCK_NAME), os.O_RDONLY)
    except OSError:
        return {}
    try:
        return _read_lease(fd)
    finally:
        os.close(fd)


def _read_lease(fd: int) -> dict:
    """The lease's fields that have the shape we write (LEASE); a field of another shape is as if absent."""
    try:
        raw = os.pread(fd, 4096, 0)
        lease = json.loads(raw.decode("utf-8", "replace")) if raw.strip() else {}
    except (OSError, ValueError, RecursionError):
        return {}
    return {k: v for k, v in lease.items() if k in LEASE and not LEASE[k](v)} if isinstance(lease, dict) else {}


def _write_lease(fd: int) -> None:
    lease = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
             "started": time.time()}
    data = (json.dumps(lease) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _alive_here(lease: dict) -> bool:
    """True if the lease names a live process on this host (other than this one)."""
    pid = lease.get("pid")
    if lease.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True
