"""log.jsonl -> one MLflow run, from a cursor: what the Tracker's thread and `sync` both run.

The cursor is <run dir>/mlflow_run.json: the MLflow run id, the tracking URI, and `offset`, the byte offset in
log.jsonl up to which records are stored in MLflow (`start`: where this MLflow run's records begin). It also
keeps what `sync` needs to create the run if no attempt could (experiment, run name, tags) and, after a close
that timed out, the final `status` and the `artifacts` still to upload. It is saved (atomic_write) only after a
batch is stored, so a process killed at any moment resends at most that batch.

No step twice: a metric point (key, step) is sent only if `step` is above the highest step of that key earlier
in the log (from `start`), so a resumed attempt's repeat of steps 5-6 is skipped and the first values stay. The
highest steps are a function of the log prefix, rebuilt by reading it; and a batch resent because its answer was
lost is the same batch (timestamps are the records' `time`), which MLflow's store keeps once.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from typing import Dict, List, Optional

from resnext_dist.files import atomic_write

log = logging.getLogger(__package__)

RUN_FILE = "mlflow_run.json"
METRICS_PER_BATCH, PARAMS_TAGS_PER_BATCH, MAX_PARAM_VALUE, MAX_TAG_VALUE, MAX_KEY = 1000, 100, 6000, 8000, 250
NOT_METRICS = ("kind", "step", "epoch", "time")
SUMMARY = ("best_val_top1", "final_val_top1", "epochs_done", "train_hours", "mean_img_per_s")
# A model-training experiment (the UI's runs table and training charts, not the GenAI overview), and a view of
# its runs table with the summary metrics as columns, best first, for the link of experiment_url().
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development", "mlflow.sharedViewState.training": json.dumps(
    {"selectedColumns": [f"metrics.`{k}`" for k in SUMMARY], "orderByKey": "metrics.`best_val_top1`",
     "orderByAsc": False})}
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")  # what MLflow accepts in metric names


def metric_key(key: str) -> str:
    """A name MLflow accepts: bad characters become '_', no empty or path-like parts, at most 250 characters."""
    clean = re.sub(r"/+", "/", _BAD_KEY_CHARS.sub("_", str(key)).strip("/") or "_")
    return "/".join(p if p not in (".", "..") else "_" for p in clean.split("/"))[:MAX_KEY]


def config_params(cfg) -> Dict[str, str]:
    """The flattened resolved config as MLflow params (nested dicts flattened, values as strings, cut to size)."""
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


def cut(text: str, limit: int) -> str:
    mark = "...(truncated)"
    return text if len(text) <= limit else text[: limit - len(mark)] + mark


def describe(start: dict) -> str:
    """The run description (markdown) from the log's start record."""
    rows = [f"| {k} | {v} |" for k, v in start.items() if k not in ("kind", "time")]
    return cut("| fact | value |\n|---|---|\n" + "\n".join(rows), MAX_TAG_VALUE)


