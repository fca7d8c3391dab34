"""log.jsonl -> one MLflow run, from a cursor: what the Tracker's thread and `sync` (__main__.py) both run.

The cursor, <run dir>/mlflow_run.json, holds the MLflow run id and URI, `start` (where the run's records begin in
log.jsonl), `offset` (up to where MLflow holds them) and `hwm` (each metric's highest step sent); what `sync` needs
to create the run (experiment, name, tags); the `artifacts` asked for and not uploaded yet; a `stale` run to end;
and, after a close that timed out, the final `status`. It is saved (atomic_write) after each stored batch, so a
process killed at any moment resends at most one batch, and a resent batch is the same batch (timestamps are the
records' `time`), which MLflow's store keeps once. No step twice: a point (key, step) is sent only if `step` is
above `hwm[key]` (a resumed attempt repeats the steps after its checkpoint: the first values stay).
MlflowClient.log_batch itself splits a batch to MLflow's request limits.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Dict, Optional

from resnext_dist.files import atomic_write
from resnext_dist.runlog import RunLog
from resnext_dist.tracking.mlflow_store import MAX_TAG_VALUE, cut, experiment_id, is_permanent, metric_key

log = logging.getLogger(__package__)
RUN_FILE, BATCH = "mlflow_run.json", 1000  # metric points per stored batch (one cursor move)


def read_cursor(run_dir: str) -> Optional[dict]:
    try:
        with open(os.path.join(run_dir, RUN_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class Mirror:
    """Sends the log after the cursor to the cursor's run; creates (or reopens) that run first."""

    def __init__(self, client, run_dir: str, rec: dict, params: Dict[str, str]):
        self.client, self.run_dir, self.rec, self.params = client, run_dir, rec, params
        self.ready, self._lock = False, threading.RLock()

    @property
    def run_id(self) -> Optional[str]:
        return self.rec.get("run_id")

    def save(self, **fields) -> None:
        with self._lock:  # the trainer's thread (log_artifact, close) and the tracker's both save
            self.rec.update(fields)
            atomic_write(os.path.join(self.run_dir, RUN_FILE), json.dumps(self.rec) + "\n")

    def get_run(self, run_id: str):
        """The run, or None when MLflow says it does not exist; transient errors raise (the caller retries)."""
        try:
            return self.client.get_run(run_id)
        except Exception as e:
            if not is_permanent(e):
                raise
            return None

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
                events = RunLog(os.path.join(self.run_dir, "log.jsonl"))  # one append of one line: lines stay whole
                events.write("event", 0, event="mlflow_run_closed", run_id=old_id, status=status,
                             why="its trainer is gone; this run dir tracks a new run")
                events.close()
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
        """((metric tuples, tags), offset after the line) for each complete line from `begin`."""
        path, constants = os.path.join(self.run_dir, "log.jsonl"), set(self.rec.get("constants", []))
        if not os.path.exists(path):
            return
        with open(path, "rb") as f:
            f.seek(begin)
            for line in f:  # streamed: a long backlog is not read into memory at once
                if not line.endswith(b"\n"):
                    return  # a line still being written
                begin += len(line)
                try:
                    out = translate(json.loads(line), hwm, constants)
                except (ValueError, TypeError, AttributeError):  # not a record (a torn line of a crash)
                    out = ([], {})
                yield out, begin

    def add_artifact(self, path: str, artifact_path: Optional[str]) -> None:
        with self._lock:
            self.rec["artifacts"].append([path, artifact_path])
            self.save()

    def send_artifacts(self, stop: Optional[threading.Event] = None) -> None:
        """Upload the files and folders listed in the cursor, in order; each leaves the list once sent (or
        refused for good)."""
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

    def finish(self, status: str) -> None:
        """The artifacts not sent yet, then the run's final status."""
        self.send_artifacts()
        self.client.set_terminated(self.run_id, status)
        self.save(status=status)


def translate(r: dict, hwm: Dict[str, int], constants) -> tuple:
    """A record -> (metric tuples, tags): numbers of step, epoch and summary records are metrics (each key's steps
    only grow, see `hwm`), constants are tags; the start record is the run's description; events are nothing."""
    kind, step, tags, metrics = r.get("kind"), int(r.get("step", 0)), {}, []
    if kind == "start":
        rows = "".join(f"| {k} | {v} |\n" for k, v in r.items() if k not in ("kind", "time"))
        return [], {"mlflow.note.content": "| fact | value |\n|---|---|\n" + rows}
    for k, v in r.items() if kind in ("step", "epoch", "summary") else ():
        if k in ("kind", "step", "epoch", "time") or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if k in constants:
            tags[k] = str(v)
        elif step > hwm.get(metric_key(k), -1):
            hwm[metric_key(k)] = step
            metrics.append((metric_key(k), float(v), int(float(r.get("time", 0)) * 1000), step))
    return metrics, tags
