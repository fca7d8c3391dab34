"""Optimizer and per-iteration learning-rate schedule, built from the `optim` config section.

SGD with (Nesterov) momentum; BN parameters and biases get no weight decay (they are scale/shift
parameters, and decaying them only hurts, as the NVIDIA and FFCV recipes note). The peak learning rate is
`optim.lr x global_batch / 256` when `optim.scale_lr` (Goyal et al. 2017's linear scaling rule).
Schedules step once per optimizer step: linear warm-up, then cosine to 0, a step decay at epoch
milestones, or linear to 0, composed from torch.optim.lr_scheduler.
"""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, MultiStepLR, SequentialLR


def peak_lr(cfg, global_batch_size: int) -> float:
    return cfg.lr * global_batch_size / 256 if cfg.scale_lr else cfg.lr


def build_optimizer(model: torch.nn.Module, cfg, global_batch_size: int) -> torch.optim.SGD:
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                (no_decay if is_norm or name == "bias" else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=peak_lr(cfg, global_batch_size), momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


def build_scheduler(optimizer, cfg, steps_per_epoch: int, epochs: int):
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    rest = total - warmup
    if cfg.schedule == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=rest, eta_min=0.0)
    elif cfg.schedule == "linear":
        main = LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=rest)
    elif cfg.schedule == "step":
        main = MultiStepLR(optimizer, milestones=[max(1, m * steps_per_epoch - warmup) for m in cfg.milestones],
                           gamma=cfg.gamma)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    if warmup <= 0:
        return main
    ramp = LinearLR(optimizer, start_factor=cfg.warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])