class Cursor:
    """mlflow_run.json, read and written whole; `update` saves atomically (one writer at a time)."""

    def __init__(self, run_dir: str, rec: dict):
        self.path, self.rec, self._lock = os.path.join(run_dir, RUN_FILE), rec, threading.Lock()

    @staticmethod
    def read(run_dir: str) -> Optional[dict]:
        try:
            with open(os.path.join(run_dir, RUN_FILE)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def update(self, **fields) -> None:
        with self._lock:
            self.rec.update(fields)
            atomic_write(self.path, json.dumps(self.rec) + "\n")


def is_permanent(exc: BaseException) -> bool:
    """Retrying cannot help: the server refused (4xx but 408/429), or not a network/server error at all.
    Network errors (OSError, which requests' errors are), timeouts and 5xx are transient."""
    from mlflow.exceptions import MlflowException
    if not isinstance(exc, MlflowException):
        return not isinstance(exc, OSError)
    try:
        status = exc.get_http_status_code()
    except Exception:
        return False
    return 400 <= status < 500 and status not in (408, 429)


def log_params_tags(client, run_id: str, params: Dict[str, str], tags: Dict[str, str]) -> None:
    from mlflow.entities import Param, RunTag
    items = [Param(k, cut(v, MAX_PARAM_VALUE)) for k, v in params.items()]
    items += [RunTag(k, cut(v, MAX_TAG_VALUE)) for k, v in tags.items()]
    for i in range(0, len(items), PARAMS_TAGS_PER_BATCH):
        batch = items[i:i + PARAMS_TAGS_PER_BATCH]
        client.log_batch(run_id, params=[p for p in batch if isinstance(p, Param)],
                         tags=[t for t in batch if isinstance(t, RunTag)])


class Mirror:
    """Sends the log after the cursor to the cursor's run; creates (or reopens) that run first."""

    def __init__(self, client, cursor: Cursor, log_path: str, params: Dict[str, str]):
        self.client, self.cursor, self.log_path, self.params = client, cursor, log_path, params
        self.ready = False
        self._hwm: Optional[Dict[str, int]] = None

    @property
    def run_id(self) -> Optional[str]:
        return self.cursor.rec.get("run_id")

    def setup(self, reopen: bool) -> None:
        """The run exists and has its params and tags; `reopen`: an earlier attempt's run is RUNNING again."""
        if self.ready:
            return
        c, rec = self.client, self.cursor.rec
        if self.run_id is not None:
            try:
                run = c.get_run(self.run_id)
            except Exception as e:
                if not is_permanent(e):
                    raise
                run = None
            if run is None or run.info.lifecycle_stage == "deleted":
                log.warning("MLflow run %s is gone from %s; starting a new run", self.run_id, rec["tracking_uri"])
                self.cursor.update(run_id=None)
        if self.run_id is None:
            self._create()
        elif reopen:
            c.update_run(self.run_id, status="RUNNING")
            attempt = int(run.data.tags.get("attempt", "1") or 1) + 1
            have = run.data.params
            changed = {k: v for k, v in self.params.items() if k in have and have[k] != cut(v, MAX_PARAM_VALUE)}
            tags = dict(rec.get("tags", {}), attempt=str(attempt))
            if changed:
                log.warning("config changed on resume (%s); MLflow params keep the first values, the new ones are "
                            "in the tag 'changed_on_attempt_%d'", ", ".join(sorted(changed)), attempt)
                tags[f"changed_on_attempt_{attempt}"] = json.dumps(changed)
            log_params_tags(c, self.run_id, {k: v for k, v in self.params.items() if k not in have}, tags)
            log.info("MLflow run %s reopened (%s)", self.run_id, rec["tracking_uri"])
        self.ready = True

    def _create(self) -> None:
        c, rec = self.client, self.cursor.rec
        exp = c.get_experiment_by_name(rec["experiment"])
        if exp is None:
            try:
                c.create_experiment(rec["experiment"], artifact_location=rec.get("artifact_location"))
            except Exception:
                pass  # another run created it meanwhile (or the answer was lost): read it back
            exp = c.get_experiment_by_name(rec["experiment"])
            if exp is None:
                raise RuntimeError(f"cannot create MLflow experiment {rec['experiment']!r}")
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        for key, value in EXPERIMENT_TAGS.items():
            c.set_experiment_tag(exp.experiment_id, key, value)
        # A create whose answer was lost (timeout) may have made the run: find it by this launch's tag.
        found = c.search_runs([exp.experiment_id], filter_string=f"tags.launch_id = '{rec['launch_id']}'",
                              max_results=1)
        tags = dict(rec.get("tags", {}), launch_id=rec["launch_id"], attempt="1")
        run_id = found[0].info.run_id if found else c.create_run(
            exp.experiment_id, run_name=rec.get("run_name"),
            tags={k: cut(v, MAX_TAG_VALUE) for k, v in tags.items()}).info.run_id
        self.cursor.update(run_id=run_id, experiment_id=exp.experiment_id)
        log_params_tags(c, run_id, self.params, {})
        log.info("MLflow run %s created (%s)", run_id, rec["tracking_uri"])

    def send_new(self, stop: Optional[threading.Event] = None) -> int:
        """Send every complete line after the cursor, batch by batch; the cursor moves after each stored batch.
        Returns the number of metric points sent."""
        rec = self.cursor.rec
        if self._hwm is None:  # the highest step per key in what was sent already
            self._hwm = {}
            for _ in self._records(rec["start"], rec["offset"], self._hwm):
                pass
        hwm, metrics, tags, sent, end = dict(self._hwm), [], {}, 0, rec["offset"]
        for (m, t), end in self._records(rec["offset"], None, hwm):
            metrics += m
            tags.update(t)
            if len(metrics) > METRICS_PER_BATCH - 50 or len(tags) > PARAMS_TAGS_PER_BATCH - 10:
                sent += self._send(metrics, tags, hwm, end)
                metrics, tags = [], {}
                if stop is not None and stop.is_set():
                    return sent
        if end != rec["offset"]:
            sent += self._send(metrics, tags, hwm, end)
        return sent

    def _send(self, metrics: list, tags: dict, hwm: Dict[str, int], end: int) -> int:
        from mlflow.entities import Metric, RunTag
        try:
            self.client.log_batch(self.run_id, metrics=[Metric(*m) for m in metrics],
                                  tags=[RunTag(k, v) for k, v in tags.items()])
        except Exception as e:
            if not is_permanent(e):
                raise
            log.warning("MLflow refused %d metric points (%s); they are in log.jsonl only", len(metrics), e)
        self._hwm = dict(hwm)
        self.cursor.update(offset=end)
        return len(metrics)

    def _records(self, begin: int, end: Optional[int], hwm: Dict[str, int]):
        """((metric tuples, tags), byte offset after the line) for each complete line in [begin, end)."""
        constants = set(self.cursor.rec.get("constants", []))
        try:
            f = open(self.log_path, "rb")
        except FileNotFoundError:
            return
        with f:
            f.seek(begin)
            for line in f:  # streamed: a long backlog is not read into memory at once
                if not line.endswith(b"\n") or (end is not None and begin >= end):
                    return  # a line still being written
                begin += len(line)
                try:
                    out = self._translate(json.loads(line), hwm, constants)
                except (ValueError, TypeError, AttributeError):  # not a record (a torn line of a crash)
                    out = ([], {})
                yield out, begin

    @staticmethod
    def _translate(r: dict, hwm: Dict[str, int], constants):
        """Metrics of step/epoch/summary records (each key's steps only grow); the start record is the run's
        description; constants are tags; events are nothing (they stay in log.jsonl)."""
        kind, step = r.get("kind"), int(r.get("step", 0))
        if kind == "start":
            return [], {"mlflow.note.content": describe(r)}
        metrics, tags = [], {}
        if kind in ("step", "epoch", "summary"):
            for k, v in r.items():
                if k in NOT_METRICS or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                if k in constants:
                    tags[k] = str(v)
                elif step > hwm.get(metric_key(k), -1):
                    hwm[metric_key(k)] = step
                    metrics.append((metric_key(k), float(v), int(float(r.get("time", 0)) * 1000), step))
        return metrics, tags

    def upload(self, path: str, artifact_path: Optional[str]) -> None:
        if os.path.isdir(path):  # a folder: its files, under the folder's name
            self.client.log_artifacts(self.run_id, path, artifact_path or os.path.basename(path.rstrip("/")))
        elif os.path.isfile(path):
            self.client.log_artifact(self.run_id, path, artifact_path)
        else:
            log.warning("MLflow artifact %s does not exist; skipped", path)


def configure_http(timeout_s: float) -> None:
    """Short requests and no in-request retries (MLflow's default: minutes per call): our thread retries.
    Process-wide on purpose: rank 0 is the only process that talks to MLflow. MLflow reads these per request."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, int(timeout_s + 0.999)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "0"


def sync(run_dir: str, timeout_s: float = 30.0) -> str:
    """Send the rest of a run dir's log.jsonl to its MLflow run, upload what close left, end the run."""
    from mlflow import MlflowClient
    from resnext_dist.config import load_config
    run_dir = os.path.abspath(run_dir)
    rec = Cursor.read(run_dir)
    if rec is None:
        return f"nothing to send: no {os.path.join(run_dir, RUN_FILE)}"
    configure_http(timeout_s)
    config = os.path.join(run_dir, "config.yaml")
    params = config_params(load_config(config)) if os.path.isfile(config) else {}
    mirror = Mirror(MlflowClient(tracking_uri=rec["tracking_uri"]), Cursor(run_dir, rec),
                    os.path.join(run_dir, "log.jsonl"), params)
    mirror.setup(reopen=False)
    sent = mirror.send_new()
    for path, artifact_path in rec.get("artifacts", []):
        mirror.upload(path, artifact_path)
    status = rec.get("status") or ("FINISHED" if os.path.exists(os.path.join(run_dir, "DONE")) else "KILLED")
    mirror.client.set_terminated(mirror.run_id, status)
    mirror.cursor.update(artifacts=[], status=status)
    return f"sent {sent} metric points to MLflow run {mirror.run_id} ({rec['tracking_uri']}); status {status}"
