"""The typed configuration: loading, validation and output; the schema itself (one dataclass per concern,
composed into `TrainConfig`) is config_schema.py, re-exported here.

    cfg = load_config("configs/quickstart.yaml", ["data.batch_size=64", "train.epochs=2"])

Recipes in configs/ are YAML merged over these defaults; `key=value` overrides from the command line
are merged last. Every error (unknown key, wrong type, bad value, cross-field mismatch) raises
`InputError` with one line naming the key, before any process group, GPU or Slurm time is used.
No OmegaConf object leaves this module: callers get plain dataclasses.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resnext_dist.errors import InputError, one_line
from resnext_dist.config_schema import (CHOICES, CheckpointConfig, DataConfig, DistConfig, ModelConfig,
                                        OptimConfig, RunConfig, SlurmConfig, TrackingConfig, TrainConfig,
                                        TrainingConfig, _section_types)

__all__ = ["CHOICES", "CheckpointConfig", "DataConfig", "DistConfig", "ModelConfig", "OptimConfig",
           "RunConfig", "SlurmConfig", "TrackingConfig", "TrainConfig", "TrainingConfig", "get_key",
           "grad_accum_steps", "load_config", "to_flat_dict", "to_yaml", "validate"]




# ----------------------------------------------------------------------------------------------
# Loading


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> TrainConfig:
    """Defaults <- YAML recipe <- `key=value` overrides, validated; raises InputError."""
    schema = OmegaConf.structured(TrainConfig)
    layers = [schema]
    if path:
        if not os.path.isfile(path):
            raise InputError(f"config file not found: {path}")
        try:
            recipe = OmegaConf.load(path)
        except Exception as e:  # yaml syntax errors
            raise InputError(f"{path}: not valid YAML: {one_line(e)}") from None
        _check_keys(recipe, source=path)
        layers.append(recipe)
    dotlist = list(overrides or [])
    for item in dotlist:
        if "=" not in item:
            raise InputError(f"override {item!r} is not key=value")
    try:
        cli = OmegaConf.from_dotlist(dotlist)
    except Exception as e:
        raise InputError(f"bad override: {one_line(e)}") from None
    _check_keys(cli, source="command line")
    layers.append(cli)
    try:
        merged = OmegaConf.merge(*layers)
        if OmegaConf.is_missing(merged.run, "name"):
            merged.run.name = os.path.splitext(os.path.basename(path))[0] if path else "run"
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise InputError(_explain(e)) from None
    validate(cfg)
    return cfg


def _check_keys(node, source: str, prefix: str = "") -> None:
    """Reject unknown keys with the nearest valid one (OmegaConf's own message lacks the hint)."""
    valid = _all_keys()
    for key, value in OmegaConf.to_container(node, resolve=False).items() if node is not None else []:
        full = f"{prefix}{key}"
        if full not in valid:
            near = difflib.get_close_matches(full, sorted(valid), n=1, cutoff=0.5)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise InputError(f"unknown config key {full!r} in {source}{hint}")
        if isinstance(value, dict) and _is_section(full):
            _check_keys(OmegaConf.create(value), source, prefix=full + ".")


def _is_section(key: str) -> bool:
    return key in _section_types()


def _all_keys() -> set:
    keys = set()
    for section, cls in _section_types().items():
        keys.add(section)
        for f in dataclasses.fields(cls):
            keys.add(f"{section}.{f.name}")
    return keys


def _explain(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None) or ""
    msg = one_line(e.msg if hasattr(e, "msg") else e)
    if "Missing mandatory value" in msg:
        return f"config key {key!r} is required but has no value"
    return f"config key {key!r}: {msg}" if key else msg


# ----------------------------------------------------------------------------------------------
# Validation: values and cross-field rules that types alone cannot express


def validate(cfg: TrainConfig, world_size: int = 1) -> None:
    """Raise InputError for the first bad value; `world_size` enables the batch-division checks."""
    from resnext_dist.models.resnext import PRESETS  # local: keep config import light

    for key, allowed in CHOICES.items():
        value = get_key(cfg, key)
        if value not in allowed:
            raise InputError(f"{key}={value!r}: must be one of {', '.join(allowed)}")
    m, d, t, o = cfg.model, cfg.data, cfg.train, cfg.optim
    if m.arch not in PRESETS:
        near = difflib.get_close_matches(m.arch, PRESETS, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise InputError(f"model.arch={m.arch!r} is not a known preset{hint}; known: {', '.join(PRESETS)}")
    _positive(cfg, "model.num_classes", "model.base_channels", "data.batch_size", "data.train_res", "data.val_res",
              "train.epochs", "train.log_every_steps", "train.eval_every_epochs",
              "checkpoint.keep", "dist.timeout_s", "dist.bucket_cap_mb")
    _non_negative(cfg, "data.num_workers", "train.max_steps", "checkpoint.every_steps",
                  "optim.weight_decay", "optim.warmup_epochs", "optim.global_batch_size",
                  "train.grad_clip_norm", "slurm.gpus_per_node", "slurm.tasks_per_node")
    if o.lr <= 0:
        raise InputError(f"optim.lr={o.lr}: must be > 0")
    if not 0 <= o.label_smoothing < 1:
        raise InputError(f"optim.label_smoothing={o.label_smoothing}: must be in [0, 1)")
    if not 0 <= t.ema_decay < 1:
        raise InputError(f"train.ema_decay={t.ema_decay}: must be in [0, 1)")
    if m.layers is not None and (len(m.layers) != 4 or min(m.layers) < 1):
        raise InputError(f"model.layers={list(m.layers)}: must be 4 positive block counts")
    for key in ("model.cardinality", "model.group_width"):
        v = get_key(cfg, key)
        if v is not None and v < 1:
            raise InputError(f"{key}={v}: must be >= 1")
    if d.loader != "synthetic" and not d.train:
        raise InputError(f"data.train is required when data.loader={d.loader}")
    if d.min_train_res:
        if not d.min_train_res <= d.train_res:
            raise InputError(f"data.min_train_res={d.min_train_res} must be <= data.train_res={d.train_res}")
        if not d.ramp_start_epoch <= d.ramp_end_epoch:
            raise InputError("data.ramp_start_epoch must be <= data.ramp_end_epoch")
    if o.schedule == "step" and list(o.milestones) != sorted(o.milestones):
        raise InputError(f"optim.milestones={list(o.milestones)}: must be increasing")
    if cfg.checkpoint.resume not in ("auto", "never") and not os.path.isfile(cfg.checkpoint.resume):
        raise InputError(f"checkpoint.resume={cfg.checkpoint.resume!r}: no such checkpoint file")
    if not cfg.run.name or "/" in cfg.run.name:
        raise InputError(f"run.name={cfg.run.name!r}: must be a non-empty name without '/'")
    if world_size > 1 or o.global_batch_size:
        grad_accum_steps(cfg, world_size)


def grad_accum_steps(cfg: TrainConfig, world_size: int) -> int:
    """Micro-steps per optimizer step so that the global batch stays `optim.global_batch_size`."""
    per_step = cfg.data.batch_size * world_size
    target = cfg.optim.global_batch_size or per_step
    if target % per_step:
        raise InputError(
            f"optim.global_batch_size={target} is not a multiple of data.batch_size={cfg.data.batch_size}"
            f" x world size {world_size}")
    return target // per_step


def _positive(cfg, *keys):
    for key in keys:
        if get_key(cfg, key) <= 0:
            raise InputError(f"{key}={get_key(cfg, key)}: must be > 0")


def _non_negative(cfg, *keys):
    for key in keys:
        if get_key(cfg, key) < 0:
            raise InputError(f"{key}={get_key(cfg, key)}: must be >= 0")


def get_key(cfg: TrainConfig, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


# ----------------------------------------------------------------------------------------------
# Output


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_flat_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """{'model.arch': ..., ...}: MLflow params and config hashes use this."""
    out = {}
    for section, cls in _section_types().items():
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = getattr(getattr(cfg, section), f.name)
    return out
