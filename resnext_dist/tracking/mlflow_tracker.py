"""The MLflow tracker of a training run (used as the tracking package's docstring shows): one MLflow run per training
run. One thread (rank 0, when enabled) runs mirror.Mirror from the cursor in <run dir>/mlflow_run.json and backs off
when the server is away (1 s doubling to 30 s, one warning per outage; a store out of space is said to be full).
What close() could not send within tracking.close_timeout_s (or before a signal asked it to stop waiting) stays
there, for the next attempt of the run or `python -m resnext_dist.tracking sync RUN_DIR`. The run id is in the
checkpoint (the tracker's `state`, passed back to open_tracker, with its store's URI) and in the cursor (a crash
before the first checkpoint). A cursor that is broken, lost, or of another store (tracking.uri changed) is made
anew from the run's start in log.jsonl, so the store in use gets the whole run (mirror.py).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from typing import Callable, Optional, Sequence

from resnext_dist.errors import one_line
from resnext_dist.files import atomic_write
from resnext_dist.tracking.mirror import (STATUSES, Mirror, cursor_file, log_path, new_cursor, read_cursor,
                                          run_id_rule, run_start)
from resnext_dist.tracking.mlflow_model import model_request
from resnext_dist.tracking.mlflow_store import (config_params, configure_http, experiment_url, is_full, open_store,
                                                resolve_uri, ui_address, ui_command, ui_start_line)
from resnext_dist.tracking.provenance import provenance_tags

log = logging.getLogger(__package__)
POLL_S, BACKOFF_MIN_S = 1.0, 1.0  # the longest wait: tracking.retry_max_s


def _run_id(cfg, state: Optional[dict]) -> Optional[str]:
    """The MLflow run an earlier attempt's state names, if it is a run of cfg's store (a state without a URI is of
    a version that kept none: the same store)."""
    state = state if isinstance(state, dict) else {}
    run_id, uri = state.get("mlflow_run_id"), state.get("tracking_uri")
    return run_id if not run_id_rule(run_id) and uri in (None, resolve_uri(cfg)) else None


def open_tracker(cfg, dist, run_dir: str, state: Optional[dict] = None) -> "Tracker":
    """The tracker of this attempt of the run; `state` is what an earlier attempt's `tracker.state` was (from the
    checkpoint resumed), None for a new run."""
    return Tracker(cfg, dist, run_dir, run_id=_run_id(cfg, state))


def describe(cfg, state: Optional[dict] = None) -> Optional[str]:
    """Where the run is tracked, for the console: `run <id> | <how to see it>` (`a new run | ...` before it exists);
    None when tracking is off."""
    if not cfg.tracking.enabled:
        return None
    run_id = _run_id(cfg, state)
    return f"{'run ' + run_id if run_id else 'a new run'} | {ui_command(cfg)}"


class Tracker:
    """See the module docstring. Every public method is a no-op when tracking is off or not on the main rank."""

    def __init__(self, cfg, dist, run_dir: str, run_id: Optional[str] = None):
        self.enabled, self._cfg = bool(cfg.tracking.enabled and dist.is_main), cfg
        self._closed, self._mirror, self._tried = False, None, False
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
        old = self._old_cursor()
        goes_on = bool(old) and cfg.checkpoint.resume != "never" and run_id in (None, old["run_id"])
        if goes_on:
            rec = dict(old, status=None)
        else:
            end = os.path.getsize(log_path(self.run_dir)) if os.path.exists(log_path(self.run_dir)) else 0
            # A new training run starts after the old records; a run that goes on gets its records so far (a cursor
            # lost, broken or of another store: the backfill), run_id or not.
            found, start = (run_id, end) if cfg.checkpoint.resume == "never" else run_start(self.run_dir, self.uri,
                                                                                            run_id)
            rec = new_cursor(self.run_dir, self.uri, self._t.experiment, cfg.run.name, found, start,
                             stale=None if (old or {}).get("run_id") in (None, found) else  # its trainer is gone
                             [old["run_id"], old.get("status")], artifact_location=artifact_location)
        self._reopen = rec["run_id"] is not None
        self._mirror = Mirror(MlflowClient(tracking_uri=self.uri), self.run_dir, rec, config_params(cfg))
        # a sweep's run is a child of the sweep's run (tag read when the run is created; the UI nests it)
        parent = {"mlflow.parentRunId": self._t.parent_run_id} if self._t.parent_run_id else {}
        self._mirror.save(tags={**provenance_tags(dist, self.run_dir), **parent}, artifacts=rec.get("artifacts", []),
                          constants=["val_images"] + ([] if cfg.data.min_train_res else ["res"]))  # not charts
        self._status, self._monitor = None, None
        self._wake, self._first, self._abort = threading.Event(), threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self._thread.start()
        # A moment for the run to exist, so the first checkpoint carries its id; an absent server holds up no longer.
        self._first.wait(max(0.1, self._t.timeout_s) + 1.0)
        self._tried = True
        atexit.register(self.close, "FAILED")  # the interpreter exits without close(): a bug, an unhandled error

    def _old_cursor(self) -> Optional[dict]:
        """The cursor an earlier attempt left for this store, or None: a broken one is said (and made anew); one
        of another store (tracking.uri changed) is kept as that store's, for `sync --uri`."""
        old, problem = read_cursor(self.run_dir)
        if problem:
            log.warning("MLflow cursor %s; it is made anew from log.jsonl and the checkpoint", problem)
        if old and old["tracking_uri"] != self.uri:
            atomic_write(cursor_file(self.run_dir, old["tracking_uri"]), json.dumps(old) + "\n")
            old = None
        return old

    @property
    def run_id(self) -> Optional[str]:
        """The MLflow run id once the run exists (None while disabled or before the server answered)."""
        return self._mirror.run_id if self._mirror is not None else None

    @property
    def state(self) -> Optional[dict]:
        """What a checkpoint keeps of the tracker (plain values), for open_tracker on a resume."""
        return {"mlflow_run_id": self.run_id, "tracking_uri": self.uri} if self.run_id else None

    def describe(self) -> Optional[str]:
        """Where this tracker's run is now (None when tracking is off or not on this rank); never a run id that does
        not exist: before the store answered, what happens to the records."""
        if not self.enabled:
            return None
        if self.run_id:
            link = self._link()
            if link:
                return f"run {self.run_id} | {link}"
        if self.run_id or not self._tried:
            return describe(self._cfg, self.state)
        return (f"not created yet: {self.uri} has not answered; log.jsonl is sent when it does, or by: "
                f"python -m resnext_dist.tracking sync {self.run_dir}")

    def _link(self) -> Optional[str]:
        """The runs table of this run's experiment (the page to compare it with the others, best first), and for a
        local store the command that starts the UI there; None if the store does not say (then: the UI command)."""
        if getattr(self, "_runs_table", None) is None:
            try:
                exp_id = self._mirror.client.get_run(self.run_id).info.experiment_id
            except Exception:  # a link is no reason to fail; describe() falls back to the UI command
                return None
            self._runs_table = experiment_url(ui_address(self.uri), exp_id)
        if self.uri.startswith(("http://", "https://")):
            return self._runs_table
        return f"{self._runs_table}  (start the UI: {ui_start_line(self.run_dir)})"

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        """Upload a file or folder (read when sent), in the background; until then it is listed in the cursor."""
        if self.enabled and not self._closed:
            self._keep(self._mirror.add_artifact, os.path.abspath(path), artifact_path)
            self._wake.set()

    def log_model(self, export_dir: str, input_shape: Sequence[int]) -> None:
        """Log the run's export folder as the MLflow model "model" (mlflow_model.py: the model holds the export, so
        the MLflow run holds the final weights once), a zero batch of `input_shape` (2 or more images) its example,
        in the background; until then the request is in the cursor (so `sync` or the next attempt logs it, as the
        artifacts). With tracking.log_model=false the export is logged as the plain artifact export/ instead."""
        if not (self.enabled and not self._closed):
            return
        if not self._t.log_model:
            from resnext_dist.weights.layout import EXPORT_DIR  # here: weights/ imports torch, the tracker need not
            self.log_artifact(export_dir, EXPORT_DIR)
            return
        self._keep(self._mirror.save, model=model_request(os.path.abspath(export_dir), input_shape))
        self._wake.set()

    def _keep(self, save: Callable, *args, **fields) -> None:
        """A cursor save from the trainer's thread: a disk that refuses it costs the record, never the run."""
        try:
            save(*args, **fields)
        except OSError as e:
            log.warning("MLflow cursor %s not saved (%s); what it lists is sent by this process only",
                        self._mirror.path, e.strerror or e)

    def close(self, status: str = "FINISHED", give_up: Optional[Callable[[], bool]] = None) -> None:
        """Send the rest of log.jsonl and the artifacts, end the run; give up after tracking.close_timeout_s, or at
        once when `give_up()` says so (checked every 0.1 s: a signal during a hung close)."""
        if not self.enabled or self._closed:
            return
        self._closed, self._status = True, status if status in STATUSES else "FAILED"
        self._wake.set()
        deadline = time.monotonic() + max(0.0, self._t.close_timeout_s)
        while self._thread.is_alive() and time.monotonic() < deadline and not (give_up and give_up()):
            self._thread.join(min(0.1, max(0.0, deadline - time.monotonic())))
        if not self._thread.is_alive():
            return
        self._abort.set()
        self._keep(self._mirror.save, status=self._status)
        why = "stopped waiting on a signal" if give_up and give_up() else \
            f"did not take everything within {self._t.close_timeout_s:.0f} s"
        log.warning("MLflow at %s: %s; the rest is sent when this run resumes, or by: python -m "
                    "resnext_dist.tracking sync %s", self.uri, why, self.run_dir)

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
                    if is_full(e):
                        log.warning("MLflow's store at %s is full (%s); training goes on, what is not stored stays "
                                    "listed in %s: free space, then it is sent (or by: python -m "
                                    "resnext_dist.tracking sync %s)", self.uri, one_line(e, 200), m.path,
                                    self.run_dir)
                    else:
                        log.warning("MLflow at %s is not answering (%s); training goes on, log.jsonl is complete "
                                    "and is sent when it is back", self.uri, one_line(e, 300))
                longer = min(2 * backoff, self._t.retry_max_s)
                down, wait, backoff = True, min(backoff, 2.0) if status else backoff, longer
            self._wake.wait(wait)
            self._wake.clear()
