"""A sweep directory and the table that compares its runs.

A sweep directory (<run.root>/<sweep name>/) holds `sweep.json` (the grid, the command's config and overrides, each
run's values and directory), one run directory per point, `mlflow_parent.json` (the sweep's MLflow parent run, when
tracking is on) and `summary.json` / `summary.csv`: the runs sorted by best val top-1, rewritten (atomic_write)
whenever someone looks (`submit.py --wait`, `python -m resnext_dist.sweep report`). Results come from each run's
log.jsonl (the run summary the trainer writes, `runlog.summarize`) and DONE marker, the run's own record; no
second copy is kept.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Dict, List, Optional, Tuple

from resnext_dist.errors import InputError
from resnext_dist.files import atomic_write
from resnext_dist.runlog import read_log, summarize
from resnext_dist.run.rundir import read_done

SWEEP_FILE, SUMMARY_JSON, SUMMARY_CSV = "sweep.json", "summary.json", "summary.csv"


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
    """What a run's own files say: best and final val top-1 and epochs done (the run summary of its log.jsonl,
    the DONE marker's epochs over it), and a state (DONE, stopped: trained some and not finished, or not
    started)."""
    try:
        summary = summarize(read_log(os.path.join(run_dir, "log.jsonl")))
        started = True
    except FileNotFoundError:
        summary, started = summarize([]), False
    done = read_done(run_dir)
    state = "DONE" if done is not None else "stopped" if started else "not started"
    return {"best_val_top1": summary["best_val_top1"], "final_val_top1": summary["final_val_top1"],
            "epochs_done": (done or {}).get("epochs_done", summary["epochs_done"]), "state": state}


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
