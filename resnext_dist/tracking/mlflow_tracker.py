"""The MLflow tracker of a training run (used as the tracking package's docstring shows): one MLflow run per training
run. One thread (rank 0, when enabled) runs mirror.Mirror from the cursor in <run dir>/mlflow_run.json and backs off
when the server is away (1 s doubling to 30 s, one warning per outage). What close() could not send within
tracking.close_timeout_s stays there, for the next attempt of the run or `python -m resnext_dist.tracking sync
RUN_DIR`. The run id is in the checkpoint (the tracker's `state`, passed back to open_tracker) and in the cursor (a
crash before the first checkpoint).
"""
from __future__ import annotations

import atexit
import copy
import logging
import os
import threading
import uuid
from typing import Optional

from resnext_dist.errors import one_line
from resnext_dist.tracking.mirror import Mirror, read_cursor
from resnext_dist.tracking.mlflow_store import config_params, configure_http, is_permanent, open_store, ui_command
from resnext_dist.tracking.provenance import provenance_tags

log = logging.getLogger(__package__)
STATUSES = ("FINISHED", "FAILED", "KILLED")
POLL_S, BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 1.0, 30.0


def open_tracker(cfg, dist, run_dir: str, state: Optional[dict] = None) -> "Tracker":
    """The tracker of this attempt of the run; `state` is what an earlier attempt's `tracker.state` was (from the
    checkpoint resumed), None for a new run."""
    return Tracker(cfg, dist, run_dir, run_id=(state or {}).get("mlflow_run_id"))


def describe(cfg, state: Optional[dict] = None) -> Optional[str]:
    """Where the run is tracked, for the console: `run <id> | <how to see it>` (`a new run | ...` before it exists);
    None when tracking is off."""
    if not cfg.tracking.enabled:
        return None
    run_id = (state or {}).get("mlflow_run_id")
    return f"{'run ' + run_id if run_id else 'a new run'} | {ui_command(cfg)}"


