"""MLflow as a reader of log.jsonl: one MLflow run per training run, from rank 0, never in the way of training.

    tracker = Tracker(cfg, dist, run_dir, run_id=state.mlflow_run_id)   # no-op unless enabled and dist.is_main
    # the trainer only appends records to log.jsonl (runlog.RunLog); a thread sends them to MLflow
    tracker.log_artifact(os.path.join(run_dir, "config.yaml"))          # in the background, best effort
    tracker.log_model(model, example_input)   # the final model as an MLflow model (unless tracking.log_model=false)
    tracker.close("FINISHED")                 # | "FAILED" | "KILLED": the rest of log.jsonl, artifacts, end the run
    print(ui_command(cfg))                    # mlflow ui --backend-store-uri sqlite:////abs/runs/mlflow.db

Create the Tracker before this attempt writes to log.jsonl: a new MLflow run starts at the log's end then.
One thread (mirror.py) reads complete new lines from the cursor in <run dir>/mlflow_run.json, sends them in
batches, and moves the cursor when a batch is stored; when the server is away it backs off (1 s doubling to
30 s) with one warning per outage. What close() could not send within `tracking.close_timeout_s` stays after the
cursor: the next attempt of the run continues from it, or `python -m resnext_dist.tracking sync RUN_DIR` sends it.

The run id is kept in the checkpoint (passed back as `run_id`) and in the cursor, which covers a crash before the
first checkpoint. A new run in a run dir whose cursor names a run still RUNNING (its trainer is gone, e.g.
checkpoint.resume=never) ends that run as KILLED, with an `mlflow_run_closed` event in log.jsonl. Where it goes:
`tracking.uri`, or a sqlite store at <run.root>/mlflow.db with artifacts in <run.root>/mlartifacts.
mlflow is imported only when a Tracker is enabled on the main rank (the import takes seconds).
"""
from __future__ import annotations

import atexit
import collections
import copy
import json
import logging
import os
import shlex
import threading
import time
import uuid
from typing import Optional

from resnext_dist.errors import one_line
from resnext_dist.provenance import provenance_tags
from resnext_dist.tracking.mirror import (MAX_PARAM_VALUE, RUN_FILE, Cursor, Mirror, config_params, configure_http,
                                          is_permanent, metric_key)

__all__ = ["Tracker", "resolve_uri", "ui_command", "experiment_url", "config_params", "metric_key", "RUN_FILE", "MAX_PARAM_VALUE",
           "STATUSES"]
log = logging.getLogger(__name__)
STATUSES = ("FINISHED", "FAILED", "KILLED")
POLL_S, BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 1.0, 30.0


def resolve_uri(cfg) -> str:
    """`tracking.uri`, or the default sqlite store in the runs root (absolute)."""
    return cfg.tracking.uri or "sqlite:///" + os.path.join(os.path.abspath(cfg.run.root), "mlflow.db")


def ui_command(cfg) -> str:
    """The command that shows the runs in a browser; for a tracking server, its address (its UI is already up)."""
    uri = resolve_uri(cfg)
    return uri if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {shlex.quote(uri)}"


