"""Fault injection for the fault-tolerance tests (the FailureInjector pattern of torchft).

Off unless RESNEXT_DIST_FAULT is set; then it is a comma-separated list of `KIND@RANK:STEP`, optionally
`:RESTART` (only on that torchrun restart attempt, TORCHELASTIC_RESTART_COUNT):
  nan@1:3      rank 1's loss becomes NaN at optimizer step 3
  kill@1:5:0   rank 1 SIGKILLs itself after step 5, on the first attempt only
  hang@1:4     rank 1 sleeps forever after step 4 (its peers then time out in the next collective); SIGTERM
               ends it (the default action), so torchrun's stop of the job takes no 30 s SIGKILL grace
  slow@0:2     rank 0 sleeps 0.3 s after every step from step 2 on (a slow step, for the console's timed lines);
  slow@0:1:0   the same on the first attempt only (a test's pacing that need not outlast a restart)
Costs nothing when unset: the spec is parsed once at import.
"""
from __future__ import annotations

import os
import signal
import time
from typing import List, Tuple

import torch


def _parse(spec: str) -> List[Tuple[str, int, int, int]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, where = item.partition("@")
        rank, step, *restart = [int(x) for x in where.split(":")]
        out.append((kind, rank, step, restart[0] if restart else -1))
    return out


_FAULTS = _parse(os.environ.get("RESNEXT_DIST_FAULT", ""))


def _active(kind: str, rank: int, step: int) -> bool:
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    return any(k == kind and r == rank and s == step and (a < 0 or a == attempt) for k, r, s, a in _FAULTS)


def maybe_poison_loss(loss: torch.Tensor, rank: int, step: int) -> torch.Tensor:
    if _FAULTS and _active("nan", rank, step):
        return loss * float("nan")
    return loss


def maybe_fail(rank: int, step: int) -> None:
    if not _FAULTS:
        return
    if _active("kill", rank, step):
        os.kill(os.getpid(), signal.SIGKILL)
    if _active("hang", rank, step):
        # The trainer's SIGTERM handler only sets a flag that a stuck rank never reads: torchrun would wait its 30 s
        # grace before SIGKILL. What is tested is the peers' timeout, not that grace: let SIGTERM end this rank.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        while True:
            time.sleep(3600)
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if any(k == "slow" and r == rank and step >= s and (a < 0 or a == attempt) for k, r, s, a in _FAULTS):
        time.sleep(0.3)
