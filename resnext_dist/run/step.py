"""One optimizer step, the ranks' agreement, what the steps add up to between two log lines, and exact
evaluation. The epoch loop that calls them is trainer.py.

The step, top to bottom: fetch a micro-batch (timed: that is the data wait) -> forward under autocast ->
on the last micro-step, when asked, agree with every rank on (a non-finite loss anywhere, a stop request, a
log line now) in one tiny all-reduce before the backward -> backward (DDP all-reduces gradients on the last
micro-step only) -> clip -> optimizer step -> schedule -> EMA. Each micro-batch's loss is weighed by its images
(micro-batches differ by one image where the global batch does not divide evenly: data/batches.py), so the update
is that of one process taking the whole global batch, on any world size. Between two log lines the losses stay on
the device (`Interval`); evaluation all-reduces counts, not averages.
"""
from __future__ import annotations

import contextlib
import resource
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from resnext_dist import dist as rdist
from resnext_dist.optim.losses import cross_entropy
from resnext_dist.run import faults


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class StepContext:
    """What a step needs besides the TrainState and the batches; built once by the trainer."""

    model: torch.nn.Module  # DDP-wrapped and/or compiled: what runs forward (state.model is the bare module)
    dist: rdist.DistInfo
    autocast: Callable[[], contextlib.AbstractContextManager]
    accum_steps: int  # micro-steps per optimizer step, the same on every rank
    global_batch: int  # images per optimizer step over all ranks
    label_smoothing: float
    grad_clip_norm: float
    loss: Callable = cross_entropy  # (logits, labels or class probabilities, label smoothing) -> mean loss


@dataclass
class Agreed:
    """What every rank agreed on at a step (the max over ranks of each rank's wish)."""

    stop_signal: int = 0  # a signal number some rank received (0 = none)
    log_now: bool = False  # rank 0 asks for a line now (train.log_every_s passed)


def train_step(state, batches: Iterator, ctx: StepContext, wishes: Optional[Tuple[int, bool]]) \
        -> Tuple[torch.Tensor, int, float, Optional[Agreed]]:
    """One optimizer step. Returns (the summed loss of this rank's images, on the device: not read here; how many
    images that is; seconds spent waiting for data; what the ranks agreed on, or None when `wishes` was None: no
    agreement this step).

    `wishes` = (this rank's stop signal, this rank wants a log line now): when given, the ranks agree on them and
    on a finite loss before the backward, so a NaN anywhere stops every rank before the optimizer step."""
    model, dist = ctx.model, ctx.dist
    loss_sum = torch.zeros((), device=dist.device)
    nonfinite = torch.zeros(1, dtype=torch.int32, device=dist.device)
    wait_s, agreed, images_seen = 0.0, None, 0
    for micro in range(ctx.accum_steps):
        t0 = time.perf_counter()
        images, labels = next(batches)
        wait_s += time.perf_counter() - t0
        last = micro == ctx.accum_steps - 1
        # Gradients are all-reduced only on the last micro-step (no_sync skips DDP's hooks).
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with ctx.autocast():
                logits = model(images)
                loss = ctx.loss(logits.float(), labels, ctx.label_smoothing)  # optim.loss (optim/losses.py)
            loss = faults.maybe_poison_loss(loss, dist.rank, state.step + 1)
            nonfinite |= (~torch.isfinite(loss.detach())).int()
            if last and wishes is not None:
                agreed = _agree(nonfinite, *wishes, device=dist.device)
                if agreed is None:
                    raise NonFiniteLoss(f"non-finite loss at step {state.step + 1} (epoch {state.epoch}) on at "
                                        f"least one rank; every rank stopped before the optimizer step")
            # The mean over this micro-batch's n images, weighed n / (global batch / world size): DDP averages the
            # ranks' gradients, so the update is the mean over the global batch's images (n is a shape: no sync).
            # An even split gives global / (world size x n) = accum_steps exactly: the plain loss / accum_steps.
            n = labels.shape[0]
            scaled = loss / (ctx.global_batch / (dist.world_size * n))
            (state.scaler.scale(scaled) if state.scaler else scaled).backward()
        loss_sum += loss.detach() * n
        images_seen += n

    if ctx.grad_clip_norm > 0:
        if state.scaler:
            state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), ctx.grad_clip_norm)
    if state.scaler:  # fp16: steps with inf/nan gradients are skipped by the scaler, not errors
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    state.step += 1
    faults.maybe_fail(dist.rank, state.step)
    return loss_sum, images_seen, wait_s, agreed


