"""Optimization: the optimizer (optimizers.py) and the learning-rate schedule (schedules.py)."""
from resnext_dist.optim.optimizers import build_optimizer, peak_lr
from resnext_dist.optim.schedules import build_scheduler

__all__ = ["build_optimizer", "build_scheduler", "peak_lr"]
