"""What `bench loader --memory-limit` needs to measure a .beton larger than the memory a process may use: a memory
cgroup for each child (v1 or v2, whichever this machine mounts with its memory controller; root or a delegated
cgroup), the bytes a process read from the disk (/proc/self/io), and a file dropped from the page cache so the
next read of it comes from the disk.

The limit counts the page cache a process fills as well as its own memory (both cgroup versions charge it), so a
file larger than the limit cannot stay cached for it; without swap (the usual node), a process whose own memory
passes the limit is killed by the kernel's OOM killer, which the bench reports as such.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from resnext_dist.errors import InputError

V1_ROOT, V2_ROOT = "/sys/fs/cgroup/memory", "/sys/fs/cgroup"


def parse_size(text: str) -> int:
    """'1.5G', '800M', '65536' -> bytes (binary units: K = 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", text)
    if not match:
        raise InputError(f"--memory-limit {text!r}: expected a size such as 2G or 800M")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def read_bytes() -> int:
    """Bytes this process (all its threads) caused to be read from storage: page-cache hits do not count."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes"))


def drop_from_page_cache(path: str) -> None:
    """Evict the file's clean pages from the page cache (POSIX_FADV_DONTNEED), whoever cached them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # written pages must be clean to be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class MemoryCgroup:
    """A cgroup below this process's own, limited to `limit` bytes (memory + page cache; no swap when the kernel
    counts it). `enter()` in a child (preexec_fn) moves it in; `peak()`, `oom_kills()`; `remove()` when done."""

    def __init__(self, limit: int, name: str):
        self.limit, self.path, self.v1 = limit, None, False
        mine = _own_cgroups()
        candidates = [(True, os.path.join(V1_ROOT, mine["memory"].lstrip("/")))] if "memory" in mine else []
        if os.path.exists(os.path.join(V2_ROOT, "cgroup.controllers")) and "" in mine:
            candidates.append((False, os.path.join(V2_ROOT, mine[""].lstrip("/"))))
        errors = []
        for v1, parent in candidates:
            path = os.path.join(parent, name)
            try:
                os.makedirs(path, exist_ok=True)
                self.path, self.v1 = path, v1
                if v1:
                    self._write("memory.limit_in_bytes", limit)
                    self._write("memory.swappiness", 0, required=False)
                else:
                    self._write("memory.max", limit)
                    self._write("memory.swap.max", 0, required=False)
                return
            except OSError as e:
                errors.append(f"{path}: {e.strerror}")
                self.remove()
        raise InputError("--memory-limit: no memory cgroup can be made here (" + ("; ".join(errors) or "no memory "
                         "controller mounted") + "); run as root, or in a delegated cgroup (docs/performance.md)")

    def _write(self, name: str, value: int, required: bool = True) -> None:
        try:
            with open(os.path.join(self.path, name), "w") as f:
                f.write(str(value))
        except OSError:
            if required:
                raise

    def _read(self, name: str) -> Optional[str]:
        try:
            with open(os.path.join(self.path, name)) as f:
                return f.read()
        except OSError:
            return None

    def enter(self) -> None:
        """Move the calling process into the cgroup (a child's preexec_fn: before it runs anything)."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    def peak(self) -> Optional[int]:
        """The most memory (with page cache) charged to the cgroup since it was made, in bytes."""
        text = self._read("memory.max_usage_in_bytes" if self.v1 else "memory.peak")
        return int(text) if text and text.strip().isdigit() else None

    def oom_kills(self) -> int:
        text = self._read("memory.oom_control" if self.v1 else "memory.events") or ""
        match = re.search(r"oom_kill (\d+)", text)
        return int(match.group(1)) if match else 0

    def remove(self) -> None:
        if self.path and os.path.isdir(self.path):
            try:
                os.rmdir(self.path)  # a cgroup without processes; its files go with it
            except OSError:
                pass


def _own_cgroups() -> dict:
    """{controller list (v1, e.g. 'memory') or '' (v2): this process's cgroup path}."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                out[controller] = path
    return out
