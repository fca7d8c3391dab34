"""log.jsonl -> one MLflow run, from a cursor: what the Tracker's thread and `sync` (__main__.py) both run.

The cursor, <run dir>/mlflow_run.json, holds the MLflow run id and URI, `start` (where the run's records begin in
log.jsonl), `offset` (up to where MLflow holds them) and `hwm` (each metric's highest step sent); what `sync` needs
to create the run (experiment, name, tags); the `artifacts` asked for and not uploaded yet, and the `model` asked
for (mlflow_model.py); a `stale` run to end; and, after a close that timed out, the final `status`. It is saved
(atomic_write) after each stored batch, so a process killed at any moment resends at most one batch, and a resent
batch is the same batch (timestamps are the records' `time`), which MLflow's store keeps once. No step twice: a
point (key, step) is sent only if `step` is above `hwm[key]` (a resumed attempt repeats the steps after its
checkpoint: the first values stay). MlflowClient.log_batch itself splits a batch to MLflow's request limits.

A cursor is trusted only with the shape we write (CURSOR; `read_cursor` says what is wrong otherwise). One that is
broken or lost is rebuilt (`new_cursor`): the run's records from its start in log.jsonl (`run_start`: the
`tracked` event the mirror writes when it creates or reopens a run names the run and where its records begin),
the same hwm rule making the replay send exactly what was sent before, which MLflow keeps once. The cursor of a
store other than the config's (`sync --uri`, or the store an earlier attempt used) is `mlflow_run-<hash>.json`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import uuid
from typing import Dict, List, Optional, Tuple

from resnext_dist.files import atomic_write
from resnext_dist.readback import (check, count, dict_of, list_of, one_of, optional, pair, read_regular, text)
from resnext_dist.runlog import RunLog, scan
from resnext_dist.tracking.mlflow_model import request_rule, send_model
from resnext_dist.tracking.mlflow_store import MAX_TAG_VALUE, cut, experiment_id, is_permanent, metric_key

log = logging.getLogger(__package__)
RUN_FILE, BATCH = "mlflow_run.json", 1000  # metric points per stored batch (one cursor move)
STATUSES = ("FINISHED", "FAILED", "KILLED")
MAX_CURSOR_BYTES = 16 << 20


def run_id_rule(v) -> Optional[str]:
    """An MLflow run id as stores make them (32 hex digits; letters, digits, - and _ elsewhere)."""
    return None if isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", v) else f"is {v!r:.40}, not a run id"


CURSOR = {"run_id": optional(run_id_rule), "tracking_uri": text(4096), "experiment": text(1000),
          "run_name": optional(text(1000)), "launch_id": text(64), "start": count, "offset": count,
          "hwm": dict_of(count), "artifacts": list_of(pair(text(4096), optional(text(1000)))),
          "tags": dict_of(text(MAX_TAG_VALUE), limit=1000), "constants": list_of(text(250)),
          "stale": optional(pair(run_id_rule, optional(one_of(STATUSES)))), "status": optional(one_of(STATUSES)),
          "artifact_location": optional(text(4096)), "model": optional(request_rule)}
REQUIRED = ("run_id", "tracking_uri", "experiment", "launch_id", "start", "offset")


def cursor_file(run_dir: str, uri: Optional[str] = None) -> str:
    """The cursor of the config's store (uri None), or of the store at `uri`."""
    name = RUN_FILE if uri is None else f"mlflow_run-{hashlib.sha256(uri.encode()).hexdigest()[:12]}.json"
    return os.path.join(run_dir, name)


def log_path(run_dir: str) -> str:
    return os.path.join(run_dir, "log.jsonl")