def experiment_url(ui: str, experiment_id: str) -> str:
    """The runs table of an experiment in the MLflow UI at `ui` (http://host:port): training view, summary columns."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=training"


class Tracker:
    """See the module docstring. Every public method is a no-op when tracking is off or not on the main rank."""

    def __init__(self, cfg, dist, run_dir: str, run_id: Optional[str] = None):
        self.enabled, self._closed, self._cursor = bool(cfg.tracking.enabled and dist.is_main), False, None
        if not self.enabled:
            return
        t, self.uri, self.run_dir = cfg.tracking, resolve_uri(cfg), os.path.abspath(run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        if self.uri.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(self.uri[len("sqlite:///"):]) or ".", exist_ok=True)
        try:
            from mlflow import MlflowClient  # seconds: only here, on the main rank, when enabled
        except Exception as e:
            log.warning("MLflow tracking off: cannot import mlflow (%s); log.jsonl is still written", e)
            self.enabled = False
            return
        self._timeout_s, self._close_timeout_s = max(0.1, float(t.timeout_s)), max(0.0, float(t.close_timeout_s))
        self._model_on, self._system = bool(t.log_model), bool(t.system_metrics)
        self._interval_s = max(0.1, float(t.system_metrics_interval_s))
        configure_http(self._timeout_s)
        log_path = os.path.join(self.run_dir, "log.jsonl")
        end = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        old = Cursor.read(self.run_dir)
        same = old is not None and old.get("tracking_uri") == self.uri
        self._stale, pending = None, []
        if same and cfg.checkpoint.resume != "never" and run_id in (None, old.get("run_id")):
            rec, pending = dict(old), old.get("artifacts", [])  # this run goes on from its cursor
            rec.pop("status", None)
        else:
            self._stale = old if same and old.get("run_id") not in (None, run_id) else None
            rec = {"run_id": run_id, "tracking_uri": self.uri, "experiment": t.experiment, "run_name": cfg.run.name,
                   "artifact_location": None if cfg.tracking.uri else os.path.join(
                       os.path.abspath(cfg.run.root), "mlartifacts"),
                   "launch_id": uuid.uuid4().hex, "start": end, "offset": end}
        self._reopen = rec["run_id"] is not None
        rec.update(tags=provenance_tags(dist, self.run_dir), artifacts=[],
                   constants=["val_images"] + ([] if cfg.data.min_train_res else ["res"]))  # not charts
        self._cursor = Cursor(self.run_dir, rec)
        self._cursor.update()
        self._mirror = Mirror(MlflowClient(tracking_uri=self.uri), self._cursor, log_path, config_params(cfg))
        self._jobs = collections.deque(("artifact", p, a) for p, a in pending)
        self._lock, self._wake, self._first = threading.Lock(), threading.Event(), threading.Event()
        self._done, self._abort, self._status, self._monitor = threading.Event(), threading.Event(), None, None
        threading.Thread(target=self._work, name="mlflow-tracker", daemon=True).start()
        # A moment for the run to exist so the first checkpoint carries its id; an absent server does not hold
        # training up longer.
        self._first.wait(self._timeout_s + 1.0)
        atexit.register(self._at_exit)

    @property
    def run_id(self) -> Optional[str]:
        """The MLflow run id once the run exists (None while disabled or before the server answered)."""
        return self._cursor.rec.get("run_id") if self._cursor is not None else None

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        """Upload a file or folder (read when sent), in the background. Best effort, never blocks."""
        self._add(("artifact", os.path.abspath(path), artifact_path))

    def log_model(self, model, example_input) -> None:
        """Log `model` (a copy, on the CPU) as the MLflow model "model", signature and input example from
        `example_input` (a batch tensor), in the background; nothing when tracking.log_model is false."""
        if self.enabled and self._model_on and not self._closed:
            self._add(("model", copy.deepcopy(model).cpu().eval(), example_input.detach().cpu().numpy()))

    def close(self, status: str = "FINISHED") -> None:
        """Send the rest of log.jsonl and the artifacts, end the run; give up after tracking.close_timeout_s."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if status not in STATUSES:
            log.warning("unknown MLflow run status %r; using FAILED", status)
            status = "FAILED"
        self._status = status
        self._wake.set()
        if self._done.wait(self._close_timeout_s):
            return
        self._abort.set()
        with self._lock:
            artifacts = [[p, a] for kind, p, a in self._jobs if kind == "artifact"]
        self._cursor.update(status=status, artifacts=artifacts)
        log.warning("MLflow at %s did not take everything within %.0f s; the rest is sent when this run resumes, "
                    "or by: python -m resnext_dist.tracking sync %s", self.uri, self._close_timeout_s, self.run_dir)

    def _add(self, job) -> None:
        if self.enabled and not self._closed:
            with self._lock:
                self._jobs.append(job)
            self._wake.set()

    def _at_exit(self) -> None:  # the interpreter exits without close() (a bug, an unhandled error)
        self.close("FAILED")

    # -- the thread: every MLflow call happens here ------------------------------------------------

    def _work(self) -> None:
        backoff, down = BACKOFF_MIN_S, False
        while not self._abort.is_set():
            status = self._status
            try:
                if self._stale is not None:
                    self._close_stale()
                self._mirror.setup(self._reopen)
                self._first.set()
                if self._system and self._monitor is None and status is None:
                    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
                    self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self._interval_s,
                                                         resume_logging=True, tracking_uri=self.uri)
                    self._monitor.start()
                self._mirror.send_new(self._abort)
                self._run_jobs()
                if status is not None:
                    if self._monitor is not None:
                        self._monitor.finish()
                        self._monitor = None
                    self._mirror.client.set_terminated(self.run_id, status)
                    self._cursor.update(status=status)
                    log.info("MLflow run %s ended: %s", self.run_id, status)
                    self._done.set()
                    return
                if down:
                    log.info("MLflow at %s answers again; backlog sent", self.uri)
                backoff, down, wait = BACKOFF_MIN_S, False, POLL_S
            except Exception as e:
                self._first.set()
                if not down:  # one warning per outage
                    log.warning("MLflow at %s is not answering (%s); training goes on, log.jsonl is complete and "
                                "is sent when it is back", self.uri, one_line(e, 300))
                down, wait = True, (min(backoff, 2.0) if status else backoff)
                backoff = min(2 * backoff, BACKOFF_MAX_S)
            self._wake.wait(wait)
            self._wake.clear()

    def _run_jobs(self) -> None:
        while not self._abort.is_set():
            with self._lock:
                if not self._jobs:
                    return
                kind, a, b = self._jobs[0]
            try:
                if kind == "artifact":
                    self._mirror.upload(a, b)
                else:
                    import mlflow.pytorch
                    import torch
                    # the fluent API's store and experiment (process-wide: rank 0 talks to this one run only)
                    mlflow.set_tracking_uri(self.uri)
                    mlflow.set_experiment(experiment_id=self._mirror.client.get_run(self.run_id).info.experiment_id)
                    mlflow.pytorch.log_model(a, name="model", input_example=b, run_id=self.run_id,
                                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
            except Exception as e:
                if not is_permanent(e):
                    raise
                log.warning("MLflow: %s %s not logged (%s)", kind, a if kind == "artifact" else "", one_line(e, 300))
            with self._lock:
                self._jobs.popleft()

    def _close_stale(self) -> None:
        """The run this run dir tracked before is still RUNNING, its trainer gone: end it, and say so."""
        old_id, status = self._stale["run_id"], self._stale.get("status") or "KILLED"
        try:
            running = self._mirror.client.get_run(old_id).info.status == "RUNNING"
        except Exception as e:
            if not is_permanent(e):
                raise
            running = False
        if running:
            self._mirror.client.set_terminated(old_id, status)
            event = {"kind": "event", "step": 0, "time": round(time.time(), 3), "event": "mlflow_run_closed",
                     "run_id": old_id, "status": status, "why": "its trainer is gone; this run dir tracks a new run"}
            with open(os.path.join(self.run_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(event) + "\n")  # one append: lines of the trainer's RunLog stay whole
            log.warning("MLflow run %s was still RUNNING without a trainer; marked %s", old_id, status)
        self._stale = None
