"""log.jsonl -> one MLflow run, from a cursor: what the Tracker's thread and `sync` both run.

The cursor, <run dir>/mlflow_run.json, holds the MLflow run id and URI, `start` (where the run's records begin in
log.jsonl) and `offset` (up to where MLflow holds them); also what `sync` needs to create the run (experiment, name,
tags) and, after a close that timed out, the final `status` and the `artifacts` left. It is saved (atomic_write)
after each stored batch, so a process killed at any moment resends at most one batch, and a resent batch is the
same batch (timestamps are the records' `time`), which MLflow's store keeps once. No step twice: a point (key, step)
is sent only if `step` is above that key's highest step in the log since `start` (a resumed attempt repeats steps
after its checkpoint: the first values stay).
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from typing import Dict, Optional

from resnext_dist.files import atomic_write

log = logging.getLogger(__package__)
RUN_FILE = "mlflow_run.json"
BATCH, PARAMS_TAGS_PER_BATCH, MAX_PARAM_VALUE, MAX_TAG_VALUE, MAX_KEY = 950, 100, 6000, 8000, 250  # MLflow's limits
SUMMARY = ("best_val_top1", "final_val_top1", "epochs_done", "train_hours", "mean_img_per_s")
# A model-training experiment (the UI's runs table and training charts, not the GenAI overview), and a view of its
# runs table with the summary metrics as columns, best first, which experiment_url() links to.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development", "mlflow.sharedViewState.training": json.dumps(
    {"selectedColumns": [f"metrics.`{k}`" for k in SUMMARY], "orderByKey": "metrics.`best_val_top1`",
     "orderByAsc": False})}


def metric_key(key: str) -> str:
    """A name MLflow accepts: bad characters become '_', no empty or path-like parts, at most 250 characters."""
    clean = re.sub(r"/+", "/", re.sub(r"[^/\w.\- :]", "_", str(key)).strip("/") or "_")
    return "/".join(p if p not in (".", "..") else "_" for p in clean.split("/"))[:MAX_KEY]


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 14] + "...(truncated)"


def config_params(cfg) -> Dict[str, str]:
    """The flattened resolved config as MLflow params (dict values flattened further, strings cut to size)."""
    from resnext_dist.config import to_flat_dict
    out: Dict[str, str] = {}

    def add(key: str, value) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                add(f"{key}.{k}", v)
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
            out[key[:MAX_KEY]] = cut(text, MAX_PARAM_VALUE)

    for key, value in to_flat_dict(cfg).items():
        add(key, value)
    return out


def read_cursor(run_dir: str) -> Optional[dict]:
    try:
        with open(os.path.join(run_dir, RUN_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_permanent(exc: BaseException) -> bool:
    """Retrying cannot help: a 4xx answer (but 408/429), or no network or server error at all."""
    from mlflow.exceptions import MlflowException
    if not isinstance(exc, MlflowException):
        return not isinstance(exc, OSError)  # requests' errors are OSErrors
    return 400 <= exc.get_http_status_code() < 500 and exc.get_http_status_code() not in (408, 429)


class Mirror:
    """Sends the log after the cursor to the cursor's run; creates (or reopens) that run first."""

    def __init__(self, client, run_dir: str, rec: dict, params: Dict[str, str]):
        self.client, self.run_dir, self.rec, self.params = client, run_dir, rec, params
        self.ready, self._hwm, self._lock = False, None, threading.Lock()

    @property
    def run_id(self) -> Optional[str]:
        return self.rec.get("run_id")

    def save(self, **fields) -> None:
        with self._lock:  # the Tracker's close() may save while the thread does
            self.rec.update(fields)
            atomic_write(os.path.join(self.run_dir, RUN_FILE), json.dumps(self.rec) + "\n")

    def setup(self, reopen: bool) -> None:
        """The run exists with its params and tags; `reopen`: an earlier attempt's run, made RUNNING again."""
        c, run = self.client, None
        if self.ready:
            return
        if self.run_id is not None:
            try:
                run = c.get_run(self.run_id)
            except Exception as e:
                if not is_permanent(e):
                    raise
            if run is None or run.info.lifecycle_stage == "deleted":
                log.warning("MLflow run %s is gone from %s; starting a new run", self.run_id, self.rec["tracking_uri"])
                self.save(run_id=None)
                run = None
        if self.run_id is None:
            self._create()
        elif reopen:
            c.update_run(self.run_id, status="RUNNING")
            attempt, have = int(run.data.tags.get("attempt") or 1) + 1, run.data.params
            changed = {k: v for k, v in self.params.items() if k in have and have[k] != v}
            tags = dict(self.rec.get("tags", {}), attempt=str(attempt))
            if changed:
                log.warning("config changed on resume (%s); MLflow params keep the first values, the new ones are in "
                            "the tag 'changed_on_attempt_%d'", ", ".join(sorted(changed)), attempt)
                tags[f"changed_on_attempt_{attempt}"] = json.dumps(changed)
            self._params_tags({k: v for k, v in self.params.items() if k not in have}, tags)
        how = ("reopened" if reopen else "found") if run else "created"
        log.info("MLflow run %s %s (%s)", self.run_id, how, self.rec["tracking_uri"])
        self.ready = True

    def _create(self) -> None:
        c, rec = self.client, self.rec
        if c.get_experiment_by_name(rec["experiment"]) is None:
            try:
                c.create_experiment(rec["experiment"], artifact_location=rec.get("artifact_location"))
            except Exception:
                pass  # another run created it meanwhile, or the answer was lost: read it back
        exp = c.get_experiment_by_name(rec["experiment"])
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        for key, value in EXPERIMENT_TAGS.items():
            c.set_experiment_tag(exp.experiment_id, key, value)
        # A create whose answer was lost (timeout) may have made the run: find it by this launch's tag.
        found = c.search_runs([exp.experiment_id], f"tags.launch_id = '{rec['launch_id']}'", max_results=1)
        tags = {k: cut(v, MAX_TAG_VALUE) for k, v in rec.get("tags", {}).items()}
        run_id = found[0].info.run_id if found else c.create_run(
            exp.experiment_id, run_name=rec.get("run_name"), tags=dict(tags, launch_id=rec["launch_id"], attempt="1")
        ).info.run_id
        self.save(run_id=run_id)
        self._params_tags(self.params, {})

    def _params_tags(self, params: Dict[str, str], tags: Dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag
        p = [Param(k, v) for k, v in params.items()]
        t = [RunTag(k, cut(v, MAX_TAG_VALUE)) for k, v in tags.items()]
        for i in range(0, max(len(p), len(t)), PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=p[i:i + PARAMS_TAGS_PER_BATCH],
                                  tags=t[i:i + PARAMS_TAGS_PER_BATCH])

    def send_new(self, stop: Optional[threading.Event] = None) -> int:
        """Send the complete lines after the cursor, batch by batch, moving the cursor after each stored batch.
        Returns the number of metric points sent."""
        if self._hwm is None:  # the highest step per key in what is sent already
            self._hwm = {}
            for _ in self._records(self.rec["start"], self.rec["offset"], self._hwm):
                pass
        hwm, metrics, tags, sent, end = dict(self._hwm), [], {}, 0, self.rec["offset"]
        for (m, t), end in self._records(self.rec["offset"], None, hwm):
            metrics, tags = metrics + m, {**tags, **t}
            if len(metrics) > BATCH or len(tags) > PARAMS_TAGS_PER_BATCH - 10:
                sent, metrics, tags = sent + self._send(metrics, tags, hwm, end), [], {}
                if stop is not None and stop.is_set():
                    return sent
        return sent + (self._send(metrics, tags, hwm, end) if end != self.rec["offset"] else 0)

    def _send(self, metrics: list, tags: dict, hwm: Dict[str, int], end: int) -> int:
        from mlflow.entities import Metric, RunTag
        try:
            self.client.log_batch(self.run_id, [Metric(*m) for m in metrics],
                                  tags=[RunTag(k, cut(v, MAX_TAG_VALUE)) for k, v in tags.items()])
        except Exception as e:
            if not is_permanent(e):
                raise
            log.warning("MLflow refused %d metric points (%s); they are in log.jsonl only", len(metrics), e)
        self._hwm = dict(hwm)
        self.save(offset=end)
        return len(metrics)

    def _records(self, begin: int, end: Optional[int], hwm: Dict[str, int]):
        """((metric tuples, tags), offset after the line) for each complete line from `begin` (to `end`)."""
        path = os.path.join(self.run_dir, "log.jsonl")
        if not os.path.exists(path):
            return
        constants = set(self.rec.get("constants", []))
        with open(path, "rb") as f:
            f.seek(begin)
            for line in f:  # streamed: a long backlog is not read into memory at once
                if not line.endswith(b"\n") or (end is not None and begin >= end):
                    return  # a line still being written
                begin += len(line)
                try:
                    out = translate(json.loads(line), hwm, constants)
                except (ValueError, TypeError, AttributeError):  # not a record (a torn line of a crash)
                    out = ([], {})
                yield out, begin

    def upload(self, path: str, artifact_path: Optional[str]) -> None:
        if os.path.isdir(path):  # a folder: its files, under the folder's name
            self.client.log_artifacts(self.run_id, path, artifact_path or os.path.basename(path.rstrip("/")))
        elif os.path.isfile(path):
            self.client.log_artifact(self.run_id, path, artifact_path)
        else:
            log.warning("MLflow artifact %s does not exist; skipped", path)


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


def configure_http(timeout_s: float) -> None:
    """Short requests, no in-request retries (MLflow's default: minutes per call); the thread retries. Process-wide
    on purpose: rank 0 is the only process that talks to MLflow. MLflow reads these at each request."""
    os.environ.update(MLFLOW_HTTP_REQUEST_TIMEOUT=str(max(1, int(timeout_s + 0.999))),
                      MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0")


def sync(run_dir: str, timeout_s: float = 30.0) -> str:
    """The reader run once to the end of log.jsonl; then the artifacts close() left and the final status (the
    recorded one, else FINISHED with a DONE marker, else KILLED)."""
    from mlflow import MlflowClient
    from resnext_dist.config import load_config
    run_dir, config = os.path.abspath(run_dir), os.path.join(run_dir, "config.yaml")
    rec = read_cursor(run_dir)
    if rec is None:
        return f"nothing to send: no {os.path.join(run_dir, RUN_FILE)}"
    configure_http(timeout_s)
    mirror = Mirror(MlflowClient(tracking_uri=rec["tracking_uri"]), run_dir, rec,
                    config_params(load_config(config)) if os.path.isfile(config) else {})
    mirror.setup(reopen=False)
    sent = mirror.send_new()
    for path, artifact_path in rec.get("artifacts", []):
        mirror.upload(path, artifact_path)
    status = rec.get("status") or ("FINISHED" if os.path.exists(os.path.join(run_dir, "DONE")) else "KILLED")
    mirror.client.set_terminated(mirror.run_id, status)
    mirror.save(artifacts=[], status=status)
    return f"sent {sent} metric points to MLflow run {mirror.run_id} ({rec['tracking_uri']}); status {status}"