def read_cursor(run_dir: str, path: Optional[str] = None) -> Tuple[Optional[dict], str]:
    """(cursor, "") as we wrote it; (None, "") when there is none; (None, what is wrong) for one of another shape
    (types, ranges, an offset beyond log.jsonl's end)."""
    path = path or cursor_file(run_dir)
    data, problem = read_regular(path, MAX_CURSOR_BYTES)
    if data is None:
        return None, problem and f"{path}: {problem}"
    try:
        rec = json.loads(data)
        problem = check(rec, CURSOR, REQUIRED)
    except (ValueError, RecursionError):
        problem = "not JSON"
    if not problem:
        size = os.path.getsize(log_path(run_dir)) if os.path.exists(log_path(run_dir)) else 0
        if not rec["start"] <= rec["offset"] <= size:
            problem = f"offsets {rec['start']}..{rec['offset']} outside log.jsonl's {size} bytes"
    return (None, f"{path}: {problem}") if problem else (rec, "")


def run_start(run_dir: str, uri: str, run_id: Optional[str] = None) -> Tuple[Optional[str], int]:
    """(MLflow run id or the `run_id` given, offset in log.jsonl where the run's records begin): the newest
    `tracked` event of the store at `uri` (of `run_id`, if given) says both; else the run began at its newest
    fresh start record (one not resumed from a checkpoint), or at 0."""
    found, fresh, begin = None, 0, 0
    if os.path.exists(log_path(run_dir)):
        for end, r, _ in scan(log_path(run_dir)):
            if r and r["kind"] == "start" and r.get("resumed_from") is None:
                fresh = begin
            elif r and r.get("event") == "tracked" and r.get("tracking_uri") == uri and not run_id_rule(
                    r.get("run_id")) and run_id in (None, r["run_id"]) and not count(r.get("start")) and \
                    r["start"] <= begin:
                found = (r["run_id"], r["start"])
            begin = end
    return found or (run_id, fresh)


def new_cursor(run_dir: str, uri: str, experiment: str, run_name: Optional[str], run_id: Optional[str],
               start: int, **fields) -> dict:
    """A cursor from `start` on (nothing sent yet, as far as it knows: the replay is idempotent)."""
    return {"run_id": run_id, "tracking_uri": uri, "experiment": experiment, "run_name": run_name,
            "launch_id": uuid.uuid4().hex, "start": start, "offset": start, "hwm": {}, "artifacts": [],
            "stale": None, "status": None, "model": None, **fields}


