"""One optimizer step, the ranks' agreement, what the steps add up to between two log lines, and exact
evaluation. The epoch loop that calls them is trainer.py.

The step, top to bottom, with no host read (no sync): fetch a micro-batch (timed: that is the data wait) ->
forward under autocast -> backward (DDP all-reduces gradients on the last micro-step only) -> clip -> when asked,
agree with every rank on (a non-finite loss, a non-finite gradient, a stop request, a log line now) in one tiny
all-reduce on the device -> optimizer step, skipped exactly on the device where the agreement says non-finite ->
schedule -> EMA. The host reads the agreement one step later (agreement.py). Each micro-batch's loss is
weighed by its images (micro-batches differ by one image where the global batch does not divide evenly:
data/batches.py), so the update is that of one process taking the whole global batch, on any world size.
Between two log lines the losses stay on the device (`Interval`); evaluation all-reduces counts, not averages.
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
from resnext_dist.run.agreement import GRAD, LOSS, Agreed


class NonFiniteLoss(RuntimeError):
    pass


def non_finite_error(agreed: Agreed, epoch: int) -> NonFiniteLoss:
    what = "loss" if agreed.bad_loss else "gradient"
    return NonFiniteLoss(f"non-finite {what} at step {agreed.step} (epoch {epoch}) on at least one rank; every "
                         f"rank stopped without applying it")


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
    # 1 on the device once an agreed step was non-finite: later steps are skipped until the host hears of it
    tripped: Optional[torch.Tensor] = None


def train_step(state, batches: Iterator, ctx: StepContext, wishes: Optional[Tuple[int, bool]]) \
        -> Tuple[torch.Tensor, int, float, Optional[torch.Tensor]]:
    """One optimizer step, queued without a host read. Returns (the summed loss of this rank's images, on the
    device: not read here; how many images that is; seconds spent waiting for data; the agreed flags on the device
    (agreement.py's order), or None when `wishes` was None: no agreement this step).

    `wishes` = (this rank's stop signal, this rank wants a log line now): when given, the ranks agree on them and
    on a finite loss and gradient after the backward, and the optimizer step is skipped on the device where any
    was non-finite (the host learns of it one step later: agreement.py)."""
    model, dist = ctx.model, ctx.dist
    loss_sum = torch.zeros((), device=dist.device)
    nonfinite = torch.zeros((), dtype=torch.int32, device=dist.device)
    wait_s, images_seen = 0.0, 0
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
            # The mean over this micro-batch's n images, weighed n / (global batch / world size): DDP averages the
            # ranks' gradients, so the update is the mean over the global batch's images (n is a shape: no sync).
            # An even split gives global / (world size x n) = accum_steps exactly: the plain loss / accum_steps.
            n = labels.shape[0]
            scaled = loss / (ctx.global_batch / (dist.world_size * n))
            (state.scaler.scale(scaled) if state.scaler else scaled).backward()
        loss_sum += loss.detach() * n
        images_seen += n

    flags = None
    if state.scaler and ctx.grad_clip_norm > 0:
        state.scaler.unscale_(state.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), ctx.grad_clip_norm) \
        if ctx.grad_clip_norm > 0 else None
    if wishes is not None:
        flags = _agree(nonfinite, _grad_nonfinite(state, norm), *wishes, device=dist.device)
        # Every rank skips alike (the flags are agreed); once tripped, the steps queued before the host hears of
        # it are skipped too, so the weights it stops with are those from before the non-finite step.
        ctx.tripped = torch.maximum(ctx.tripped, flags[LOSS] | flags[GRAD]) if ctx.tripped is not None \
            else flags[LOSS] | flags[GRAD]
    if state.scaler:  # fp16: steps with inf/nan gradients are skipped by the scaler (its own found_inf)
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        _step_unless(state.optimizer, ctx.tripped)
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    state.step += 1
    faults.maybe_fail(dist.rank, state.step)
    return loss_sum, images_seen, wait_s, flags


def _grad_nonfinite(state, norm: Optional[torch.Tensor]) -> torch.Tensor:
    """1 where a gradient is inf/NaN (0-dim int32 on the device; no read). The clip's norm when there is one,
    else one fused norm over the gradients. Under fp16 the scaler's own check decides (an overflow there is a
    skipped step, not an error)."""
    device = next(state.model.parameters()).device
    if state.scaler:
        return torch.zeros((), dtype=torch.int32, device=device)
    if norm is None:
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), dtype=torch.int32, device=device)
        norm = torch.nn.utils.get_total_norm(grads)
    return (~torch.isfinite(norm)).int()


def _step_unless(optimizer, tripped: Optional[torch.Tensor]) -> None:
    """The optimizer step, skipped exactly on the device where `tripped` (no host read): the parameters and the
    optimizer's state (momentum, moments, step counts) stay bit for bit as they were."""
    if tripped is None:
        optimizer.step()
        return
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        _step_or_restore(optimizer, tripped)
        return
    # torch's fused optimizers (optim/optimizers.py builds them) skip their whole update where `found_inf` is set,
    # as under GradScaler, step counts included. A first step has no state yet: fused SGD then makes its momentum
    # buffers with empty_like and leaves them unwritten when it skips, so those are zeroed there, which is the
    # state a first step starts from (momentum x 0 + gradient = the gradient, as a first step takes it).
    fresh = [p for group in optimizer.param_groups for p in group["params"] if not optimizer.state.get(p)]
    optimizer.found_inf, optimizer.grad_scale = tripped.float(), None
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf, optimizer.grad_scale
    bad = tripped.bool()
    for p in fresh:
        for value in optimizer.state.get(p, {}).values():
            if torch.is_tensor(value) and value.device == bad.device:
                value.masked_fill_(bad, 0)


def _step_or_restore(optimizer, tripped: torch.Tensor) -> None:
    """An optimizer without found_inf: a copy of the parameters and state tensors, the step, then the copy back
    where `tripped` (one more copy of the weights and state for the step; the registered optimizers are fused)."""
    def tensors():
        for group in optimizer.param_groups:
            for p in group["params"]:
                yield p
                yield from (v for v in optimizer.state.get(p, {}).values() if torch.is_tensor(v))

    saved = [(t, t.detach().clone()) for t in tensors()]
    optimizer.step()
    known = {id(t) for t, _ in saved}
    bad = tripped.bool()
    for t, old in saved:
        t.detach().copy_(torch.where(bad.to(t.device), old, t.detach()))
    for t in tensors():  # state made by this step (a first step): as if never made
        if id(t) not in known:
            t.detach().masked_fill_(bad.to(t.device), 0)


def _agree(nonfinite: torch.Tensor, grad_nonfinite: torch.Tensor, stop_signal: int, log_now: bool, device) \
        -> torch.Tensor:
    """The ranks' one meeting per step: max over ranks of (loss non-finite, gradient non-finite, stop signal, log
    now), on the device, not read here. (torch.full is a device fill, not a blocking host-to-device copy; with
    NCCL the all-reduce is queued on the stream, so the host goes on.)"""
    flags = torch.stack([nonfinite, grad_nonfinite, torch.full((), stop_signal, dtype=torch.int32, device=device),
                         torch.full((), int(log_now), dtype=torch.int32, device=device)])
    return rdist.all_reduce(flags, "max")


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
