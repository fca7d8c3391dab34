"""Stop requests from the outside world (Slurm's pre-timeout signal, preemption, scancel, Ctrl-C).

The handler only records the signal: no I/O happens inside a signal handler. The training loop
checks `requested` at each step boundary, all ranks agree through one all-reduce, every rank saves,
and the run ends with exit status 128 + signal number (140 for SIGUSR2, 143 for SIGTERM), which the
Slurm launchers read as "checkpointed, requeue me" (USR2) or "cancelled" (TERM).

A launcher that dies sends no signal: torchrun's workers run in their own sessions, so when its agent is
killed they train on as orphans beside whatever is started next. `launcher_alive()` tells a worker that its
launcher is gone (it was re-parented), so the trainer stops at the next step boundary with a checkpoint.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Dict, Optional

# USR2 is Slurm's/submitit's "you are about to be timed out or preempted" (NCCL may use USR1).
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    """Raised by the trainer after it saved a checkpoint in answer to a signal."""

    def __init__(self, signum: int, step: Optional[int] = None):
        name = signal.Signals(signum).name
        if step is None:  # during start-up: nothing trained yet
            text = f"stopped by {name} before training started; nothing to save"
        else:
            text = f"stopped by {name} after saving a checkpoint at step {step}"
            if signum == signal.SIGUSR2:
                text += "; the job is to be requeued and resumes there"
        super().__init__(text)
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        """128 + the signal (140 = SIGUSR2, "checkpointed, requeue me"); RESNEXT_DIST_STOP_EXIT_CODE overrides it
        for launchers that read any non-zero worker exit as a failure (slurm/torchrun.sbatch sets 0 and
        requeues on the signal it passed on)."""
        override = os.environ.get("RESNEXT_DIST_STOP_EXIT_CODE", "")
        return int(override) if override.isdigit() else 128 + self.signum


class StopFlag:
    """Install with `install()`; `requested` is the first signal number seen (0 = none), `count` how many came (a
    wait that must not outlast the user's patience, such as a hung tracker's close, ends at the next one)."""

    def __init__(self):
        self.requested, self.count = 0, 0
        self._previous: Dict[int, object] = {}

    def install(self) -> "StopFlag":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.count += 1
        # The first signal wins, except that USR2 ("checkpoint and requeue") beats TERM: submitit's interrupt
        # and some schedulers send TERM and USR2 together, and the job must come back.
        if not self.requested or signum == signal.SIGUSR2:
            self.requested = signum

    def restore(self) -> None:
        """Put back the handlers that were there before (e.g. submitit's requeue handler)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def previous_handler(self, signum: int) -> Optional[object]:
        return self._previous.get(signum)


# The process that launched us, as it was when this module was first imported (at the trainer's start).
# Only torchrun's agent is watched: it sets TORCHELASTIC_RUN_ID in its workers' environment. A trainer started
# from a shell may outlive the shell on purpose (nohup, disown), and srun's tasks die with their step anyway.
_LAUNCHER_PID = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else 0


def launcher_alive() -> bool:
    """False once the torchrun agent that started this worker has died (the worker was re-parented to init
    or a subreaper); True otherwise, and always when not started by torchrun. Costs one getppid() system
    call: cheap enough for every log interval."""
    return _LAUNCHER_PID <= 1 or os.getppid() == _LAUNCHER_PID
