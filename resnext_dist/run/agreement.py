"""The ranks' agreement, read one step late: the host never waits on the step it has just queued.

Each step that meets (train.nan_check, or a log step) all-reduces four integers on the device (max over ranks):
a non-finite loss, a non-finite gradient, a stop signal, rank 0's wish for a log line. The step itself acts on
them on the device only (an optimizer step is skipped where they say non-finite: step.py). `LateAgreement` copies
them to a host buffer without waiting (pinned memory and an event on CUDA) and hands them to the host at the next
step, once that step is queued: the event then has long fired, so the read costs no wait on the GPU's queue. At a
step that is a sync point anyway (a log line, a checkpoint, the epoch's or the run's end) the trainer settles: it
reads this step's flags at once, so nothing is saved or logged from a step the ranks have not agreed on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

LOSS, GRAD, STOP, LOG = range(4)  # the flags' order on the device


@dataclass
class Agreed:
    """What every rank agreed on at `step` (the max over ranks of each rank's wish)."""

    step: int = 0
    bad_loss: bool = False  # a loss was non-finite on some rank: that step's update was not applied
    bad_grad: bool = False  # a gradient was non-finite (the loss finite): that step's update was not applied
    stop_signal: int = 0  # a signal number some rank received (0 = none)
    log_now: bool = False  # rank 0 asks for a line now (train.log_every_s passed)

    @property
    def nonfinite(self) -> bool:
        return self.bad_loss or self.bad_grad

    def merge(self, later: Optional["Agreed"]) -> "Agreed":
        """Two steps' agreements as one answer: the first non-finite step is the one named."""
        if later is None:
            return self
        first = self if self.nonfinite or not later.nonfinite else later
        return Agreed(first.step, first.bad_loss, first.bad_grad, max(self.stop_signal, later.stop_signal),
                      self.log_now or later.log_now)


class LateAgreement:
    """One step's agreed flags in flight from the device to the host (at most one)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        # Pinned, so the copy is asynchronous; one buffer suffices: a step's flags are read before the next are
        # posted (exchange reads first).
        self.host = torch.zeros(4, dtype=torch.int32, pin_memory=self.cuda)
        self.event = torch.cuda.Event() if self.cuda else None
        self.pending: Optional[int] = None  # the step whose flags are in flight

    def post(self, flags: torch.Tensor, step: int) -> None:
        """Start the copy of `step`'s agreed flags (4 int32 on the device) to the host; no wait."""
        self.host.copy_(flags, non_blocking=self.cuda)
        if self.event is not None:
            self.event.record()
        self.pending = step

    def read(self) -> Optional[Agreed]:
        """The flags in flight, once they are on the host (None when none): waits for their copy only."""
        if self.pending is None:
            return None
        if self.event is not None:
            self.event.synchronize()  # the step that posted them, not the ones queued since
        bad_loss, bad_grad, stop, log = self.host.tolist()  # a host buffer: no device read
        step, self.pending = self.pending, None
        return Agreed(step, bool(bad_loss), bool(bad_grad), int(stop), bool(log))

    def exchange(self, flags: Optional[torch.Tensor], step: int) -> Optional[Agreed]:
        """The previous step's agreement (one step late), then this step's flags (if it met) put in flight."""
        earlier = self.read()
        if flags is not None:
            self.post(flags, step)
        return earlier
