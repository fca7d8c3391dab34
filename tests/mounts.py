"""Real full disks and leftover processes for the hardening tests: a small tmpfs mounted for one test (root
only; the test is skipped elsewhere), and the processes still alive in a session."""
import contextlib
import os
import subprocess
import time

import pytest


@contextlib.contextmanager
def small_tmpfs(path, size: str):
    """A tmpfs of `size` (e.g. "64k") mounted at `path` for the duration; unmounted (lazily if busy) after."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield str(path)
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def session_pids(sid: int):
    """Live (not zombie) processes whose session id is `sid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, session
            pids.append(int(entry))
    return pids


def wait_session_empty(sid: int, timeout: float = 10.0):
    """The session's processes after waiting up to `timeout` s for them to go (multiprocessing's resource
    tracker leaves a moment after its parent)."""
    deadline = time.monotonic() + timeout
    while session_pids(sid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return session_pids(sid)
