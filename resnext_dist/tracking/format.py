"""Params, tags and metric names in the shape MLflow accepts (its request limits), and one-line error text.

    config_params(cfg)        # {"optim.lr": "0.1", "model.layers": "[3, 4, 6, 3]", ...}, values <= 6000 chars
    metric_key("val/top-1%")  # "val/top-1_"

Params are the flattened resolved config (config.to_flat_dict), values cut to MLflow's 6000 characters; tag
values are cut to 8000. Pure functions: no MLflow import.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, Tuple

from resnext_dist.config import to_flat_dict

# MLflow's request limits (mlflow/utils/validation.py).
METRICS_PER_BATCH = 1000
PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")  # what MLflow accepts in metric names

Point = Tuple[str, float, int, int]  # a metric point as queued and spooled: key, value, timestamp (ms), step


def config_params(cfg) -> Dict[str, str]:
    """The flattened resolved config as MLflow params: nested dicts flattened, values as strings, cut to size."""
    out: Dict[str, str] = {}

    def add(key: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                add(f"{key}.{k}", v)
            return
        text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
        out[key[:MAX_KEY]] = cut(text, MAX_PARAM_VALUE)

    for key, value in to_flat_dict(cfg).items():
        add(key, value)
    return out


def metric_key(key: str) -> str:
    """A name MLflow accepts: bad characters become '_', no empty or path-like parts, at most 250 characters."""
    clean = _BAD_KEY_CHARS.sub("_", str(key)).strip("/") or "_"
    clean = re.sub(r"/+", "/", clean)
    parts = [p if p not in (".", "..") else "_" for p in clean.split("/")]
    return "/".join(parts)[:MAX_KEY]


def cut(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its start with a truncation mark."""
    mark = "...(truncated)"
    return text if len(text) <= limit else text[: limit - len(mark)] + mark
