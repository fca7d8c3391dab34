"""The default run name: `<recipe>-<what differs from the recipe>-<identity hash>`, e.g.
`quickstart-lr0.2-gbs64-3f2a1c4d`. One rule whatever launches the run (train, launch/quickstart.py, launch/submit.py:
they all load the config through load.py, which calls run_name_for; a sweep names its runs by the same label).

What differs: the identity keys (identity.py) whose value is not the recipe's, short (a key's last part, or its
words' initials: optim.global_batch_size -> gbs), each with its value (a path by its last part), in the schema's
order. A key whose value follows from the others (checks.follow_data fills it the same way when it is left out:
data.loader=auto, model.num_classes=0) is not named: the data that decided it is. The hash keeps the name unique
and the same command finding the same run (the label is cut to MAX_LABEL characters, the hash never is). Names
hold only [A-Za-z0-9._=+-]: a directory name on any filesystem and an MLflow run name as typed.
"""
from __future__ import annotations

import copy
import os
import re
from typing import Any, Dict, List, Tuple

from resnext_dist.config.checks import follow_data
from resnext_dist.config.identity import identity_hash, identity_keys, norm
from resnext_dist.config.schema import TrainConfig, declared_keys, get_key
from resnext_dist.errors import InputError

MAX_VALUE, MAX_LABEL = 20, 48  # characters of one value, and of the whole label between recipe and hash


def run_name_for(stem: str, recipe: TrainConfig, chosen: TrainConfig) -> str:
    """The default name of a run of `chosen` (the recipe's config with the command line's overrides, the data not
    followed yet), `recipe` the config without them; InputError as follow_data raises it for `chosen`."""
    followed = _followed(chosen)
    try:
        recipe = _followed(recipe)
    except InputError:  # the recipe's own data is not there (the command line names other data): compare as written
        pass
    changed = [k for k in _identity_order(chosen)
               if norm(get_key(recipe, k)) != norm(get_key(followed, k)) and not _follows(k, chosen, followed)]
    return "-".join(filter(None, (stem, label({k: get_key(followed, k) for k in changed}),
                                  identity_hash(followed))))


def label(values: Dict[str, Any]) -> str:
    """`lr0.2-gbs64-train_shapes`: each key's short name and its value, joined by '-', cut to MAX_LABEL characters
    (whole parts; a trailing `+N` says how many more keys differ)."""
    return cut_label(values)[0]


def cut_label(values: Dict[str, Any]) -> Tuple[str, bool]:
    """(label, whether keys were left out to keep it short)."""
    parts = [name + _joined(_value(v)) for name, v in zip(short_names(list(values)), values.values())]
    kept: List[str] = []
    for i, part in enumerate(parts):
        more = f"+{len(parts) - i}" if i < len(parts) - 1 else ""  # room for it, unless this is the last part
        if len("-".join(kept + [part])) + len(more) > MAX_LABEL:
            return "-".join(kept) + f"+{len(parts) - i}", True
        kept.append(part)
    return "-".join(kept), False


def short_names(keys: List[str]) -> List[str]:
    """The shortest of (the last part's initials when it has words, else the last part), the last part, the whole
    key, that tells these keys apart."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    for names in ([("".join(w[0] for w in p.split("_") if w) if "_" in p else p) for p in last], last,
                  [k.replace(".", "_") for k in keys]):
        if len(set(names)) == len(names):
            return [safe(n) for n in names]
    return [safe(k) for k in keys]


def safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


def _value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        text = "x".join(str(x) for x in v)  # [1,1,2,1] -> 1x1x2x1
    elif isinstance(v, str) and ("/" in v or os.sep in v):
        text = os.path.splitext(os.path.basename(v.rstrip("/" + os.sep)))[0]  # a path by its last part
    else:
        text = str(v)
    return safe(text)[:MAX_VALUE]


def _joined(value: str) -> str:
    """A number follows its name (lr0.2); a word is set off by '_' (arch_resnext101)."""
    return value if re.match(r"[0-9.+-]", value) else "_" + value


def _identity_order(cfg: TrainConfig) -> List[str]:
    keep = identity_keys(cfg)
    return [name for name, _ in declared_keys(cfg) if name in keep]


def _followed(cfg: TrainConfig) -> TrainConfig:
    cfg = copy.deepcopy(cfg)
    follow_data(cfg)
    return cfg


def _follows(key: str, chosen: TrainConfig, followed: TrainConfig) -> bool:
    """Whether follow_data gives `key` its value from the rest of `chosen` (the key at its default)."""
    default = get_key(type(chosen)(), key)
    probe = copy.deepcopy(chosen)
    section, leaf = key.split(".")
    setattr(getattr(probe, section), leaf, copy.deepcopy(default))
    try:
        follow_data(probe)
    except InputError:  # left out, the key could not be filled in: it is the user's choice
        return False
    return norm(get_key(probe, key)) == norm(get_key(followed, key)) != norm(default)

