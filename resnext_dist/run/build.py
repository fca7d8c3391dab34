"""Everything a run is made of, built in one place from the config: data, model, optimizer, schedule, the
TrainState (what a checkpoint holds) and the runner (the model as it runs forward: DDP-wrapped, compiled).

    cfg = with_global_batch(cfg, dist, checkpoint)   # the run's global batch made explicit (a resume keeps its own)
    parts = build(cfg, dist)      # raises InputError for bad data or a config that does not fit the data
    parts.state, parts.runner, parts.train_loader, parts.val_loader, parts.steps_per_epoch, parts.split, ...
"""
from __future__ import annotations

import dataclasses
import os
import random
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from resnext_dist.optim.ema import Ema
from resnext_dist.run.checkpoint import CheckpointError, TrainState
from resnext_dist.config import TrainConfig, batch_split
from resnext_dist.data.batches import BatchSplit
from resnext_dist.data import build_loaders
from resnext_dist.data.augment import build_augment
from resnext_dist.errors import InputError
from resnext_dist.models import build_model
from resnext_dist.optim import build_optimizer, build_scheduler
from resnext_dist.compiling import compile_module
from resnext_dist.precision import PRECISIONS


@dataclass
class Parts:
    state: TrainState
    train_loader: Any
    val_loader: Optional[Any]
    split: BatchSplit  # how each step's global batch is shared among the ranks (micro-batches, accumulation)
    steps_per_epoch: int
    augment: Optional[Any] = None  # the training batches' augmentation on the device (data/augment.py), or None

    @property
    def accum_steps(self) -> int:
        return self.split.accum_steps

    @property
    def global_batch(self) -> int:
        return self.split.global_batch


def with_global_batch(cfg: TrainConfig, dist, checkpoint: Dict[str, Any], path: Optional[str] = None) -> TrainConfig:
    """`cfg` with the run's global batch in optim.global_batch_size: the one set there, else the checkpoint's (a
    resume keeps its global batch, and with it its schedule, on any number of processes), else data.batch_size x
    world size (a new run). CheckpointError when the config and the checkpoint `path` disagree; InputError when
    this many processes cannot share it (batches.py)."""
    given, recorded = cfg.optim.global_batch_size, checkpoint.get("global_batch_size")
    if given and recorded and given != recorded:
        raise CheckpointError(
            f"{path}: trained with global batch {recorded} (the run's identity, kept on any number of processes), "
            f"not optim.global_batch_size={given}; leave optim.global_batch_size at 0 or {recorded} to continue it")
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(
        cfg.optim, global_batch_size=given or recorded or cfg.data.batch_size * dist.world_size))
    batch_split(cfg, dist.world_size)
    return cfg


def build(cfg: TrainConfig, dist) -> Parts:
    """The parts of a run of `cfg` (optim.global_batch_size 0: data.batch_size x world size) on this rank."""
    seed_everything(cfg.train)
    split = batch_split(cfg, dist.world_size)
    train_loader, val_loader = build_loaders(cfg.data, dist, seed=cfg.train.seed, num_classes=cfg.model.num_classes,
                                             channels_last=cfg.train.channels_last,
                                             global_batch=split.global_batch)
    global_batch, steps_per_epoch = split.global_batch, train_loader.steps_per_epoch
    if steps_per_epoch < 1:
        raise InputError(f"data.train has too few images for one global batch of {global_batch}")

    model = build_model(cfg.model)
    if cfg.model.sync_bn and dist.is_distributed and dist.device.type != "cuda":
        raise InputError("model.sync_bn=true needs GPUs: torch's SyncBatchNorm runs on CUDA only")
    if cfg.model.sync_bn and dist.is_distributed:
        # BatchNorm statistics over the global batch (one all-reduce per BN layer and step); without it, each
        # rank normalizes over its own batch and DDP copies rank 0's running statistics to the others.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(dist.device)
    if cfg.train.channels_last:  # before DDP wraps it: DDP's buckets follow the parameters' layout
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim, global_batch)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch, cfg.train.epochs)
    scaler = PRECISIONS[cfg.train.precision].grad_scaler(dist.device)
    ema = None
    if cfg.train.ema_decay:
        ema = Ema(model, cfg.train.ema_decay)  # AveragedModel without its per-step host read (optim/ema.py)
    state = TrainState(model, optimizer, scheduler, scaler, ema,
                       extra={"global_batch_size": global_batch, "world_size": dist.world_size})
    augment = build_augment(cfg.data, seed=cfg.train.seed, num_classes=cfg.model.num_classes, device=dist.device)
    return Parts(state, train_loader, val_loader, split, steps_per_epoch, augment)


def runner(model: torch.nn.Module, cfg: TrainConfig, dist) -> torch.nn.Module:
    """The model as it runs forward: DDP across ranks, then torch.compile when asked."""
    out = model
    if dist.is_distributed:
        out = DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                  bucket_cap_mb=cfg.dist.bucket_cap_mb, gradient_as_bucket_view=cfg.dist.gradient_as_bucket_view)
    if cfg.train.compile:
        out = compile_module(out, cfg.train.compile_mode)
    return out


def rebuild_schedule(state: TrainState, cfg: TrainConfig, steps_per_epoch: int) -> None:
    """A run extended to more epochs: the schedule for the new length, at the step the run has reached. The
    chained schedulers compute each lr from the previous one, so the new curve is walked from its start."""
    for group in state.optimizer.param_groups:
        group["lr"] = group["initial_lr"]
    state.scheduler = build_scheduler(state.optimizer, cfg.optim, steps_per_epoch, cfg.train.epochs)
    with warnings.catch_warnings():  # a walk to the step reached, no training: torch's "step() before
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")  # optimizer"
        for _ in range(state.step):
            state.scheduler.step()


def seed_everything(train_cfg) -> None:
    """Same initial weights on every rank (DDP also broadcasts them) and reproducible draws."""
    random.seed(train_cfg.seed)
    np.random.seed(train_cfg.seed)
    torch.manual_seed(train_cfg.seed)
    if train_cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = train_cfg.cudnn_benchmark
