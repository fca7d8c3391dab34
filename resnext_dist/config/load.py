"""Finding a recipe, loading it with its overrides, and writing it out; the schema is schema.py, the checks checks.py.

    cfg = load_config("configs/quickstart.yaml", ["data.batch_size=64", "train.epochs=2"])
    cfg = load_config(find_config("quickstart"), [])        # a recipe of configs/ by name

Recipes in configs/ are YAML merged over the schema's defaults; `key=value` overrides from the command line
are merged last. A file that is not a YAML mapping, an unknown key or a wrong type raises `InputError` here, a bad
value checks.py's; credentials in `tracking.uri` are moved out of it (credentials.py), so no loaded config holds
them. No OmegaConf object leaves this module: callers get plain dataclasses.

Paths in a config (data.train, data.val, run.root, checkpoint.resume, ...) are used as written: a relative
path is relative to the working directory the command runs in, not to the config file. The one exception is
the embedded data, named `embedded:digits/train` and `embedded:digits/val` (resnext_dist/data/embedded.py),
which works from any directory.
"""
from __future__ import annotations

import difflib
import os
import sys
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resnext_dist.config.checks import follow_data, validate
from resnext_dist.config.credentials import move_uri_credentials
from resnext_dist.config.naming import run_name_for
from resnext_dist.config.schema import TrainConfig, declared_keys, section_types
from resnext_dist.errors import InputError, one_line
from resnext_dist.files import open_regular


def configs_dir() -> Optional[str]:
    """The recipes folder: configs/ beside the package (a clone, or an editable install), else the one a
    regular install puts under sys.prefix/share/resnext_dist/configs; None if neither exists."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # config/ in resnext_dist/
    for candidate in (os.path.join(here, "configs"), os.path.join(sys.prefix, "share", "resnext_dist", "configs")):
        if os.path.isdir(candidate):
            return candidate
    return None


def find_config(name: str) -> str:
    """The file `--config` names: a path as given, or, for a bare name (no '/', no .yaml) that is no file
    here, configs/NAME.yaml of the package's recipes."""
    if os.path.isfile(name) or os.sep in name or name.endswith((".yaml", ".yml")):
        return name
    folder = configs_dir()
    path = os.path.join(folder, f"{name}.yaml") if folder else ""
    if path and os.path.isfile(path):
        return path
    known = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if folder else []
    near = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise InputError(f"--config {name}: no such file, and no recipe {name}.yaml in "
                     f"{folder or 'configs/'}{hint}; recipes: {', '.join(known) or 'none'}")


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None,
                schema: type = TrainConfig, data_required: bool = False) -> TrainConfig:
    """Defaults <- YAML recipe <- `key=value` overrides, validated; raises InputError. `schema`: TrainConfig, or
    a subclass with more keys. `data_required`: the config will train (the train and submit commands), so an empty
    data.train with data.loader=auto is an error naming it, not random images (checks.follow_data)."""
    valid = set(section_types(schema)) | {name for name, _ in declared_keys(schema)}  # every section and key
    layers = [OmegaConf.structured(schema)]
    if path:
        layers.append(_read_recipe(path, valid))
    dotlist = list(overrides or [])
    for item in dotlist:
        if "=" not in item:
            raise InputError(f"override {item!r} is not key=value")
    try:
        cli = OmegaConf.from_dotlist(dotlist)
    except Exception as e:
        raise InputError(f"bad override: {one_line(e)}") from None
    _check_keys(cli, valid, source="command line")
    layers.append(cli)
    try:
        merged = OmegaConf.merge(*layers)
        if OmegaConf.is_missing(merged.run, "name"):
            # <recipe>-<what differs from it>-<hash of the identity keys> (naming.py: one directory per
            # experiment, found again; the data followed there, so data.loader=auto and its pick are one run)
            recipe = OmegaConf.merge(*layers[:-1])
            merged.run.name = recipe.run.name = stem = os.path.splitext(os.path.basename(path))[0] if path else "run"
            merged.run.name = run_name_for(stem, OmegaConf.to_object(recipe), OmegaConf.to_object(merged))
        follow_data(merged, data_required)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise InputError(_explain(e)) from None
    cfg.tracking.uri = move_uri_credentials(cfg.tracking.uri)  # before anything can record or print it
    validate(cfg)
    return cfg


def _read_recipe(path: str, valid: set) -> DictConfig:
    try:
        f = open_regular(path, "a YAML config")  # a FIFO or device: refused, never waited on
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}") from None
    except OSError as e:
        raise InputError(f"{path}: unreadable config ({e.strerror or e})") from None
    try:
        with f:
            recipe = OmegaConf.load(f)
    except Exception as e:  # yaml syntax errors
        raise InputError(f"{path}: not valid YAML: {one_line(e)}") from None
    if not isinstance(recipe, DictConfig):
        raise InputError(f"{path}: must be a YAML mapping of sections (model:, data:, train:, ...), "
                         f"not a {type(recipe).__name__.replace('Config', '').lower()}")
    _check_keys(recipe, valid, source=path)
    return recipe


def _check_keys(node, valid: set, source: str, prefix: str = "") -> None:
    """Reject unknown keys with the nearest valid one (OmegaConf's own message lacks the hint)."""
    for key, value in OmegaConf.to_container(node, resolve=False).items() if node is not None else []:
        full = f"{prefix}{key}"
        if full not in valid:
            near = difflib.get_close_matches(full, sorted(valid), n=1, cutoff=0.5)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise InputError(f"unknown config key {full!r} in {source}{hint}")
        is_section = "." not in full
        if is_section and value is not None and not isinstance(value, dict):
            raise InputError(f"config key {full!r} in {source} must be a mapping of {full}.* keys, "
                             f"not {type(value).__name__}")
        if isinstance(value, dict) and is_section:
            _check_keys(OmegaConf.create(value), valid, source, prefix=full + ".")


def _explain(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None) or ""
    msg = one_line(e.msg if hasattr(e, "msg") else e)
    if "Missing mandatory value" in msg:
        return f"config key {key!r} is required but has no value"
    return f"config key {key!r}: {msg}" if key else msg


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
