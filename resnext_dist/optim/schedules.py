"""The learning-rate schedules, one entry per value of `optim.schedule`, built from the `optim` config section.

Schedules step once per optimizer step: a linear warm-up (any schedule), then the entry's curve: cosine to 0, a
step decay at epoch milestones, or linear to 0, composed from torch.optim.lr_scheduler. Importing it imports no
torch (the config checks read SCHEDULES); building does.
"""
from __future__ import annotations


def _cosine(lrs, optimizer, cfg, steps_per_epoch: int, warmup: int, rest: int):
    return lrs.CosineAnnealingLR(optimizer, T_max=rest, eta_min=0.0)


def _step(lrs, optimizer, cfg, steps_per_epoch: int, warmup: int, rest: int):
    # milestones count from the end of the warm-up, which the SequentialLR below runs first
    return lrs.MultiStepLR(optimizer, milestones=[max(1, m * steps_per_epoch - warmup) for m in cfg.milestones],
                           gamma=cfg.gamma)


def _linear(lrs, optimizer, cfg, steps_per_epoch: int, warmup: int, rest: int):
    return lrs.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=rest)


SCHEDULES = {"cosine": _cosine, "step": _step, "linear": _linear}


def build_scheduler(optimizer, cfg, steps_per_epoch: int, epochs: int):
    from torch.optim import lr_scheduler as lrs  # torch when built: the config checks import this module
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    main = SCHEDULES[cfg.schedule](lrs, optimizer, cfg, steps_per_epoch, warmup, total - warmup)
    if warmup <= 0:
        return main
    ramp = lrs.LinearLR(optimizer, start_factor=cfg.warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return lrs.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
