"""`python .../tracking/server_guard.py PARENT_PID CMD...`: CMD, ended with everything it started when
the process PARENT_PID dies, however it dies (a SIGKILL included), or when this guard gets SIGTERM or SIGINT.

Why: `tracking ui` starts `mlflow server` in a process group of its own and ends that group when it stops; but a
SIGKILLed `ui` ends nothing, and mlflow's command runs uvicorn as a child it does not pass signals on to. The guard
is the group's leader: Linux sends it SIGTERM when its parent dies (PR_SET_PDEATHSIG), and it ends its group.
Standard library only, run as a file (tracking/ui.py's spawn): it starts before the server and stays small.
"""
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
GRACE_S = 10.0


def end_group(child: subprocess.Popen) -> None:
    """SIGTERM to this process group, SIGKILL to what lingers after GRACE_S (this guard last, by it)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(0, signal.SIGKILL)


def main(argv) -> int:
    parent, cmd = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    child = subprocess.Popen(cmd)
    signal.signal(signal.SIGTERM, lambda *_: end_group(child))
    signal.signal(signal.SIGINT, lambda *_: end_group(child))
    if os.getppid() != parent:  # the parent died before the death signal was asked for
        end_group(child)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
