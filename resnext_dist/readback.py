"""What we wrote, read back: a JSON value from a file of the run directory (log.jsonl lines, DONE, mlflow_run.json,
the lock's lease, a checkpoint's lineage) is trusted only once it has the shape we write: `check(value, FIELDS)`
says what is wrong with it (a field of the wrong type, out of range, too long), or None.

    DONE = {"step": count, "epochs_done": count}
    problem = check(json.loads(text), DONE, required=("step",))     # "epochs_done is '1', not an integer"

A rule takes a value and returns what is wrong with it, or None (as config/rules.py's). Written by hand rather than
with pydantic: the readers include the bench's GPU host, which has torch and little else.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from resnext_dist.files import NotRegularFile, open_regular

Rule = Callable[[Any], Optional[str]]

MAX_COUNT = 2**62  # steps, epochs, offsets: beyond any run, within every integer type they reach
NOT_REGULAR = "not a regular file"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def count(v: Any) -> Optional[str]:
    """A non-negative integer (a step, an epoch, a byte offset)."""
    return None if _is_int(v) and 0 <= v <= MAX_COUNT else _not(v, f"an integer in [0, {MAX_COUNT}]")


def number(v: Any) -> Optional[str]:
    """A metric: an int or a float (NaN and infinity included: a diverged loss is a fact worth keeping)."""
    return None if _is_int(v) or isinstance(v, float) else _not(v, "a number")


def timestamp(v: Any) -> Optional[str]:
    """Seconds since the epoch, finite and not negative."""
    ok = (_is_int(v) or isinstance(v, float)) and math.isfinite(v) and 0 <= v < 2**40
    return None if ok else _not(v, "a time in seconds")


def text(limit: int = 4096) -> Rule:
    return lambda v: None if isinstance(v, str) and len(v) <= limit else _not(v, f"a string of at most {limit} "
                                                                                 f"characters")


def one_of(choices: Iterable[str]) -> Rule:
    choices = tuple(choices)
    return lambda v: None if isinstance(v, str) and v in choices else _not(v, f"one of {', '.join(choices)}")


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


def list_of(rule: Rule, limit: int = 10_000) -> Rule:
    def check_list(v):
        if not isinstance(v, list) or len(v) > limit:
            return _not(v, f"a list of at most {limit} items")
        return next((_at(f"item {i}", p) for i, p in ((i, rule(x)) for i, x in enumerate(v)) if p), None)
    return check_list


def pair(first: Rule, second: Rule) -> Rule:
    def check_pair(v):
        if not isinstance(v, list) or len(v) != 2:
            return _not(v, "a pair")
        return first(v[0]) or second(v[1])
    return check_pair


def dict_of(value: Rule, limit: int = 10_000, key_limit: int = 250) -> Rule:
    def check_dict(v):
        if not isinstance(v, dict) or len(v) > limit:
            return _not(v, f"a mapping of at most {limit} entries")
        for k, x in v.items():
            problem = text(key_limit)(k)
            if problem:
                return f"a key {problem}"
            problem = value(x)
            if problem:
                return _at(k[:40], problem)
        return None
    return check_dict


def check(value: Any, fields: Dict[str, Rule], required: Iterable[str] = ()) -> Optional[str]:
    """What is wrong with `value` as an object of `fields` (each present one follows its rule; `required` ones are
    there; others are let through), or None."""
    if not isinstance(value, dict):
        return _not(value, "a JSON object")
    missing = [k for k in required if k not in value]
    if missing:
        return f"no {missing[0]}"
    for key, rule in fields.items():
        if key in value:
            problem = rule(value[key])
            if problem:
                return _at(key, problem)
    return None


def read_regular(path: str, limit: int) -> Tuple[Optional[bytes], str]:
    """(content, "") of a small regular file; (None, "") when it does not exist; (None, why) when it is not a
    regular file (files.open_regular: never waited on), cannot be read, or is larger than `limit` bytes."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                return None, f"{size} bytes, more than the {limit} we ever write"
            return f.read(limit + 1), ""
    except FileNotFoundError:
        return None, ""
    except NotRegularFile:
        return None, NOT_REGULAR
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"


def _at(name: str, problem: str) -> str:
    """`problem` of the field or item `name`: "epoch is '1', not ...", or "hwm: loss is '3', not ..." deeper."""
    return f"{name} {problem}" if problem.startswith("is ") else f"{name}: {problem}"


def _not(v: Any, what: str) -> str:
    return f"is {_short(v)}, not {what}"


def _short(v: Any) -> str:
    text_ = repr(v)
    return text_ if len(text_) <= 40 else text_[:37] + "..."
