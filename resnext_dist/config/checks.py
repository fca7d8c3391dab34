"""Every config value checked when the config loads: each key's own rule (declared with the key, schema.py), then
the checks that tie keys together, those of the chosen registry entries (the data loader's, the optimizer's)
included, and the model's size and memory for this machine (check_size: arithmetic, so model.group_width=100000 is
one line, not a failed 1.4 TB allocation). The first bad value raises `InputError` with one line naming the key,
before any process group, data or Slurm time is spent.

Types are OmegaConf's job for a config (a string where an int belongs never gets here); key_problem checks them too
for values read from elsewhere (an export's model.json). Importing this module imports no torch.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Optional, Union, get_args, get_origin, get_type_hints

from resnext_dist.config.schema import TrainConfig, declared_keys, get_key, section_types
from resnext_dist.data.batches import BatchSplit, split_for
from resnext_dist.data.loaders import LOADERS, SYNTHETIC_CLASSES, Synthetic, data_class_names, loader_for, loader_name_for
from resnext_dist.errors import InputError
from resnext_dist.models.presets import size_estimate
from resnext_dist.optim.optimizers import optimizer_for


def _show(value: Any, limit: int = 300) -> str:
    """A value as a message quotes it, cut at `limit` characters (a hostile file's value may be megabytes)."""
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        text = str(list(value))
    else:
        text = str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def follow_data(cfg, data_required: bool = False) -> None:
    """Fill in the keys whose default follows the data (a TrainConfig, or the merged OmegaConf before the run is
    named, so `auto` and the loader it picks name the same run): data.loader=auto becomes the loader data.train's
    kind asks for, model.num_classes=0 the data's class count. An explicit num_classes the data's classes contradict
    is refused, naming both: a 10-way head on 3 classes trains without a word otherwise. `data_required`: a config
    that will train (loaders.loader_name_for: synthetic data only when asked for)."""
    d, m = cfg.data, cfg.model
    d.loader = loader_name_for(d, data_required)
    names = data_class_names(d)
    if m.num_classes == 0:
        if names is None and d.loader != Synthetic.name:
            if d.loader in LOADERS:  # its own word first (data.train is required, ...)
                LOADERS[d.loader].check_config(d)
            if not os.path.exists(d.train):
                raise InputError(f"data.train={d.train!r}: no such file or folder (model.num_classes=0 takes the "
                                 "data's class count)")
            raise InputError(f"model.num_classes=0 (the data's): data.train={d.train!r} records no class names (a "
                             ".beton's NAME.classes.json, which the writer makes); set model.num_classes")
        m.num_classes = len(names) if names is not None else SYNTHETIC_CLASSES
    elif names is not None and len(names) != m.num_classes:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise InputError(f"model.num_classes={m.num_classes} but data.train={d.train!r} has {len(names)} classes "
                         f"({shown}); leave model.num_classes out to take the data's")


def validate(cfg: TrainConfig, world_size: int = 1) -> None:
    """Raise InputError for the first bad value; `world_size` enables the check that the global batch can be
    shared among that many processes. The keys that follow the data are filled in first (follow_data)."""
    follow_data(cfg)
    for name, f in declared_keys(cfg):
        problem = key_problem(name, get_key(cfg, name), f)
        if problem:
            raise InputError(problem)
    _check_together(cfg)
    check_size(cfg.model, cfg.data.batch_size, max(cfg.data.train_res, cfg.data.val_res))
    _check_dir_can_be(cfg.run.dir, "run.dir")
    if cfg.tracking.enabled and not cfg.tracking.uri:  # the default MLflow store: run.root/mlflow.db
        _check_dir_can_be(cfg.run.root, "run.root")
    batch_split(cfg, world_size)


def key_problem(name: str, value: Any, f: Optional[dataclasses.Field] = None) -> str:
    """What is wrong with `value` for the key `name` ('section.key'), as the line validation says ("" when nothing):
    its type (for values that did not come through OmegaConf, e.g. an export's model.json), finiteness, its rule."""
    if f is None:
        f = dict(declared_keys()).get(name)
        if f is None:
            return f"{name}: not a config key"
        section, leaf = name.split(".")
        hint = get_type_hints(section_types()[section])[leaf]
        if not _conforms(value, hint):
            return f"{name}={_show(value)}: must be {_type_words(hint)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}={_show(value)}: must be a finite number"
    rule = f.metadata.get("rule")
    try:
        problem = rule(value) if rule else None
    except InputError as e:  # a rule that words the whole line itself (models.presets.known_arch)
        return str(e)
    return f"{name}={_show(value)}: {problem}" if problem else ""


def _conforms(value: Any, hint) -> bool:
    """`value` (plain JSON/YAML data) is of the declared type `hint`: str, bool, int (not bool), float (an int too),
    Optional[...], List[...], Dict[...]."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union:
        return any(_conforms(value, a) for a in args)
    if origin in (list, List):
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin in (dict, Dict):
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_words(hint) -> str:
    words = {str: "text", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union:
        return " or ".join(_type_words(a) for a in args)
    if origin in (list, List):
        return f"a list of {_type_words(args[0]).replace('an ', '').replace('a ', '')}s"
    return words.get(hint, getattr(hint, "__name__", str(hint)))


# What an accelerator may hold at most (2026: 80-288 GB). Training memory is compared with the larger of this and the
# machine's memory: a config whose lower bound exceeds both fits nowhere the run could put it.
LARGEST_ACCELERATOR_BYTES = 288 * 10**9


def machine_memory() -> int:
    """This machine's physical memory in bytes (0 when the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_size(model, batch_size: int = 0, res: int = 0) -> None:
    """Refuse (InputError naming the keys) a model whose fp32 weights exceed this machine's memory (it is built in
    host memory first), or whose training needs more, at least, than the machine and the largest accelerator hold:
    weights, gradients and momentum (12 bytes a parameter) and `batch_size` images' activations at `res` px (4 bytes
    a value, a lower bound: models.presets.size_estimate). Arithmetic only: nothing is allocated."""
    params, values = size_estimate(model, res or 1)
    memory = machine_memory()
    if not memory:
        return
    culprit = _largest_key(model, params)
    if 4 * params > memory:
        raise InputError(f"{culprit}: a model of {params:.3g} parameters ({_bytes(4 * params)} of fp32 weights) "
                         f"is more than this machine's memory ({_bytes(memory)})")
    need = 12 * params + 4 * values * batch_size
    if need > max(memory, LARGEST_ACCELERATOR_BYTES):
        raise InputError(f"data.batch_size={batch_size} at {res} px with {culprit}: training needs at least "
                         f"{_bytes(need)} per process, more than this machine ({_bytes(memory)}) or any accelerator "
                         f"({_bytes(LARGEST_ACCELERATOR_BYTES)}) holds")


def _largest_key(model, params: int) -> str:
    """'model.KEY=VALUE' of the size key whose default shrinks the model most (the arch when none is set)."""
    default = dataclasses.replace(type(model)(), num_classes=SYNTHETIC_CLASSES)  # 0 (the data's) is no size
    shrunk = {k: size_estimate(dataclasses.replace(model, **{k: getattr(default, k)}), 1)[0]
              for k in ("layers", "cardinality", "group_width", "base_channels", "num_classes")
              if getattr(model, k) != getattr(default, k)}
    key = min(shrunk, key=shrunk.get) if shrunk and min(shrunk.values()) < params else "arch"
    return f"model.{key}={_show(getattr(model, key))}"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n:.3g} PB"


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
    if cfg.train.compile_mode != "default" and not cfg.train.compile:
        raise InputError(f"train.compile_mode={cfg.train.compile_mode} needs train.compile=true")
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
