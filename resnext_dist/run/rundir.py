"""A run directory holds one run, and its config.yaml is the run's identity.

    old = read_config(cfg.run.dir)    # {section.key: value} of the recorded config, None for a new run dir
    changes = check_identity(cfg, old)  # InputError listing each differing identity key (old -> new)
    write_config(cfg)                 # atomically, only once the run starts or legitimately continues
    done = read_done(run_dir); finished_for(done, cfg)   # is there anything left to train for this config?

Which keys are the identity, and which may change between two attempts of one run (a requeue, a resume by hand),
is config/identity.py's; of the latter, `train.epochs` extends a run and `train.max_steps` makes a smoke run that a
later full run continues.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import yaml

from resnext_dist.config import TrainConfig, to_flat_dict, to_yaml
from resnext_dist.config.identity import identity_keys, norm
from resnext_dist.errors import InputError
from resnext_dist.files import atomic_write


def config_path(run_dir: str) -> str:
    return os.path.join(run_dir, "config.yaml")


def read_config(run_dir: str) -> Optional[Dict[str, Any]]:
    """The run's recorded config as {section.key: value}, or None for a new run directory."""
    try:
        with open(config_path(run_dir)) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{config_path(run_dir)}: unreadable run config ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise InputError(f"{config_path(run_dir)}: not a run config (not a mapping)")
    return {f"{s}.{k}": v for s, section in data.items() if isinstance(section, dict) for k, v in section.items()}


def check_identity(cfg: TrainConfig, old: Optional[Dict[str, Any]]) -> List[Tuple[str, Any, Any]]:
    """The allowed changes (key, old, new) against the run's recorded config `old` (read_config); refuses
    identity changes."""
    if old is None:
        return []
    new, identity = to_flat_dict(cfg), identity_keys(cfg)
    changed = [(k, old[k], v) for k, v in new.items() if k in old and norm(old[k]) != norm(v)]
    refused = [c for c in changed if c[0] in identity]
    if refused:
        diff = ", ".join(f"{k}: {_show(o)} -> {_show(n)}" for k, o, n in refused)
        raise InputError(f"{cfg.run.dir} holds another run ({diff}); to keep both, give this one another run.name; "
                         f"to start that run over, delete {cfg.run.dir}")
    return [c for c in changed if not c[0].startswith("run.")]


def write_config(cfg: TrainConfig) -> None:
    atomic_write(config_path(cfg.run.dir), to_yaml(cfg))


def done_path(run_dir: str) -> str:
    return os.path.join(run_dir, "DONE")


def read_done(run_dir: str) -> Optional[Dict[str, Any]]:
    """The DONE marker: the run reached its end (its epochs, or a max_steps stop), and how far it got (None: not)."""
    try:
        with open(done_path(run_dir)) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        done = json.loads(text)
        return done if isinstance(done, dict) else {}
    except ValueError:
        return {}  # an empty marker of an older version: finished, length unknown


def finished_for(done: Optional[Dict[str, Any]], cfg: TrainConfig, old_epochs: Optional[int]) -> bool:
    """Is there nothing left to train for this config? A max_steps stop is finished only for a config that
    stops there too; more epochs than the run had is an extension."""
    if done is None:
        return False
    if cfg.train.max_steps and done.get("step", 0) >= cfg.train.max_steps:
        return True
    epochs_done = done.get("epochs_done", old_epochs if not done else 0)
    return epochs_done is not None and epochs_done >= cfg.train.epochs


def write_done(run_dir: str, step: int, epochs_done: int) -> None:
    atomic_write(done_path(run_dir), json.dumps({"step": step, "epochs_done": epochs_done}) + "\n")


def clear_done(run_dir: str) -> None:
    try:
        os.remove(done_path(run_dir))
    except FileNotFoundError:
        pass


def _show(v: Any) -> str:
    return json.dumps(v, default=str) if not isinstance(v, str) else repr(v)
