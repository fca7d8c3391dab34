"""Node-local staging (data.stage_dir): each .beton copied once per node to a local disk, and read from there.

    d = dataclasses.replace(d, **stage_files(d, ("train", "val")))   # every process calls it; one per node copies

A file on a shared filesystem (NFS, Lustre, GPFS) read by every process of every node, every epoch, is what
staging avoids: the copy of SRC is STAGE/<name>-<8 hex digits of SRC's absolute path>.beton (two datasets with one
file name never share a copy), and beside it <that>.json records the source (path, size, modification time), the
copy's size and SHA-256 (of the bytes as they were copied) and when it was last verified.

- One process per node copies: each takes an exclusive flock on STAGE itself; the first checks and copies, the
  others wait for the lock and then find a valid copy. The kernel releases the lock of a process that dies, so a
  killed copier blocks nobody: the next process finds no valid copy and copies again.
- A copy is valid when its record matches the source as it is now and the copy has the recorded size. The first
  process that meets a copy verified before it started (a resume, a requeue: not a sibling's fresh copy) hashes it
  again against the record: a local read, cheaper than copying from the shared filesystem again.
- The copy is written to <that>.partial, fsynced and renamed, and only then is the record written: a copy without
  a record is never trusted (it is redone), and a leftover .partial (a copier killed mid-copy) is removed.
- Not enough space (free + what is replaced < what is to copy) is an InputError naming the directory and the
  sizes, before anything is written; a disk that fills during the copy too, with the partial file removed.
- A tqdm bar shows on a terminal once a copy (or a verification) takes more than BAR_DELAY_S seconds; a line says
  what is copied and how fast, for logs.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import time
from typing import Dict, Iterable, List, Optional

from tqdm import tqdm

from resnext_dist.data.errors import DataError
from resnext_dist.errors import InputError
from resnext_dist.files import atomic_write

BAR_DELAY_S = 3.0
CHUNK = 16 * 2**20  # bytes per read: large sequential reads suit shared filesystems


def stage_files(d, splits: Iterable[str], *, bar_delay_s: float = BAR_DELAY_S, bar_file=None) -> Dict[str, str]:
    """{split: path of the node-local copy} for each of `splits` ("train", "val") the data section `d` names;
    copies what has no valid copy in data.stage_dir. InputError (exit 2) names the key, directory or file."""
    since = time.time()  # a copy verified after this was made or checked by a sibling of this start
    stage_dir = _stage_dir(d.stage_dir)
    sources = {split: os.path.abspath(getattr(d, split)) for split in splits if getattr(d, split)}
    for split, src in sources.items():
        if not os.path.isfile(src):
            raise DataError(f"{src}: no such file (data.{split}; to stage into data.stage_dir={d.stage_dir!r})")
    made = not os.path.isdir(stage_dir)
    try:
        os.makedirs(stage_dir, exist_ok=True)
        lock = os.open(stage_dir, os.O_RDONLY)
    except OSError as e:
        raise InputError(f"data.stage_dir={d.stage_dir!r}: cannot use {stage_dir} ({e.strerror})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by close, or by the kernel if this process dies
        copies = {src: _copy_path(stage_dir, src) for src in sources.values()}
        todo = [src for src in copies if not _valid(src, copies[src], since, bar_delay_s, bar_file)]
        _check_space(stage_dir, todo, copies)
        for src in todo:
            _copy(src, copies[src], bar_delay_s, bar_file)
    except InputError:
        if made:
            _remove_empty_dir(stage_dir)
        raise
    finally:
        os.close(lock)
    return {split: copies[src] for split, src in sources.items()}


def _stage_dir(value: str) -> str:
    path = os.path.expanduser(os.path.expandvars(value))
    unset = re.search(r"\$\{?(\w+)", path)  # expandvars leaves an unset variable as written
    if unset:
        raise InputError(f"data.stage_dir={value!r}: ${unset.group(1)} is not set on {socket.gethostname()}")
    return os.path.abspath(path)


def _copy_path(stage_dir: str, src: str) -> str:
    stem, ext = os.path.splitext(os.path.basename(src))
    return os.path.join(stage_dir, f"{stem}-{hashlib.sha256(src.encode()).hexdigest()[:8]}{ext}")


def record_path(copy: str) -> str:
    return copy + ".json"


def _read_record(copy: str) -> Optional[dict]:
    try:
        with open(record_path(copy)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _valid(src: str, copy: str, since: float, bar_delay_s: float, bar_file) -> bool:
    """Whether `copy` is a whole, current copy of `src` (hashing it once per start when it is older than that)."""
    record, st = _read_record(copy), os.stat(src)
    if record is None or not os.path.isfile(copy):
        return False
    if (record.get("source"), record.get("size"), record.get("mtime_ns")) != (src, st.st_size, st.st_mtime_ns) \
            or os.path.getsize(copy) != st.st_size:
        return False  # stale (the source changed) or torn
    if record.get("verified_at", 0) >= since:
        return True  # a sibling process copied or verified it while this one waited for the lock
    with open(copy, "rb") as f, _bar(st.st_size, f"verifying {os.path.basename(copy)}", bar_delay_s, bar_file) as bar:
        digest = _stream(f, None, bar)
    if digest != record.get("sha256"):
        print(f"resnext_dist: staged copy {copy} does not match its record (SHA-256); copying {src} again",
              flush=True)
        return False
    atomic_write(record_path(copy), json.dumps({**record, "verified_at": time.time()}, indent=1))
    return True


def _check_space(stage_dir: str, todo: List[str], copies: Dict[str, str]) -> None:
    """InputError unless the free space, plus what the copies to redo replace, holds every file to copy."""
    need = sum(os.path.getsize(src) for src in todo)
    freed = sum(os.path.getsize(p) for src in todo for p in (copies[src], copies[src] + ".partial")
                if os.path.isfile(p))
    free = _free_bytes(stage_dir)
    if need > free + freed:
        names = ", ".join(os.path.basename(src) for src in todo)
        raise InputError(f"data.stage_dir: not enough space in {stage_dir} for {names}: needs {_gb(need)}, "
                         f"{_gb(free + freed)} available")


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _copy(src: str, copy: str, bar_delay_s: float, bar_file) -> None:
    """`src` -> `copy` by way of copy.partial (fsynced, renamed), then its record."""
    for stale in (record_path(copy), copy, copy + ".partial"):  # the record first: a copy never outlives it
        if os.path.exists(stale):
            os.remove(stale)
    st, partial = os.stat(src), copy + ".partial"
    print(f"resnext_dist: staging {src} ({_gb(st.st_size)}) to {os.path.dirname(copy)}", flush=True)
    t0 = time.perf_counter()
    try:
        with open(src, "rb") as fin, open(partial, "wb") as fout, \
                _bar(st.st_size, f"staging {os.path.basename(src)}", bar_delay_s, bar_file) as bar:
            digest = _stream(fin, fout, bar)
            fout.flush()
            os.fsync(fout.fileno())
        if os.path.getsize(partial) != st.st_size or os.stat(src).st_mtime_ns != st.st_mtime_ns:
            raise DataError(f"{src}: changed while it was being staged; start again once it is written")
        os.replace(partial, copy)
        _fsync_dir(os.path.dirname(copy))
        seconds = time.perf_counter() - t0
        atomic_write(record_path(copy), json.dumps({
            "source": src, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest,
            "copied_at": time.time(), "copy_seconds": round(seconds, 3), "host": socket.gethostname(),
            "verified_at": time.time()}, indent=1))
    except BaseException as e:
        for path in (partial, copy):  # nothing half-done stays: a copy without its record would be redone anyway
            if os.path.exists(path) and not os.path.exists(record_path(copy)):
                os.remove(path)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputError(f"data.stage_dir: not enough space in {os.path.dirname(copy)} for "
                             f"{os.path.basename(src)}: needs {_gb(st.st_size)} (the disk filled while copying)") \
                from None
        raise
    print(f"resnext_dist: staged {os.path.basename(src)} in {seconds:.1f} s "
          f"({st.st_size / 2**20 / max(seconds, 1e-9):,.0f} MiB/s)", flush=True)


def _stream(fin, fout, bar) -> str:
    """Read `fin` to its end (writing each chunk to `fout` unless None); the SHA-256 of what was read."""
    digest, buf = hashlib.sha256(), bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        n = fin.readinto(buf)
        if not n:
            return digest.hexdigest()
        digest.update(view[:n])  # hashlib releases the GIL on large updates
        if fout is not None:
            fout.write(view[:n])
        bar.update(n)


def _bar(total: int, desc: str, delay: float, file) -> tqdm:
    # disable=None: only on a terminal (a Slurm log gets the lines above instead of carriage returns)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, delay=delay, disable=None,
                file=file or sys.stderr, leave=False)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_empty_dir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