class Mirror:
    """Sends the log after the cursor to the cursor's run; creates (or reopens) that run first."""

    def __init__(self, client, run_dir: str, rec: dict, params: Dict[str, str], path: Optional[str] = None):
        self.client, self.run_dir, self.rec, self.params = client, run_dir, rec, params
        self.path = path or cursor_file(run_dir)
        self.ready, self._lock = False, threading.RLock()

    @property
    def run_id(self) -> Optional[str]:
        return self.rec.get("run_id")

    def save(self, **fields) -> None:
        with self._lock:  # the trainer's thread (log_artifact, close) and the tracker's both save
            self.rec.update(fields)
            atomic_write(self.path, json.dumps(self.rec) + "\n")

    def get_run(self, run_id: str):
        """The run, or None when MLflow says it does not exist; transient errors raise (the caller retries)."""
        try:
            return self.client.get_run(run_id)
        except Exception as e:
            if not is_permanent(e):
                raise
            return None

    def event(self, **fields) -> None:
        """One event line in log.jsonl (one append of one line: lines stay whole beside the trainer's); a log that
        cannot take it (a read-only run directory being synced) costs the line only."""
        try:
            events = RunLog(log_path(self.run_dir))
            events.write("event", 0, **fields)
            events.close()
        except OSError as e:
            log.warning("log.jsonl: event %s not written (%s)", fields.get("event"), e.strerror or e)

    def setup(self, reopen: bool) -> None:
        """The run exists with its params and tags; `reopen`: an earlier attempt's run, made RUNNING again. A run
        this run dir tracked before (`stale`: its trainer is gone, a new run starts here) is ended if still RUNNING."""
        if self.ready:
            return
        if self.rec.get("stale"):
            old_id, status = self.rec["stale"][0], self.rec["stale"][1] or "KILLED"
            old = self.get_run(old_id)
            if old is not None and old.info.status == "RUNNING":
                self.client.set_terminated(old_id, status)
                self.event(event="mlflow_run_closed", run_id=old_id, status=status,
                           why="its trainer is gone; this run dir tracks a new run")
                log.warning("MLflow run %s was still RUNNING without a trainer; marked %s", old_id, status)
            self.save(stale=None)
        run = self.get_run(self.run_id) if self.run_id else None
        if self.run_id and (run is None or run.info.lifecycle_stage == "deleted"):
            log.warning("MLflow run %s is gone from %s; starting a new run", self.run_id, self.rec["tracking_uri"])
            self.rec["run_id"], run = None, None
        if run is None:
            self._create()
        elif reopen:
            self.client.update_run(self.run_id, status="RUNNING")
            attempt, have = int(run.data.tags.get("attempt") or 1) + 1, run.data.params
            changed = {k: v for k, v in self.params.items() if k in have and have[k] != v}
            tags = dict(self.rec.get("tags", {}), attempt=str(attempt))
            if changed:
                log.warning("config changed on resume (%s); MLflow params keep the first values, the new ones are in "
                            "the tag 'changed_on_attempt_%d'", ", ".join(sorted(changed)), attempt)
                tags[f"changed_on_attempt_{attempt}"] = json.dumps(changed)
            self._log(params={k: v for k, v in self.params.items() if k not in have}, tags=tags)
        how = "created" if run is None else "reopened" if reopen else "found"
        if how != "found":  # what a rebuilt cursor reads back: this run, and where its records begin
            self.event(event="tracked", run_id=self.run_id, tracking_uri=self.rec["tracking_uri"],
                       start=self.rec["start"], how=how)
        log.info("MLflow run %s %s (%s)", self.run_id, how, self.rec["tracking_uri"])
        self.ready = True

    def _create(self) -> None:
        c, rec = self.client, self.rec
        exp_id = experiment_id(c, rec["experiment"], rec.get("artifact_location"))
        # A create whose answer was lost (timeout) may have made the run: find it by this launch's tag.
        found = c.search_runs([exp_id], f"tags.launch_id = '{rec['launch_id']}'", max_results=1)
        tags = {k: cut(v, MAX_TAG_VALUE) for k, v in rec.get("tags", {}).items()}
        self.save(run_id=found[0].info.run_id if found else c.create_run(
            exp_id, run_name=rec.get("run_name"), tags=dict(tags, launch_id=rec["launch_id"], attempt="1")
        ).info.run_id)
        self._log(params=self.params)

    def _log(self, metrics=(), params: Dict[str, str] = None, tags: Dict[str, str] = None) -> None:
        from mlflow.entities import Metric, Param, RunTag  # mlflow only where a store is talked to (loaded by now)
        self.client.log_batch(self.run_id, [Metric(*m) for m in metrics],
                              [Param(k, v) for k, v in (params or {}).items()],
                              [RunTag(k, cut(v, MAX_TAG_VALUE)) for k, v in (tags or {}).items()])

    def send_new(self, stop: Optional[threading.Event] = None) -> int:
        """Send the complete lines after the cursor, batch by batch, moving the cursor (and `hwm`, each key's
        highest step sent) after each stored batch. Returns the number of metric points sent."""
        hwm, metrics, tags, sent, end = dict(self.rec.get("hwm", {})), [], {}, 0, self.rec["offset"]
        for (m, t), end in self._read(end, hwm):
            metrics += m
            tags.update(t)
            if len(metrics) >= BATCH:
                sent, metrics, tags = sent + self._send(metrics, tags, hwm, end), [], {}
                if stop is not None and stop.is_set():
                    return sent
        return sent + (self._send(metrics, tags, hwm, end) if end != self.rec["offset"] else 0)

    def _send(self, metrics: list, tags: dict, hwm: Dict[str, int], end: int) -> int:
        try:
            self._log(metrics, tags=tags)
        except Exception as e:
            if not is_permanent(e):
                raise
            log.warning("MLflow refused %d metric points (%s); they are in log.jsonl only", len(metrics), e)
        self.save(offset=end, hwm=dict(hwm))  # a copy: the caller reads on
        return len(metrics)

    def _read(self, begin: int, hwm: Dict[str, int]):
        """((metric tuples, tags), offset after the line) for each complete line from `begin`; a line that is not
        a record of ours (runlog.scan) is passed over."""
        if not os.path.exists(log_path(self.run_dir)):
            return
        constants = set(self.rec.get("constants", []))
        for end, record, _ in scan(log_path(self.run_dir), begin):  # streamed: a long backlog is not held at once
            yield (translate(record, hwm, constants) if record else ([], {})), end

    def add_artifact(self, path: str, artifact_path: Optional[str]) -> None:
        with self._lock:
            self.rec["artifacts"].append([path, artifact_path])
            self.save()

    def send_artifacts(self, stop: Optional[threading.Event] = None) -> None:
        """Upload the files and folders listed in the cursor, in order; each leaves the list once sent (or
        refused for good); then the model asked for, if any."""
        while self.rec["artifacts"] and not (stop is not None and stop.is_set()):
            path, artifact_path = self.rec["artifacts"][0]
            try:
                if os.path.isdir(path):  # a folder: its files, under the folder's name
                    self.client.log_artifacts(self.run_id, path, artifact_path or os.path.basename(path.rstrip("/")))
                elif os.path.isfile(path):
                    self.client.log_artifact(self.run_id, path, artifact_path)
                else:
                    log.warning("MLflow artifact %s does not exist; skipped", path)
            except Exception as e:
                if not is_permanent(e):
                    raise
                log.warning("MLflow: artifact %s not logged (%s)", path, e)
            with self._lock:
                self.rec["artifacts"].pop(0)
                self.save()
        if self.rec.get("model") and not (stop is not None and stop.is_set()):
            send_model(self.client, self.rec["tracking_uri"], self.run_id, self.rec["model"])
            self.save(model=None)

    def finish(self, status: str) -> None:
        """The artifacts and the model not sent yet, then the run's final status."""
        self.send_artifacts()
        self.client.set_terminated(self.run_id, status)
        self.save(status=status)


