"""run/faults.py, the fault hook of the fault-tolerance tests: what the test-time changes of issue 31d rely on."""
import os
import signal
import time

from resnext_dist.run import faults


def test_slow_with_an_attempt_paces_only_that_torchrun_attempt(monkeypatch):
    """`slow@0:1:0`: rank 0 sleeps after each step from step 1 on the first attempt (TORCHELASTIC_RESTART_COUNT=0)
    only; `slow@0:1` on every attempt."""
    def pause(spec, attempt, rank=0, step=3):
        monkeypatch.setattr(faults, "_FAULTS", faults._parse(spec))
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(attempt))
        t = time.monotonic()
        faults.maybe_fail(rank, step)
        return time.monotonic() - t

    assert pause("slow@0:1:0", 0) >= 0.3 and pause("slow@0:1", 1) >= 0.3
    assert pause("slow@0:1:0", 1) < 0.2 and pause("slow@0:1:0", 0, rank=1) < 0.2


def test_a_hung_rank_ends_on_sigterm_though_the_trainer_only_flags_it():
    """`hang@1:3` hangs rank 1 at step 3 for good, yet torchrun's SIGTERM ends it (no 30 s wait for SIGKILL). A fork
    of this process (torch already imported: no second start-up) plays the rank."""
    pid = os.fork()
    if pid == 0:  # the rank; it never returns into pytest
        try:
            signal.signal(signal.SIGTERM, lambda *_: None)  # as the trainer: SIGTERM only sets a flag
            faults._FAULTS = faults._parse("hang@1:3")
            faults.maybe_fail(1, 3)
        finally:
            os._exit(3)
    try:
        time.sleep(0.5)  # into the hang
        assert os.waitpid(pid, os.WNOHANG) == (0, 0), "it hangs"
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done[0] == pid and os.WIFSIGNALED(done[1]) and os.WTERMSIG(done[1]) == signal.SIGTERM, done
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
