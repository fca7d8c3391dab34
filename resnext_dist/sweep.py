"""A sweep: a grid of config values, one run directory per point, and the table that compares them.

    grid = parse_grid(["optim.lr=0.05,0.1", "train.seed=0:3"])   # [("optim.lr", ["0.05", "0.1"]), ("train.seed", [...])]
    points = expand(grid)                                       # [{"optim.lr": "0.05", "train.seed": "0"}, ...]
    name = run_name(points[0])                                  # "lr=0.05,seed=0": the run's directory and MLflow name
    python -m resnext_dist.sweep report SWEEP_DIR               # the table again, from the run directories alone

A sweep directory (<run.root>/<sweep name>/) holds `sweep.json` (the grid, the command's config and overrides, each
run's values and directory), one run directory per point, `mlflow_parent.json` (the sweep's MLflow parent run, when
tracking is on) and `summary.json` / `summary.csv`: the runs sorted by best val top-1, rewritten (atomic_write)
whenever someone looks (`submit.py --wait`, `report`). Results come from each run's log.jsonl and DONE marker, the
run's own record; no second copy is kept. Submitting the sweep is slurm_sweep.py.
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import re
import sys
from typing import Dict, Iterable, List, Optional, Tuple

from resnext_dist.errors import InputError
from resnext_dist.files import atomic_write
from resnext_dist.rundir import read_done
from resnext_dist.runlog import read_log

SWEEP_FILE, SUMMARY_JSON, SUMMARY_CSV = "sweep.json", "summary.json", "summary.csv"
NOT_SWEPT = ("run", "slurm")  # one job array: the same resources and one sweep directory for every run

Grid = List[Tuple[str, List[str]]]


# ----------------------------------------------------------------------------------------------
# The grid


def parse_sweep(spec: str) -> Tuple[str, List[str]]:
    """`KEY=V1,V2,...` or `KEY=START:STOP[:STEP]` (integers, STOP excluded, as Python's range) -> (key, values)."""
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
        values = [str(v) for v in range(start, stop, step)] if step else []
        if not values:
            raise InputError(f"--sweep {spec}: the range {text} is empty (the end is excluded: 0:3 is 0, 1, 2)")
    else:
        values = [v.strip() for v in _split_top_level(text)]
        if any(not v for v in values):
            raise InputError(f"--sweep {spec}: an empty value")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise InputError(f"--sweep {key}: value {twice[0]} given twice")
    return key, values


def _split_top_level(text: str) -> List[str]:
    """Split at commas outside brackets: `[1,1,1,1],[2,2,2,2]` is two values."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts, cur = parts + [cur], ""
        else:
            cur += ch
    return parts + [cur]


def parse_grid(specs: Iterable[str]) -> Grid:
    grid: Grid = []
    for spec in specs:
        key, values = parse_sweep(spec)
        if key in dict(grid):
            raise InputError(f"--sweep {key}: given twice (list all its values in one --sweep)")
        grid.append((key, values))
    return grid


def expand(grid: Grid) -> List[Dict[str, str]]:
    """Every combination, the first --sweep varying slowest."""
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in grid))]


def describe_grid(grid: Grid) -> str:
    """'4 runs (optim.lr x optim.weight_decay = 2 x 2)'."""
    n = len(expand(grid))
    return (f"{n} run{'s' if n != 1 else ''} ({' x '.join(k for k, _ in grid)} = "
            f"{' x '.join(str(len(v)) for _, v in grid)})")


def run_name(values: Dict[str, str]) -> str:
    """A run's name from its values: `lr=0.05,weight_decay=5e-5` (the keys' last part, unless two share it)."""
    short = [k.rsplit(".", 1)[-1] for k in values]
    names = short if len(set(short)) == len(short) else list(values)
    text = ",".join(f"{n}={v}" for n, v in zip(names, values.values()))
    return re.sub(r"[^\w.,=+-]", "_", text)


def run_names(points: List[Dict[str, str]]) -> List[str]:
    names = [run_name(p) for p in points]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise InputError(f"--sweep: runs {names.index(name) + 1} and {i + 1} would both be named {name} "
                             f"({points[names.index(name)]} and {points[i]})")
    return names


# ----------------------------------------------------------------------------------------------
# The sweep directory


def write_sweep(sweep_dir: str, record: dict) -> None:
    os.makedirs(sweep_dir, exist_ok=True)
    atomic_write(os.path.join(sweep_dir, SWEEP_FILE), json.dumps(record, indent=1) + "\n")


def read_sweep(sweep_dir: str) -> Optional[dict]:
    """sweep.json, or None where there is none; InputError when it is not one."""
    path = os.path.join(sweep_dir, SWEEP_FILE)
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable sweep file ({type(e).__name__})") from None
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
        raise InputError(f"{path}: not a sweep file (no list of runs)")
    return record


def run_result(run_dir: str) -> dict:
    """What a run's own files say: best and final val top-1, epochs done, and a state (DONE, stopped: trained
    some and not finished, or not started)."""
    evals, epochs = [], 0
    try:
        for r in read_log(os.path.join(run_dir, "log.jsonl")):
            if r.get("kind") == "epoch":
                epochs = max(epochs, int(r.get("epoch", 0)) + 1)
                if isinstance(r.get("val_top1"), (int, float)):
                    evals.append(r["val_top1"])
        started = True
    except FileNotFoundError:
        started = False
    done = read_done(run_dir)
    if done:
        epochs = done.get("epochs_done", epochs)
    state = "DONE" if done is not None else "stopped" if started else "not started"
    return {"best_val_top1": max(evals) if evals else None, "final_val_top1": evals[-1] if evals else None,
            "epochs_done": epochs, "state": state}


def rows(sweep_dir: str, record: dict, states: Optional[Dict[str, str]] = None) -> List[dict]:
    """One row per run, best val top-1 first (runs without one last, in grid order). `states`: what Slurm says
    of runs that are not DONE (RUNNING, PENDING, FAILED, ...), by run name."""
    out = []
    for i, run in enumerate(record["runs"]):
        result = run_result(os.path.join(sweep_dir, run["name"]))
        if result["state"] != "DONE" and states and run["name"] in states:
            result["state"] = states[run["name"]]
        out.append({"index": i + 1, "run": run["name"], "values": run["values"], **result})
    return sorted(out, key=lambda r: (r["best_val_top1"] is None, -(r["best_val_top1"] or 0), r["index"]))


def write_summary(sweep_dir: str, table_rows: List[dict]) -> None:
    """summary.json and summary.csv (one column per swept key), atomically."""
    atomic_write(os.path.join(sweep_dir, SUMMARY_JSON), json.dumps(table_rows, indent=1) + "\n")
    keys = list(table_rows[0]["values"]) if table_rows else []
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(keys + ["best_val_top1", "final_val_top1", "epochs_done", "state", "run"])
    for r in table_rows:
        w.writerow([r["values"][k] for k in keys] + [_num(r["best_val_top1"]), _num(r["final_val_top1"]),
                                                     r["epochs_done"], r["state"], r["run"]])
    atomic_write(os.path.join(sweep_dir, SUMMARY_CSV), text.getvalue())


def _num(v) -> str:
    return "" if v is None else f"{v:.6f}"


def table(table_rows: List[dict]) -> str:
    """The runs as an aligned text table, in the order given."""
    keys = list(table_rows[0]["values"]) if table_rows else []
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    head = keys + ["best top-1", "final top-1", "epochs", "state"]
    body = [[r["values"][k] for k in keys] + [pct(r["best_val_top1"]), pct(r["final_val_top1"]),
                                              str(r["epochs_done"]), r["state"]] for r in table_rows]
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head] + body)


def report(sweep_dir: str, states: Optional[Dict[str, str]] = None) -> Tuple[str, List[dict]]:
    """Refresh summary.json/csv from the run directories; (the table, its rows)."""
    record = read_sweep(sweep_dir)
    if record is None:
        raise InputError(f"{sweep_dir}: not a sweep directory (no {SWEEP_FILE})")
    table_rows = rows(sweep_dir, record, states)
    write_summary(sweep_dir, table_rows)
    return table(table_rows), table_rows


# ----------------------------------------------------------------------------------------------
# CLI: python -m resnext_dist.sweep report SWEEP_DIR


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnext_dist.sweep",
                                     description="The runs of a sweep (launch/submit.py --sweep), best val top-1 "
                                                 "first; refreshes the sweep's summary.json and summary.csv")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("report", help="print the table of a sweep's runs").add_argument("sweep_dir")
    args = parser.parse_args(argv)
    try:
        text, _ = report(args.sweep_dir)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
