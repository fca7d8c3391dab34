"""Optimization: the optimizers (optimizers.py) and the learning-rate schedules (schedules.py), registries whose
entries own their checks and builders. Importing it imports no torch (the config checks read the registries)."""
from resnext_dist.optim.optimizers import OPTIMIZERS, build_optimizer, optimizer_for, peak_lr
from resnext_dist.optim.schedules import SCHEDULES, build_scheduler

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_scheduler", "optimizer_for", "peak_lr"]
