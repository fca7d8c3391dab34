"""Every config value checked when the config loads: each key's own rule (declared with the key, schema.py), then
the checks that tie keys together, those of the chosen registry entries (the data loader's, the optimizer's)
included. The first bad value raises `InputError` with one line naming the key, before any process group, data or
Slurm time is spent.

Types are OmegaConf's job (a string where an int belongs never gets here). Importing this module imports no torch.
"""
from __future__ import annotations

import math
import os
from typing import Any

from resnext_dist.config.schema import TrainConfig, declared_keys, get_key
from resnext_dist.data.batches import BatchSplit, split_for
from resnext_dist.data.loaders import loader_for
from resnext_dist.errors import InputError
from resnext_dist.optim.optimizers import optimizer_for


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return str(list(value))
    return str(value)


def validate(cfg: TrainConfig, world_size: int = 1) -> None:
    """Raise InputError for the first bad value; `world_size` enables the check that the global batch can be
    shared among that many processes."""
    for name, f in declared_keys(cfg):
        value = get_key(cfg, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{name}={_show(value)}: must be a finite number")
        rule = f.metadata.get("rule")
        problem = rule(value) if rule else None
        if problem:
            raise InputError(f"{name}={_show(value)}: {problem}")
    _check_together(cfg)
    _check_dir_can_be(cfg.run.dir, "run.dir")
    if cfg.tracking.enabled and not cfg.tracking.uri:  # the default MLflow store: run.root/mlflow.db
        _check_dir_can_be(cfg.run.root, "run.root")
    batch_split(cfg, world_size)


def _check_together(cfg: TrainConfig) -> None:
    d, s = cfg.data, cfg.slurm
    loader_for(d).check_config(d)
    if d.min_train_res:
        if not d.min_train_res <= d.train_res:
            raise InputError(f"data.min_train_res={d.min_train_res} must be <= data.train_res={d.train_res}")
        if not d.ramp_start_epoch <= d.ramp_end_epoch:
            raise InputError("data.ramp_start_epoch must be <= data.ramp_end_epoch")
    if d.pad_crop and d.pad_crop >= d.train_res:
        raise InputError(f"data.pad_crop={d.pad_crop} must be smaller than data.train_res={d.train_res}")
    optimizer_for(cfg.optim).check(cfg.optim)
    if s.gpus_per_node and s.tasks_per_node and s.tasks_per_node != s.gpus_per_node:
        raise InputError(
            f"slurm.tasks_per_node={s.tasks_per_node} with slurm.gpus_per_node={s.gpus_per_node}: jobs run one task "
            "per GPU; leave slurm.tasks_per_node at 0")
    if s.signal_delay_s >= s.timeout_min * 60:
        raise InputError(
            f"slurm.signal_delay_s={s.signal_delay_s} is not shorter than slurm.timeout_min={s.timeout_min} minutes")


def _check_dir_can_be(path: str, key: str) -> None:
    """`path` is, or can be made, a directory this user can write; checked without creating anything."""
    target = os.path.abspath(path)
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise InputError(f"{key}={path!r}: exists and is not a directory")
        if not os.access(target, os.W_OK | os.X_OK):
            raise InputError(f"{key}={path!r}: not writable by this user")
        return
    parent = os.path.dirname(target)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"{key}={path!r}: cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{key}={path!r}: cannot be created: {parent} is not writable by this user")


def batch_split(cfg: TrainConfig, world_size: int) -> BatchSplit:
    """How the run's global batch (optim.global_batch_size; 0: data.batch_size x world size) is shared among
    `world_size` processes in micro-batches of at most data.batch_size; InputError naming the key when it cannot
    be."""
    split = split_for(world_size, cfg.data.batch_size, cfg.optim.global_batch_size)
    problem = split.problem()
    if problem:
        raise InputError(problem)
    return split
