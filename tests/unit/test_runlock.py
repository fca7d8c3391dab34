"""One live trainer per run directory (runlock), and a worker noticing that its launcher died (signals)."""
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from resnext_dist.dist import DistInfo
from resnext_dist.errors import InputError
from resnext_dist.run.lock import RunDirInUse, RunLock, hold_run_dir, read_lease
from tests.tiny import REPO, env

HOLD = textwrap.dedent("""
    import sys, time
    from resnext_dist.run.lock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(600)
""")


def holder(run_dir, **extra_env):
    """Another process that takes the run directory and keeps it until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, env=env(**extra_env),
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_trainer_is_refused_naming_the_holder_and_a_dead_holder_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    p = holder(run_dir, SLURM_JOB_ID="4242")
    try:
        lease = read_lease(str(run_dir))
        assert (lease["pid"], lease["host"], lease["slurm_job_id"]) == (p.pid, socket.gethostname(), "4242")
        t0 = time.monotonic()
        with pytest.raises(RunDirInUse) as info:
            RunLock(str(run_dir)).acquire()
        assert time.monotonic() - t0 < 1  # at once, no waiting for the lock
        message = str(info.value)
        assert message.startswith(f"run directory {run_dir} is in use by pid {p.pid} on host "
                                  f"{socket.gethostname()} (Slurm job 4242) since ")
        assert "\n" not in message
    finally:
        p.kill()  # SIGKILL: no clean-up runs, the lease stays in the file
        p.wait()
    assert read_lease(str(run_dir))["pid"] == p.pid
    with RunLock(str(run_dir)) as lock:  # the kernel dropped the dead holder's flock
        assert lock.held and read_lease(str(run_dir))["pid"] == os.getpid()
    assert read_lease(str(run_dir)) == {}  # released: lease cleared, file kept


def test_lock_is_per_open_file_so_a_second_lock_in_one_process_is_refused_too(tmp_path):
    first = RunLock(str(tmp_path)).acquire()
    with pytest.raises(RunDirInUse, match=f"pid {os.getpid()}"):
        RunLock(str(tmp_path)).acquire()
    first.release()
    RunLock(str(tmp_path)).acquire().release()


def test_hold_run_dir_in_one_process(tmp_path):
    lock = hold_run_dir(str(tmp_path / "new"), DistInfo())  # creates the directory
    assert lock.held and os.path.exists(tmp_path / "new" / ".lock")
    with pytest.raises(RunDirInUse):
        hold_run_dir(str(tmp_path / "new"), DistInfo())
    lock.release()


def test_without_a_lock_service_the_lease_decides(tmp_path, monkeypatch):
    # An NFS mount without a lock manager answers flock with ENOLCK; that cannot be mounted here.
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    p = holder(tmp_path)
    try:
        monkeypatch.setattr(fcntl, "flock", no_locks)
        with pytest.raises(RunDirInUse, match=f"pid {p.pid}"):  # a live holder on this host blocks
            RunLock(str(tmp_path)).acquire()
    finally:
        p.kill()
        p.wait()
    RunLock(str(tmp_path)).acquire().release()  # a dead one does not
    (tmp_path / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    RunLock(str(tmp_path)).acquire().release()  # another host's cannot be checked: taken over


# ----------------------------------------------------------------------------------------------
# launcher_alive

WORKER = textwrap.dedent("""
    import sys, time
    from resnext_dist.run.signals import launcher_alive
    print("started", launcher_alive(), flush=True)
    deadline = time.time() + 60
    while launcher_alive() and time.time() < deadline:
        time.sleep(0.05)
    print("launcher gone" if not launcher_alive() else "timeout", flush=True)
""")

# A stand-in for torchrun's agent: starts the worker in its own session (as torchrun does), then waits.
LAUNCHER = textwrap.dedent("""
    import os, subprocess, sys, time
    w = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=open(sys.argv[2], "w"), start_new_session=True)
    print(w.pid, flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("torchrun", [True, False])
def test_worker_learns_that_its_launcher_died(tmp_path, torchrun):
    out = tmp_path / "worker.txt"
    extra = {"TORCHELASTIC_RUN_ID": "test"} if torchrun else {}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, WORKER, str(out)], cwd=REPO, env=env(**extra),
                                stdout=subprocess.PIPE, text=True)
    worker_pid = int(launcher.stdout.readline())
    try:
        deadline = time.time() + 30
        while "started" not in (out.read_text() if out.exists() else "") and time.time() < deadline:
            time.sleep(0.05)
        assert out.read_text().startswith("started True")
        launcher.kill()  # SIGKILL: the worker gets no signal, only a new parent
        launcher.wait()
        deadline = time.time() + (10 if torchrun else 2)  # a plain process may outlive its shell (nohup)
        while "gone" not in out.read_text() and time.time() < deadline:
            time.sleep(0.05)
        assert ("launcher gone" in out.read_text()) == torchrun
    finally:
        try:
            os.kill(worker_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_run_directory_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match=rf"^run directory {tmp_path}/file/run: cannot take its lock \(Not a"):
        hold_run_dir(str(tmp_path / "file" / "run"), DistInfo())
