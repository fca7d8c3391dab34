"""One holder at a time for a file or folder we write: a lock file held for the whole write, naming its holder.

Two writers of one output corrupt each other or both report success over the other's result: two trainers in
one run directory (run/lock.py), two dataset writers of one .beton (data/write.py). So the writer takes
`ExclusiveLock(lock_path)` before it looks at or writes the output, and holds it until it is done:

- the lock is `fcntl.flock` on the lock file, released by the kernel when its holder dies however it dies
  (SIGKILL, OOM, a reboot on a local disk), so a dead holder never blocks the next one. flock works across hosts
  on NFSv4 (Linux maps it to a byte-range lock since 2.6.12), Lustre mounted with `flock`, GPFS and BeeGFS.
- the file's content is a lease, one JSON line naming the holder (host, pid, Slurm job id, start time), so a
  second writer exits 2 at once naming who holds the output, instead of waiting or an anonymous "locked".
- where the filesystem refuses flock (ENOLCK: an NFS mount without a lock manager), the lease alone decides:
  a lease naming a live process on this host blocks; any other lease is taken over (with no lock service,
  liveness on another host cannot be checked).
- a lock file may be removed on release (`remove=True`): the holder unlinks it before unlocking, and whoever
  locked a file that is no longer at the path (opened just before the unlink) lets it go and opens the new one.
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


class InUse(InputError):
    """Another live holder has the lock (exit 2, naming it)."""


class ExclusiveLock:
    """`ExclusiveLock(path).acquire()` takes the lock file `path` (creating its folder) or raises InUse naming the
    holder; `release()` (or the process ending) gives it back. Also a context manager. Subclasses word the refusal
    (`in_use_message`) and choose the InputError it raises (`error`)."""

    error = InUse

    def __init__(self, path: str, remove: bool = False):
        self.path, self.remove = os.path.abspath(path), remove
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "ExclusiveLock":
        if self._fd is not None:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            # Not O_TRUNC: the holder's lease must stay readable until we know we hold the lock.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise self.error(self.in_use_message(_read_lease(fd))) from None
                    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                        raise
                    lease = _read_lease(fd)  # no lock service here: the lease alone decides
                    if _alive_here(lease):
                        raise self.error(self.in_use_message(lease)) from None
                if not _still_at(fd, self.path):  # its holder removed it on release: lock the new one
                    os.close(fd)
                    continue
                _write_lease(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self

    def release(self) -> None:
        """Remove the file (`remove`) or clear its lease, then drop the lock. A kept file is never deleted: deleting
        it would race with a writer that has just opened it, unless every taker checks as acquire() does."""
        if self._fd is None:
            return
        try:
            if self.remove:
                os.unlink(self.path)
            else:
                os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> "ExclusiveLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def in_use_message(self, lease: dict) -> str:
        return f"{self.path} is held by {holder(lease)}"


def holder(lease: dict) -> str:
    """'pid 12 on host h (Slurm job 3) since 2026-12-07 10:00:00 UTC' from a lease."""
    def word(key):  # a lease is read back from a file anyone may have written: plain short words only
        value = lease.get(key)
        ok = isinstance(value, int) or (isinstance(value, str) and value.isprintable() and 0 < len(value) <= 100)
        return str(value) if ok and not isinstance(value, bool) else None

    who = f"pid {word('pid') or '?'} on host {word('host') or '?'}"
    if word("slurm_job_id"):
        who += f" (Slurm job {word('slurm_job_id')})"
    since = lease.get("started")
    if isinstance(since, (int, float)) and not isinstance(since, bool) and 0 < since < 2**40:
        who += f" since {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(since))}"
    return who


def read_lease(path: str) -> dict:
    """The current holder's lease in the lock file `path` ({} when free or unreadable); for messages and tests."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        return _read_lease(fd)
    finally:
        os.close(fd)


def _read_lease(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        lease = json.loads(raw.decode("utf-8", "replace")) if raw.strip() else {}
        return lease if isinstance(lease, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_lease(fd: int) -> None:
    lease = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
             "started": time.time()}
    data = (json.dumps(lease) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _still_at(fd: int, path: str) -> bool:
    """The open file `fd` is the file now at `path` (not one unlinked since it was opened)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


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
