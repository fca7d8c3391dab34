"""The per-iteration learning-rate schedule, built from the `optim` config section.

Schedules step once per optimizer step: linear warm-up, then cosine to 0, a step decay at epoch
milestones, or linear to 0, composed from torch.optim.lr_scheduler.
"""
from __future__ import annotations

from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, MultiStepLR, SequentialLR


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
