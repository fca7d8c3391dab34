"""A run's identity: the config keys that make a run what it is (model, data, optimizer, batch, seed, precision, ...)
as opposed to where and how fast it runs, how it is logged and checkpointed, and how long it trains. A run directory
holds one identity (run/rundir.py); the default run name carries a hash of it, so two experiments never share a
directory and the same command always finds its own.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict

from resnext_dist.config.schema import TrainConfig, to_flat_dict

# Keys that may differ between attempts of one run: placement, speed, logging, checkpointing, length.
MAY_CHANGE_SECTIONS = ("dist", "slurm", "tracking", "run", "checkpoint")
MAY_CHANGE_KEYS = frozenset({
    "data.num_workers", "data.os_cache", "data.batches_ahead", "data.crop_decode", "data.decode",
    "train.compile", "train.cudnn_benchmark", "train.nan_check", "train.progress_bar",
    "train.log_every_steps", "train.log_every_s", "train.eval_every_epochs",
    "train.epochs", "train.max_steps",
    # the global batch as such is checked against the checkpoint's (the number of processes may change)
    "optim.global_batch_size",
})


def may_change(key: str) -> bool:
    return key.split(".", 1)[0] in MAY_CHANGE_SECTIONS or key in MAY_CHANGE_KEYS


def identity(cfg: TrainConfig) -> Dict[str, Any]:
    """The keys that make a run what it is, with their values."""
    return {k: v for k, v in to_flat_dict(cfg).items() if not may_change(k)}


def identity_hash(cfg: TrainConfig) -> str:
    """8 hex digits of the identity keys that differ from the schema's defaults: the default run name's suffix.
    Leaving the defaults out keeps names stable when a version adds a key (at its default)."""
    defaults = to_flat_dict(TrainConfig())
    kept = {k: v for k, v in identity(cfg).items() if norm(v) != norm(defaults.get(k))}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def norm(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)
