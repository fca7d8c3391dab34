"""A run's identity: the config keys that make a run what it is (model, data, optimizer, global batch, seed,
precision, ...) as opposed to where and how fast it runs, how it is logged and checkpointed, and how long it trains
(the keys declared with identity=False in schema.py; data.batch_size among them: it is a process's memory, the
global batch is the run's, so a smaller data.batch_size on a resume finds the same run). A run directory holds one
identity (run/rundir.py); the default run name carries a hash of it, so two experiments never share a directory
and the same command always finds its own.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from resnext_dist.config.schema import TrainConfig, declared_keys, to_flat_dict


def identity_keys(cfg: TrainConfig) -> set:
    """The names of the keys that make a run of this config's schema what it is."""
    return {name for name, f in declared_keys(cfg) if f.metadata["identity"]}


def zero_is_runs_own(cfg: TrainConfig) -> set:
    """The identity keys whose 0 means "the run's own value" (never a change of identity)."""
    return {name for name, f in declared_keys(cfg) if f.metadata["zero_is_runs_own"]}


def identity_hash(cfg: TrainConfig) -> str:
    """8 hex digits of the identity keys that differ from the schema's defaults: the default run name's suffix.
    Leaving the defaults out keeps names stable when a version adds a key (at its default)."""
    keep, defaults = identity_keys(cfg), to_flat_dict(type(cfg)())
    kept = {k: v for k, v in to_flat_dict(cfg).items() if k in keep and norm(v) != norm(defaults.get(k))}
    return hashlib.sha256(norm(kept).encode()).hexdigest()[:8]


def norm(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)
