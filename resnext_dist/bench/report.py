"""Bench results: one JSON document per bench, a short text table, optional MLflow logging.

Every bench ends with `finish(...)`: the table is printed, the JSON written (--out FILE) and with
--mlflow URI logged as one MLflow run (tags = the machine, params, metrics = the summary and each row's figures,
the JSON as an artifact). JSON: {"bench", "created", "command", "machine" (provenance tags, cores, threads),
"params", "rows": [{"measure", "arch", "res", "img_per_s", "ratio", "data_wait", ...}], "summary", "notes"}.
`python -m resnext_dist.bench report A.json B.json ...` prints the rows of several results as one table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from typing import Dict, List, Optional, Sequence

import torch

from resnext_dist import tracking
from resnext_dist.dist import DistInfo
from resnext_dist.errors import InputError, one_line
from resnext_dist.files import atomic_write
from resnext_dist.tracking.provenance import provenance_tags

# (key, header, format): the table's columns, in order; a table shows the ones its rows carry.
COLUMNS = (("bench", "bench", "{}"), ("measure", "measure", "{}"), ("arch", "arch", "{}"), ("res", "res", "{}"),
           ("batch", "batch", "{}"), ("precision", "prec", "{}"), ("channels_last", "NHWC", "yn"),
           ("compile", "compile", "yn"), ("workers", "workers", "{}"), ("cores", "cores", "{}"),
           ("world_size", "ranks", "{}"),
           ("img_per_s", "img/s", "{:,.1f}"), ("wall_img_per_s", "wall img/s", "{:,.1f}"),
           ("per_rank_img_per_s", "img/s/rank", "{:,.1f}"), ("ratio", "vs ceiling", "{:.3f}"),
           ("efficiency", "efficiency", "{:.3f}"), ("data_wait", "data wait", "{:.1%}"),
           ("img_per_s_per_core", "img/s/core", "{:,.1f}"), ("device_ms_per_image", "device ms/img", "{:.3f}"),
           ("peak_mem_mb", "peak MiB", "{:,.0f}"), ("read_mb_per_image", "MB read/img", "{:.3f}"),
           ("build_s", "build s", "{:.1f}"), ("cgroup_peak_mb", "cgroup peak MiB", "{:,.0f}"),
           ("jpeg_kb", "JPEG KB", "{:.1f}"), ("host_ms", "host ms/batch", "{:.2f}"), ("ops", "ops/batch", "{}"),
           ("decode_ms", "decode ms/batch", "{:.1f}"), ("device_ms", "device ms/batch", "{:.1f}"),
           ("ms_per_batch", "ms/batch", "{:,.1f}"), ("vs_per_image_call", "vs per-image calls", "{:.2f}"))
ROW_METRICS = ("img_per_s", "wall_img_per_s", "per_rank_img_per_s", "ratio", "efficiency", "data_wait")


def machine_info(device: torch.device) -> Dict[str, object]:
    """The trainer's provenance tags (git, versions, host, GPU) and the cores and threads a bench ran with."""
    tags = {k: v for k, v in provenance_tags(DistInfo(device=device)).items() if not k.startswith("mlflow.")}
    return {**tags, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            **({"gpu_count": torch.cuda.device_count()} if device.type == "cuda" else {})}


def format_table(rows: List[Dict], title: str = "") -> str:
    """Aligned text: only the columns some row has a value for; None shows as '-'."""
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    if len({r.get("bench") for r in rows}) == 1:  # one kind of bench: its name in every row says nothing
        cols = [c for c in cols if c[0] != "bench"]
    cells = [[h for _, h, _ in cols]] + [[_cell(r.get(k), fmt) for k, _, fmt in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    numeric = [fmt not in ("{}", "yn") for _, _, fmt in cols]
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


def log_result(uri: str, experiment: str, result: Dict) -> str:
    """One tracked run per result (tracking.log_result); returns its id."""
    metrics = {k: float(v) for k, v in result["summary"].items() if isinstance(v, (int, float))}
    metrics.update({f"row{i}.{key}": float(row[key]) for i, row in enumerate(result["rows"])
                    for key in ROW_METRICS if isinstance(row.get(key), (int, float))})
    return tracking.log_result(uri, experiment, f"bench-{result['bench']}",
                               tags={"bench": result["bench"], **{k: str(v) for k, v in result["machine"].items()}},
                               params={k: str(v) for k, v in result["params"].items()}, metrics=metrics,
                               document=result, document_name=f"bench_{result['bench']}.json")


def finish(bench: str, device: torch.device, args, argv: Optional[Sequence[str]], *, title: str, params: Dict,
           rows: List[Dict], summary: Dict, notes: Sequence[str] = ()) -> int:
    """Make the result, print its table, notes and summary, write --out, log to --mlflow; the exit status.
    `argv`: the subcommand's arguments (None = this process's), recorded as the command that made it."""
    argv = sys.argv[1:] if argv is None else argv
    result = {"bench": bench, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(["python", "-m", "resnext_dist.bench", bench, *argv]),
              "machine": machine_info(device), "params": {"config": args.config, "overrides": args.overrides, **params},
              "rows": [{"bench": bench, **r} for r in rows], "summary": summary, "notes": list(notes)}
    print()
    print(format_table(result["rows"], title))
    for note in notes:
        print(f"note: {note}")
    for key, value in summary.items():
        print(f"{key}: {_cell(value, '{:.4g}') if isinstance(value, float) else value}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write(args.out, json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    if args.mlflow:
        try:
            run_id = log_result(args.mlflow, args.mlflow_experiment, result)
        except Exception as e:  # the result is already printed and written: say so and fail the command
            print(f"error: MLflow logging to {args.mlflow} failed: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
            return 1
        print(f"logged to MLflow {args.mlflow} (experiment {args.mlflow_experiment}, run {run_id})")
    return 0


def load_results(paths: Sequence[str]) -> List[Dict]:
    out = []
    for path in paths:
        try:
            with open(path) as f:
                result = json.load(f)
        except OSError as e:
            raise InputError(f"{path}: cannot read ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not a bench result (bad JSON: {e.msg}, line {e.lineno})") from None
        if not isinstance(result, dict) or "rows" not in result:
            raise InputError(f"{path}: not a bench result (no 'rows')")
        out.append(result)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resnext_dist.bench report",
                                description="Print the rows of several bench results (JSON files) as one table.")
    p.add_argument("files", nargs="+", help="JSON files written with --out")
    p.add_argument("--title", default="", help="a line printed above the table")
    return p


def run(argv=None) -> int:
    args = parser().parse_args(argv)
    results = load_results(args.files)
    machines = sorted({r["machine"].get("gpu") or f"cpu x{r['machine'].get('cpu_count')}" for r in results})
    print(format_table([row for r in results for row in r["rows"]],
                       args.title or f"resnext_dist bench on {', '.join(machines)}"))
    return 0