class Tracker:
    """See the module docstring. Every public method is a no-op when tracking is off or not on the main rank."""

    def __init__(self, cfg, dist, run_dir: str, run_id: Optional[str] = None):
        self.enabled, self._cfg = bool(cfg.tracking.enabled and dist.is_main), cfg
        self._closed, self._mirror = False, None
        if not self.enabled:
            return
        try:
            from mlflow import MlflowClient  # seconds: only here, on the main rank, when enabled
        except Exception as e:
            log.warning("MLflow tracking off: cannot import mlflow (%s); log.jsonl is still written", e)
            self.enabled = False
            return
        self._t, self.run_dir = cfg.tracking, os.path.abspath(run_dir)
        self.uri, artifact_location = open_store(cfg)
        os.makedirs(self.run_dir, exist_ok=True)
        configure_http(max(0.1, self._t.timeout_s))
        old = read_cursor(self.run_dir) or {}
        old = old if old.get("tracking_uri") == self.uri else {}  # a cursor of another store is not this run's
        goes_on = bool(old) and cfg.checkpoint.resume != "never" and run_id in (None, old["run_id"])
        log_path = os.path.join(self.run_dir, "log.jsonl")
        end = os.path.getsize(log_path) if os.path.exists(log_path) else 0  # a new cursor starts here
        rec = dict(old, status=None) if goes_on else {
            "run_id": run_id, "tracking_uri": self.uri, "experiment": self._t.experiment, "run_name": cfg.run.name,
            "launch_id": uuid.uuid4().hex, "start": end, "offset": end,  # the old cursor's run, its trainer gone:
            "stale": None if old.get("run_id") in (None, run_id) else [old["run_id"], old.get("status")],
            "artifact_location": artifact_location}
        self._reopen = rec["run_id"] is not None
        self._mirror = Mirror(MlflowClient(tracking_uri=self.uri), self.run_dir, rec, config_params(cfg))
        # a sweep's run is a child of the sweep's run (tag read when the run is created; the UI nests it)
        parent = {"mlflow.parentRunId": self._t.parent_run_id} if self._t.parent_run_id else {}
        self._mirror.save(tags={**provenance_tags(dist, self.run_dir), **parent}, artifacts=rec.get("artifacts", []),
                          constants=["val_images"] + ([] if cfg.data.min_train_res else ["res"]))  # not charts
        self._model, self._status, self._monitor = None, None, None
        self._wake, self._first, self._abort = threading.Event(), threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self._thread.start()
        # A moment for the run to exist, so the first checkpoint carries its id; an absent server holds up no longer.
        self._first.wait(max(0.1, self._t.timeout_s) + 1.0)
        atexit.register(self.close, "FAILED")  # the interpreter exits without close(): a bug, an unhandled error

    @property
    def run_id(self) -> Optional[str]:
        """The MLflow run id once the run exists (None while disabled or before the server answered)."""
        return self._mirror.run_id if self._mirror is not None else None

    @property
    def state(self) -> Optional[dict]:
        """What a checkpoint keeps of the tracker (plain values), for open_tracker on a resume."""
        return {"mlflow_run_id": self.run_id} if self.run_id else None

    def describe(self) -> Optional[str]:
        """`describe` for this tracker's run now (None when tracking is off or not on this rank)."""
        return describe(self._cfg, self.state) if self.enabled else None

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        """Upload a file or folder (read when sent), in the background; until then it is listed in the cursor."""
        if self.enabled and not self._closed:
            self._mirror.add_artifact(os.path.abspath(path), artifact_path)
            self._wake.set()

    def log_model(self, model, example_input) -> None:
        """Log a CPU copy of `model` as the MLflow model "model", its signature and input example from
        `example_input` (a batch of 2 or more: batch size 1 would be fixed in the export), in the background."""
        if self.enabled and self._t.log_model and not self._closed:
            self._model = copy.deepcopy(model).cpu().eval(), example_input.detach().cpu().numpy()
            self._wake.set()

    def close(self, status: str = "FINISHED") -> None:
        """Send the rest of log.jsonl and the artifacts, end the run; give up after tracking.close_timeout_s."""
        if not self.enabled or self._closed:
            return
        self._closed, self._status = True, status if status in STATUSES else "FAILED"
        self._wake.set()
        self._thread.join(max(0.0, self._t.close_timeout_s))
        if not self._thread.is_alive():
            return
        self._abort.set()
        self._mirror.save(status=self._status)
        log.warning("MLflow at %s did not take everything within %.0f s; the rest is sent when this run resumes, "
                    "or by: python -m resnext_dist.tracking sync %s", self.uri, self._t.close_timeout_s, self.run_dir)

    def _work(self) -> None:
        """The thread: every MLflow call happens here."""
        backoff, down, m = BACKOFF_MIN_S, False, self._mirror
        while not self._abort.is_set():
            status = self._status
            try:
                m.setup(self._reopen)
                self._first.set()
                if self._t.system_metrics and self._monitor is None and status is None:
                    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # only if asked
                    self._monitor = SystemMetricsMonitor(m.run_id, max(0.1, self._t.system_metrics_interval_s),
                                                         resume_logging=True, tracking_uri=self.uri)
                    self._monitor.start()
                m.send_new(self._abort)
                m.send_artifacts(self._abort)
                if self._model is not None and not self._abort.is_set():
                    self._log_model()
                if status is not None:
                    if self._monitor is not None:
                        self._monitor.finish()
                    m.finish(status)
                    return
                if down:
                    log.info("MLflow at %s answers again; backlog sent", self.uri)
                backoff, down, wait = BACKOFF_MIN_S, False, POLL_S
            except Exception as e:
                self._first.set()
                if not down:  # one warning per outage
                    log.warning("MLflow at %s is not answering (%s); training goes on, log.jsonl is complete and is "
                                "sent when it is back", self.uri, one_line(e, 300))
                down, wait, backoff = True, min(backoff, 2.0) if status else backoff, min(2 * backoff, BACKOFF_MAX_S)
            self._wake.wait(wait)
            self._wake.clear()

    def _log_model(self) -> None:
        import mlflow.pytorch  # seconds more: only for the final model
        import torch  # this module is imported by torch-free commands (launch/submit.py)
        model, example = self._model
        try:  # the fluent API's store and experiment (process-wide: rank 0 talks to this one run only)
            mlflow.set_tracking_uri(self.uri)
            mlflow.set_experiment(experiment_id=self._mirror.client.get_run(self.run_id).info.experiment_id)
            mlflow.pytorch.log_model(model, name="model", input_example=example, run_id=self.run_id,
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        except Exception as e:
            if not is_permanent(e):
                raise
            log.warning("MLflow: the model was not logged (%s)", one_line(e, 300))
        self._model = None