def run_artifacts(run_dir: str, finished: bool, model: bool) -> List[list]:
    """What the trainer logs as artifacts, as far as the run directory holds it (for a cursor made by `sync`): the
    config, the curves, and for a finished run log.jsonl and, unless it goes as the MLflow model (`model`), the
    export. An old run's final_weights.pt is not sent: the export holds the same weights."""
    from resnext_dist.weights.layout import EXPORT_DIR  # names only: no torch
    names = [("config.yaml", None), ("curves.png", None)]
    if finished:
        names += [] if model else [(EXPORT_DIR, EXPORT_DIR)]
        names += [("log.jsonl", None)]
    return [[os.path.join(run_dir, n), a] for n, a in names if os.path.exists(os.path.join(run_dir, n))]


def translate(r: dict, hwm: Dict[str, int], constants) -> tuple:
    """A record -> (metric tuples, tags): numbers of step, epoch and summary records are metrics (each key's steps
    only grow, see `hwm`), constants are tags; the start record is the run's description; events are nothing."""
    kind, step, tags, metrics = r.get("kind"), int(r.get("step", 0)), {}, []
    if kind == "start":
        rows = "".join(f"| {k} | {v} |\n" for k, v in r.items() if k not in ("kind", "time"))
        return [], {"mlflow.note.content": cut("| fact | value |\n|---|---|\n" + rows, MAX_TAG_VALUE)}
    for k, v in r.items() if kind in ("step", "epoch", "summary") else ():
        if k in ("kind", "step", "epoch", "time") or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if k in constants:
            tags[k] = str(v)
        elif step > hwm.get(metric_key(k), -1) and (isinstance(v, float) or abs(v) < 2**63):  # a huge int: no metric
            hwm[metric_key(k)] = step
            metrics.append((metric_key(k), float(v), int(float(r.get("time", 0)) * 1000), step))
    return metrics, tags
