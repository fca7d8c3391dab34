"""Bench results: one JSON document per bench, a short text table, optional MLflow logging.

Every bench builds its result with `make_report` and ends with `finish`: the table is printed, the JSON is
written (--out FILE, atomically: a temporary file renamed into place), and with --mlflow URI the result
becomes one MLflow run (params = the workload, metrics = the summary and each row's figures, the JSON as an
artifact). `python -m resnext_dist.bench report A.json B.json ...` prints the rows of several results as
one table (the GPU script ends with it).

JSON layout: {"bench", "created", "command", "machine": {...}, "git": {...}, "params": {...},
"rows": [{"measure", "arch", "res", "batch", "precision", "channels_last", "compile", "img_per_s",
"ratio", "data_wait", ...}], "summary": {...}, "notes": [...]}. Figures are plain floats (img/s, fractions);
formatting happens only in the table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import socket
import sys
from typing import Dict, List, Optional, Sequence

import torch

from resnext_dist.bench import BenchError
from resnext_dist.provenance import git_state, package_version

# (key, header, format): the table's columns, in order; a bench shows the ones its rows carry.
COLUMNS = (
    ("bench", "bench", "{}"),
    ("measure", "measure", "{}"),
    ("arch", "arch", "{}"),
    ("res", "res", "{}"),
    ("batch", "batch", "{}"),
    ("precision", "prec", "{}"),
    ("channels_last", "NHWC", "yn"),
    ("compile", "compile", "yn"),
    ("workers", "workers", "{}"),
    ("world_size", "ranks", "{}"),
    ("img_per_s", "img/s", "{:,.1f}"),
    ("wall_img_per_s", "wall img/s", "{:,.1f}"),
    ("per_rank_img_per_s", "img/s/rank", "{:,.1f}"),
    ("ratio", "vs ceiling", "{:.3f}"),
    ("efficiency", "efficiency", "{:.3f}"),
    ("data_wait", "data wait", "{:.1%}"),
)


def add_output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", default="", help="write the result as JSON to this file")
    g.add_argument("--mlflow", default="", metavar="URI", help="also log the result to this MLflow tracking URI")
    g.add_argument("--mlflow-experiment", default="resnext_dist-bench", help="MLflow experiment name")


def machine_info(device: torch.device) -> Dict[str, object]:
    info = {"host": socket.gethostname(), "device": device.type, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda or "none", "ffcv": package_version("ffcv")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def make_report(bench: str, device: torch.device, *, argv: Optional[Sequence[str]], params: Dict,
                rows: List[Dict], summary: Dict, notes: Sequence[str] = ()) -> Dict:
    """`argv`: the subcommand's arguments (None = this process's), recorded as the command that made it."""
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "resnext_dist.bench", bench, *argv])
    return {"bench": bench, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "machine": machine_info(device), "git": git_state(), "params": params,
            "rows": [{"bench": bench, **r} for r in rows], "summary": summary, "notes": list(notes)}


def format_table(rows: List[Dict], title: str = "") -> str:
    """Aligned text: only the columns some row has a value for; None shows as '-'."""
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    if len({r.get("bench") for r in rows}) == 1:  # one kind of bench: its name in every row says nothing
        cols = [c for c in cols if c[0] != "bench"]
    cells = [[h for _, h, _ in cols]]
    for r in rows:
        cells.append([_cell(r.get(k), fmt) for k, _, fmt in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    numeric = [fmt != "{}" and fmt != "yn" for _, _, fmt in cols]
    lines = [title] if title else []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "yn":
        return "yes" if value else "no"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def write_json(path: str, result: Dict) -> None:
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def log_mlflow(uri: str, experiment: str, result: Dict) -> str:
    """One MLflow run per result; returns its id. Requests give up after seconds, not minutes."""
    # MLflow's HTTP defaults (7 retries, 120 s timeout) would hold a finished bench for many minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"bench-{result['bench']}") as run:
        mlflow.set_tags({"bench": result["bench"], "git.commit": result["git"]["commit"],
                         **{f"machine.{k}": str(v) for k, v in result["machine"].items()}})
        mlflow.log_params({k: str(v)[:6000] for k, v in result["params"].items()})
        metrics = {k: float(v) for k, v in result["summary"].items() if isinstance(v, (int, float))}
        for i, row in enumerate(result["rows"]):
            for key in ("img_per_s", "wall_img_per_s", "per_rank_img_per_s", "ratio", "efficiency", "data_wait"):
                if isinstance(row.get(key), (int, float)):
                    metrics[f"row{i}.{key}"] = float(row[key])
        mlflow.log_metrics(metrics)
        mlflow.log_dict(result, f"bench_{result['bench']}.json")
        return run.info.run_id


def finish(result: Dict, args, title: str) -> int:
    """Print the table (and notes), write --out, log to --mlflow; the exit status of the bench."""
    print()
    print(format_table(result["rows"], title))
    for note in result["notes"]:
        print(f"note: {note}")
    for key, value in result["summary"].items():
        print(f"{key}: {_cell(value, '{:.4g}') if isinstance(value, float) else value}")
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    if args.mlflow:
        try:
            run_id = log_mlflow(args.mlflow, args.mlflow_experiment, result)
        except Exception as e:  # the result is already printed and written: say so and fail the command
            print(f"error: MLflow logging to {args.mlflow} failed: {type(e).__name__}: "
                  f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}", file=sys.stderr)
            return 1
        print(f"logged to MLflow {args.mlflow} (experiment {args.mlflow_experiment}, run {run_id})")
    return 0


# ----------------------------------------------------------------------------------------------
# `bench report FILE...`: several results as one table


def load_results(paths: Sequence[str]) -> List[Dict]:
    out = []
    for path in paths:
        try:
            with open(path) as f:
                result = json.load(f)
        except OSError as e:
            raise BenchError(f"{path}: cannot read ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise BenchError(f"{path}: not a bench result (bad JSON: {e.msg}, line {e.lineno})") from None
        if not isinstance(result, dict) or "rows" not in result:
            raise BenchError(f"{path}: not a bench result (no 'rows')")
        out.append(result)
    return out


def run(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m resnext_dist.bench report",
                                description="Print the rows of several bench results (JSON files) as one table.")
    p.add_argument("files", nargs="+", help="JSON files written with --out")
    p.add_argument("--title", default="", help="a line printed above the table")
    args = p.parse_args(argv)
    results = load_results(args.files)
    rows = [row for result in results for row in result["rows"]]
    machines = sorted({r["machine"].get("gpu") or f"cpu x{r['machine'].get('cpu_count')}" for r in results})
    title = args.title or f"resnext_dist bench on {', '.join(machines)}"
    print(format_table(rows, title))
    return 0