def _agree(nonfinite: torch.Tensor, stop_signal: int, log_now: bool, device) -> Optional[Agreed]:
    """The ranks' one meeting per step: max over ranks of (loss non-finite, stop signal, log now); None when any
    loss was non-finite. Sync point: the host waits for the forward and this tiny all-reduce, then queues the
    backward, the optimizer step and the next batch while the device runs the backward. (torch.full is a
    device fill, not a blocking host-to-device copy.)"""
    flags = torch.cat([nonfinite, torch.full((1,), stop_signal, dtype=torch.int32, device=device),
                       torch.full((1,), int(log_now), dtype=torch.int32, device=device)])
    bad, stop, log = rdist.all_reduce(flags, "max").tolist()
    return None if bad else Agreed(int(stop), bool(log))


class Interval:
    """What accumulates between two log lines: the loss on the device (no sync), steps and images, data wait,
    time."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.steps, self.images, self.wait_s, self.t0 = 0, 0, 0.0, time.perf_counter()
        self.device = device

    def overdue(self, every_s: float) -> bool:
        return bool(every_s) and time.perf_counter() - self.t0 >= every_s

    def add(self, loss_sum: torch.Tensor, images: int, wait_s: float) -> None:
        """One step's summed loss over this rank's `images`, and its data wait."""
        self.loss_sum += loss_sum
        self.steps += 1
        self.images += images
        self.wait_s += wait_s

    def record(self, state, res: int, global_batch: int, world_size: int) -> dict:
        """The interval's step record (a sync point: the loss is read from the device here); a new one starts.
        `world_size` is a number in the record so MLflow charts it: a change shows at the step it happened."""
        elapsed = time.perf_counter() - self.t0
        rec = {"kind": "step", "step": state.step, "epoch": state.epoch,
               "loss": mean_over_ranks(self.loss_sum, self.images),
               "lr": state.optimizer.param_groups[0]["lr"], "res": res,
               "img_per_s": self.steps * global_batch / elapsed, "data_wait": self.wait_s / elapsed,
               "peak_mem_mb": peak_memory_mb(self.device), "world_size": world_size}
        self.loss_sum.zero_()
        self.steps, self.images, self.wait_s, self.t0 = 0, 0, 0.0, time.perf_counter()
        return rec


def mean_over_ranks(loss_sum: torch.Tensor, count: int) -> float:
    """The mean loss of the interval over every rank's images (a sync point: the log interval only)."""
    totals = torch.stack([loss_sum.double(), torch.tensor(float(count), dtype=torch.float64,
                                                          device=loss_sum.device)])
    rdist.all_reduce(totals, "sum")
    return float(totals[0] / max(1.0, float(totals[1])))


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, dist: rdist.DistInfo, autocast, tta_flip: bool) -> Dict[str, float]:
    """Top-1/top-5/loss over the whole validation set, each image counted exactly once over all ranks."""
    was_training = model.training
    model.eval()
    # [loss sum, top-1 hits, top-5 hits, images] as float64 so large sets count exactly
    totals = torch.zeros(4, dtype=torch.float64, device=dist.device)
    for images, labels in loader:
        with autocast():
            logits = model(images)
            if tta_flip:
                logits = logits + model(torch.flip(images, dims=[3]))
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels[:, None]
        totals += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                               hits[:, :1].sum().double(), hits.sum().double(),
                               torch.tensor(float(labels.numel()), dtype=torch.float64, device=dist.device)])
    rdist.all_reduce(totals, "sum")
    loss, top1, top5, n = totals.tolist()
    model.train(was_training)
    n = max(n, 1.0)
    return {"val_loss": loss / n, "val_top1": top1 / n, "val_top5": top5 / n, "val_images": int(n)}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
