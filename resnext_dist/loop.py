"""One epoch of training, and exact evaluation.

The step, top to bottom: fetch a batch (timed: that is the data wait) -> forward under autocast ->
agree on a finite loss and on stop requests (one tiny all-reduce; the step's only host sync) ->
backward (gradient all-reduce only on the last micro-step) -> optimizer step -> schedule -> EMA -> log at the
interval -> checkpoint at the interval. Evaluation counts every validation image exactly once over
all ranks (each rank holds a disjoint share) and all-reduces counts, not averages.
"""
from __future__ import annotations

import contextlib
import resource
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from resnext_dist import dist as rdist
from resnext_dist import faults


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class StepContext:
    """What the epoch loop needs besides the TrainState; built once by train.py."""

    model: torch.nn.Module  # DDP-wrapped and/or compiled: what runs forward
    dist: rdist.DistInfo
    autocast: Callable[[], contextlib.AbstractContextManager]
    accum_steps: int
    global_batch_size: int
    label_smoothing: float
    grad_clip_norm: float
    log_every: int
    nan_check: bool
    stop_flag: object  # signals.StopFlag
    on_log: Callable[[Dict], None]  # rank 0 writes log.jsonl / MLflow
    maybe_checkpoint: Callable[[], None]  # saves when the step count says so
    max_steps: int = 0


def train_epoch(state, loader, ctx: StepContext, res: int, steps_in_epoch: int, progress=None) -> Optional[int]:
    """Train one epoch from `state.samples_in_epoch` on. Returns a signal number if a stop was agreed."""
    model, dist = ctx.model, ctx.dist
    model.train()
    micro_batch = ctx.global_batch_size // ctx.accum_steps // dist.world_size
    first_step = state.samples_in_epoch // ctx.global_batch_size
    skip = first_step * ctx.accum_steps
    batches = loader.epoch(state.epoch, res=res, skip=skip)

    loss_sum = torch.zeros((), device=dist.device)  # summed on device; read only at the log interval
    loss_count, wait_s, t_log = 0, 0.0, time.perf_counter()
    for step_in_epoch in range(first_step, steps_in_epoch):
        # ---- forward / backward over the micro-steps of one optimizer step
        nonfinite = torch.zeros(1, dtype=torch.int32, device=dist.device)
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
                    loss = F.cross_entropy(logits.float(), labels, label_smoothing=ctx.label_smoothing)
                loss = faults.maybe_poison_loss(loss, dist.rank, state.step + 1)
                nonfinite |= (~torch.isfinite(loss.detach())).int()
                stop_signal = 0
                if last and ctx.nan_check:
                    # Agree on (any loss non-finite, any rank signalled) before the backward. Sync point: the
                    # host waits for the forward and this tiny all-reduce, then queues the backward, the
                    # optimizer step and the next batch while the device runs the backward. (torch.full is a
                    # device fill, not a blocking host-to-device copy.)
                    flags = torch.cat([nonfinite, torch.full((1,), ctx.stop_flag.requested, dtype=torch.int32,
                                                              device=dist.device)])
                    bad, stop_signal = rdist.all_reduce(flags, "max").tolist()
                    if bad:
                        raise NonFiniteLoss(f"non-finite loss at step {state.step + 1} (epoch {state.epoch}) on at "
                                            f"least one rank; every rank stopped before the optimizer step")
                scaled = loss / ctx.accum_steps
                (state.scaler.scale(scaled) if state.scaler else scaled).backward()
            loss_sum += loss.detach()
            loss_count += 1

        # ---- step
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
        state.samples_in_epoch = (step_in_epoch + 1) * ctx.global_batch_size
        faults.maybe_fail(dist.rank, state.step)
        if progress is not None:
            progress.update(1)

        # ---- log (host sync: loss.item) at the interval
        if state.step % ctx.log_every == 0 or step_in_epoch == steps_in_epoch - 1:
            if not ctx.nan_check:  # signals still have to be agreed on somewhere: here
                stop_signal = int(rdist.all_reduce(torch.tensor([ctx.stop_flag.requested], device=dist.device),
                                                   "max").item())
            elapsed = time.perf_counter() - t_log
            images_done = loss_count * micro_batch * dist.world_size
            ctx.on_log({"kind": "step", "step": state.step, "epoch": state.epoch,
                        "loss": (loss_sum / max(1, loss_count)).item(),
                        "lr": state.optimizer.param_groups[0]["lr"], "res": res,
                        "img_per_s": images_done / elapsed, "data_wait": wait_s / elapsed,
                        "peak_mem_mb": peak_memory_mb(dist.device)})
            loss_sum.zero_()
            loss_count, wait_s, t_log = 0, 0.0, time.perf_counter()

        ctx.maybe_checkpoint()
        if stop_signal:
            return int(stop_signal)
        if ctx.max_steps and state.step >= ctx.max_steps:
            break
    return None


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
