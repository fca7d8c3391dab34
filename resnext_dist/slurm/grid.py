"""A sweep's grid: `--sweep KEY=V1,V2` or `--sweep KEY=A:B` specs, their combinations, and each run's name.

    grid = parse_grid(["optim.lr=0.05,0.1", "train.seed=0:3"])   # [("optim.lr", ["0.05", "0.1"]), ("train.seed", ...)]
    points = expand(grid)                                       # [{"optim.lr": "0.05", "train.seed": "0"}, ...]
    name = run_name(points[0])                                  # "lr0.05-seed0": the run's directory and MLflow name
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from typing import Dict, Iterable, List, Tuple, Union

from resnext_dist.config.naming import cut_label
from resnext_dist.errors import InputError

NOT_SWEPT = ("run", "slurm")  # one job array: the same resources and one sweep directory for every run

Grid = List[Tuple[str, List[str]]]


def parse_sweep(spec: str) -> Tuple[str, List[str]]:
    """`KEY=V1,V2,...` or `KEY=START:STOP[:STEP]` (integers, STOP excluded, as Python's range) -> (key, values)."""
    key, values = _parse(spec)
    if isinstance(values, range):
        return key, [str(v) for v in values]  # a range never repeats a value
    seen = set()
    for v in values:  # linear: a set, not a count per value
        if v in seen:
            raise InputError(f"--sweep {key}: value {v} given twice")
        seen.add(v)
    return key, values


def _parse(spec: str) -> Tuple[str, Union[range, List[str]]]:
    """(key, its values: a range, not listed, or the comma-separated texts), the key and each value checked."""
    key, sep, text = spec.partition("=")
    key = key.strip()
    if not sep or not key or not text.strip():
        raise InputError(f"--sweep {spec!r}: expected KEY=V1,V2,... or KEY=START:STOP")
    if key.split(".", 1)[0] in NOT_SWEPT or "." not in key:
        raise InputError(f"--sweep {key}: only model/data/train/optim/... keys can be swept, not {key} "
                         f"(run.* and slurm.* are the same for every run of a sweep)")
    m = re.fullmatch(r"\s*(-?\d+):(-?\d+)(?::(-?\d+))?\s*", text)
    if m:
        start, stop, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        values = range(start, stop, step) if step else range(0)
        if not values:
            raise InputError(f"--sweep {spec}: the range {text} is empty (the end is excluded: 0:3 is 0, 1, 2)")
        return key, values
    values = [v.strip() for v in _split_top_level(text)]
    if any(not v for v in values):
        raise InputError(f"--sweep {spec}: an empty value")
    return key, values


def _split_top_level(text: str) -> List[str]:
    """Split at commas outside brackets: `[1,1,1,1],[2,2,2,2]` is two values."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def parse_grid(specs: Iterable[str], max_runs: int = 0) -> Grid:
    """The grid of `specs`; with `max_runs`, a grid of more runs is refused first, its size counted without
    listing a value (a range's length is arithmetic): `train.seed=0:100000` is refused at once."""
    specs = list(specs)
    if max_runs:
        parsed = [_parse(spec) for spec in specs]
        if grid_size(parsed) > max_runs:
            raise InputError(f"--sweep: {describe_grid(parsed)} is more than --max-runs={max_runs}; pass "
                             f"--max-runs {grid_size(parsed)} to submit them all")
    grid: Grid = []
    for spec in specs:
        key, values = parse_sweep(spec)
        if key in dict(grid):
            raise InputError(f"--sweep {key}: given twice (list all its values in one --sweep)")
        grid.append((key, values))
    return grid


def grid_size(grid) -> int:
    return math.prod(len(values) for _, values in grid)


def expand(grid: Grid) -> List[Dict[str, str]]:
    """Every combination, the first --sweep varying slowest."""
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in grid))]


def describe_grid(grid) -> str:
    """'4 runs (optim.lr x optim.weight_decay = 2 x 2)'."""
    n = grid_size(grid)
    return (f"{n} run{'s' if n != 1 else ''} ({' x '.join(k for k, _ in grid)} = "
            f"{' x '.join(str(len(v)) for _, v in grid)})")


def run_name(values: Dict[str, str]) -> str:
    """A run's name from its values, by the rule of every default run name (config/naming.py's label):
    `lr0.05-wd5e-5`; a label cut to its length ends with a hash of all the values, so it stays the run's own."""
    text, cut = cut_label(values)
    if cut:
        text += "-" + hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
    return text


def run_names(points: List[Dict[str, str]]) -> List[str]:
    names: Dict[str, int] = {}  # name -> its first run: linear in the number of runs
    for i, point in enumerate(points):
        first = names.setdefault(run_name(point), i)
        if first != i:
            raise InputError(f"--sweep: runs {first + 1} and {i + 1} would both be named {run_name(point)} "
                             f"({points[first]} and {point})")
    return list(names)
