"""The files tracking keeps in a run dir: mlflow_run.json (which MLflow run) and the outbox (what is unsent).

    recorded_run_id(run_dir, uri)           # run id of an earlier attempt, if recorded for this tracking URI
    write_run_file(run_dir, {"run_id": ..., "tracking_uri": ...})
    header, points, artifacts = read_outbox(path)

<run dir>/mlflow_run.json records the run id as soon as the run exists, which covers a crash before the first
checkpoint (that carries the id otherwise). <run dir>/mlflow_outbox.jsonl holds what close() could not send
within `tracking.close_timeout_s`: a header line (run id, launch id, tracking URI, final status and, if the run
never got them, its params and tags), then one line per metric point and per artifact. It is delivered by the
next attempt of the same run or by `python -m resnext_dist.tracking sync RUN_DIR`. Where several runs left one
in the same run dir, the later ones are named mlflow_outbox-<run>.jsonl. Writes are atomic. No MLflow import.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from typing import Callable, List, Optional, Tuple

from resnext_dist.files import atomic_write
from resnext_dist.tracking.format import Point

log = logging.getLogger(__package__)  # one logger for all of tracking: callers and tests filter on it

RUN_FILE = "mlflow_run.json"
OUTBOX_FILE = "mlflow_outbox.jsonl"


def recorded_run_id(run_dir: str, uri: str) -> Optional[str]:
    """The run id in <run_dir>/mlflow_run.json if it was recorded for `uri`."""
    try:
        with open(os.path.join(run_dir, RUN_FILE)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec.get("run_id") if rec.get("tracking_uri") == uri else None


def write_run_file(run_dir: str, record: dict) -> None:
    atomic_write(os.path.join(run_dir, RUN_FILE), json.dumps(record) + "\n")


def outbox_paths(run_dir: str) -> List[str]:
    """mlflow_outbox.jsonl, and mlflow_outbox-<run>.jsonl where several runs left one in the same run dir."""
    return sorted(glob.glob(os.path.join(glob.escape(run_dir), "mlflow_outbox*.jsonl")))


def read_outbox(path: str):
    """(header, points, artifacts) of an outbox file; (None, [], []) if there is none."""
    try:
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return None, [], []
    if not records:
        return None, [], []
    points = [(r["metric"], float(r["value"]), int(r["timestamp"]), int(r["step"])) for r in records[1:]
              if "metric" in r]
    artifacts = [(r["artifact"], r.get("artifact_path")) for r in records[1:] if "artifact" in r]
    return records[0], points, artifacts


def save_outbox(run_dir: str, header: dict, points: List[Point], artifacts, owns: Callable[[dict], bool],
                name: str) -> Optional[Tuple[str, int, int]]:
    """Write an outbox, merged with the older outboxes `owns` claims (older points first, then removed).

    `name` names a new file when another run's outbox is in the way. Returns (path, points, artifacts) as
    written, or None (after a warning) if it could not be written.
    """
    mine = []  # outboxes of this run that no attempt could deliver yet
    for p in outbox_paths(run_dir):
        old_header, old_points, old_artifacts = read_outbox(p)
        if old_header is not None and owns(old_header):
            mine.append(p)
            points, artifacts = old_points + points, old_artifacts + artifacts
    path = mine[0] if mine else os.path.join(run_dir, OUTBOX_FILE)
    if os.path.exists(path) and not mine:  # another run's (e.g. after resume=never): leave it alone
        path = os.path.join(run_dir, f"mlflow_outbox-{name}.jsonl")
    lines = [json.dumps(header)]
    lines += [json.dumps({"metric": k, "value": v, "timestamp": t, "step": s}) for k, v, t, s in points]
    lines += [json.dumps({"artifact": p, "artifact_path": a}) for p, a in artifacts]
    try:
        atomic_write(path, "\n".join(lines) + "\n")
        for extra in mine[1:]:
            os.remove(extra)
    except OSError as e:
        log.warning("could not write %s: %s", path, e)
        return None
    return path, len(points), len(artifacts)
