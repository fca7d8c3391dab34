"""A run directory holds one run, and its config.yaml is the run's identity.

    old = read_config(cfg.run.dir)    # {section.key: value} of the recorded config, None for a new run dir
    changes = check_identity(cfg, old)  # InputError listing each differing identity key (old -> new)
    write_config(cfg)                 # atomically, only once the run starts or legitimately continues
    done = read_done(run_dir, problems); finished_for(done, cfg)   # anything left to train for this config?

Which keys are the identity, and which may change between two attempts of one run (a requeue, a resume by hand),
is config/identity.py's; of the latter, `train.epochs` extends a run and `train.max_steps` makes a smoke run that a
later full run continues. What is read back is checked against what we write: a recorded config whose sections are
not mappings cannot say the run's identity and is refused (never overwritten); a key it lacks is at its default (a
version that adds a key adds it at its default); a DONE marker of another shape is ignored, and said.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import yaml

from resnext_dist.config import TrainConfig, to_flat_dict, to_yaml
from resnext_dist.config.identity import identity_keys, norm, zero_is_runs_own
from resnext_dist.errors import InputError
from resnext_dist.files import atomic_write
from resnext_dist.readback import NOT_REGULAR, check, count, read_regular

MAX_CONFIG_BYTES = 1 << 20  # ours are ~2 KiB
DONE_FIELDS = {"step": count, "epochs_done": count}


def config_path(run_dir: str) -> str:
    return os.path.join(run_dir, "config.yaml")


def read_config(run_dir: str) -> Optional[Dict[str, Any]]:
    """The run's recorded config as {section.key: value}, or None for a new run directory."""
    path = config_path(run_dir)
    data, problem = read_regular(path, MAX_CONFIG_BYTES)
    if problem:
        raise InputError(f"{path}: {problem}; it is the run's identity: restore it or delete {run_dir}")
    return None if data is None else parse_config(data, path)


def parse_config(text, where: str) -> Dict[str, Any]:
    """{section.key: value} of a resolved config as we write it (to_yaml: a mapping of mappings, no YAML
    aliases); InputError naming `where` otherwise."""
    try:
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise InputError(f"{where}: not a run config (it holds YAML aliases, which we never write)")
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"{where}: unreadable run config ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: not a run config (not a mapping)")
    for section, keys in data.items():
        if not isinstance(keys, dict) or not all(isinstance(k, str) for k in keys):
            raise InputError(f"{where}: not a run config (its {str(section)[:40]!r} is not a mapping of keys)")
    return {f"{s}.{k}": v for s, section in data.items() for k, v in section.items()}


def identity_diff(cfg: TrainConfig, old: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    """(key, recorded, now) for each identity key that differs; a key the record lacks is at its default, and a 0
    of a zero_is_runs_own key (optim.global_batch_size) differs from nothing: the trainer makes it explicit."""
    new, identity, defaults = to_flat_dict(cfg), identity_keys(cfg), to_flat_dict(type(cfg)())
    own = zero_is_runs_own(cfg)
    diff = [(k, old.get(k, defaults.get(k)), v) for k, v in new.items() if k in identity]
    return [(k, was, now) for k, was, now in diff if norm(was) != norm(now) and not (k in own and 0 in (was, now))]


def check_identity(cfg: TrainConfig, old: Optional[Dict[str, Any]]) -> List[Tuple[str, Any, Any]]:
    """The allowed changes (key, old, new) against the run's recorded config `old` (read_config); refuses
    identity changes."""
    if old is None:
        return []
    refused = identity_diff(cfg, old)
    if refused:
        raise InputError(f"{cfg.run.dir} holds another run ({describe_diff(refused)}); to keep both, give this one "
                         f"another run.name; to start that run over, delete {cfg.run.dir}")
    new, own = to_flat_dict(cfg), zero_is_runs_own(cfg)
    return [(k, old[k], v) for k, v in new.items() if k in old and norm(old[k]) != norm(v) and not k.startswith("run.")
            and not (k in own and 0 in (old[k], v))]


def describe_diff(diff: List[Tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k}: {show(o)} -> {show(n)}" for k, o, n in diff)


def write_config(cfg: TrainConfig) -> None:
    atomic_write(config_path(cfg.run.dir), to_yaml(cfg))


def done_path(run_dir: str) -> str:
    return os.path.join(run_dir, "DONE")


def read_done(run_dir: str, problems: Optional[List[str]] = None) -> Optional[Dict[str, Any]]:
    """The DONE marker: the run reached its end (its epochs, or a max_steps stop), and how far it got (None: not).
    A marker of another shape than ours is None (the run is finished again from its last checkpoint), with the
    reason appended to `problems`; one that is not a regular file (it could not be replaced) is an InputError."""
    path = done_path(run_dir)
    data, problem = read_regular(path, 4096)
    if data is None and not problem:
        return None
    if problem == NOT_REGULAR:  # not a marker we could replace either: the run could never finish
        raise InputError(f"{path}: {problem}; remove it")
    if not problem and not data.strip():
        return {}  # an empty marker of an older version: finished, length unknown
    if not problem:
        try:
            done = json.loads(data)
            problem = check(done, DONE_FIELDS)
        except (ValueError, RecursionError):
            problem = "not JSON"
    if problem:
        if problems is not None:
            problems.append(f"{path}: {problem}; ignored: the run is finished again from its last checkpoint")
        return None
    return done


def finished_for(done: Optional[Dict[str, Any]], cfg: TrainConfig, old_epochs: Optional[int]) -> bool:
    """Is there nothing left to train for this config? A max_steps stop is finished only for a config that
    stops there too; more epochs than the run had is an extension."""
    if done is None:
        return False
    if cfg.train.max_steps and done.get("step", 0) >= cfg.train.max_steps:
        return True
    epochs_done = done.get("epochs_done", old_epochs if not done else 0)
    return isinstance(epochs_done, int) and epochs_done >= cfg.train.epochs


def write_done(run_dir: str, step: int, epochs_done: int) -> None:
    atomic_write(done_path(run_dir), json.dumps({"step": step, "epochs_done": epochs_done}) + "\n")


def clear_done(run_dir: str) -> None:
    try:
        os.remove(done_path(run_dir))
    except FileNotFoundError:
        pass


def show(v: Any) -> str:
    return json.dumps(v, default=str) if not isinstance(v, str) else repr(v)
