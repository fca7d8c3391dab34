"""The learning-rate schedules, one entry per value of `optim.schedule`, built from the `optim` config section.

Schedules step once per optimizer step: a linear warm-up (any schedule), then the entry's curve: cosine to 0, a
step decay at epoch milestones, or linear to 0, composed from torch.optim.lr_scheduler. Importing it imports no
torch (the config checks read SCHEDULES); building does.
"""
from __future__ import annotations


def _cosine(optimizer, cfg, steps_per_epoch: int, warmup: int, rest: int):
    from torch.optim.lr_scheduler import CosineAnnealingLR  # torch when built: config checks import this
    return CosineAnnealingLR(optimizer, T_max=rest, eta_min=0.0)


def _step(optimizer, cfg, steps_per_epoch: int, warmup: int, rest: int):
    from torch.optim.lr_scheduler import MultiStepLR  # torch when built: config checks import this
    # milestones count from the end of the warm-up, which the SequentialLR below runs first
    return MultiStepLR(optimizer, milestones=[max(1, m * steps_per_epoch - warmup) for m in cfg.milestones],
                       gamma=cfg.gamma)


def _linear(optimizer, cfg, steps_per_epoch: int, warmup: int, rest: int):
    from torch.optim.lr_scheduler import LinearLR  # torch when built: config checks import this
    return LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=rest)


SCHEDULES = {"cosine": _cosine, "step": _step, "linear": _linear}


def build_scheduler(optimizer, cfg, steps_per_epoch: int, epochs: int):
    from torch.optim.lr_scheduler import LinearLR, SequentialLR  # torch when built: config checks import this
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    main = SCHEDULES[cfg.schedule](optimizer, cfg, steps_per_epoch, warmup, total - warmup)
    if warmup <= 0:
        return main
    ramp = LinearLR(optimizer, start_factor=cfg.warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])
