"""MLflow mirror of the run log: one MLflow run per training run, from rank 0, never in the way of training.

    tracker = Tracker(cfg, dist, run_dir, run_id=state.mlflow_run_id)   # no-op unless enabled and dist.is_main
    tracker.log_metrics({"loss": 2.3, "lr": 0.1}, step=global_step)     # returns at once, never raises
    tracker.log_artifact(os.path.join(run_dir, "config.yaml"))
    tracker.flush()                   # at each epoch end: retry what could not be sent yet
    tracker.close("FINISHED")         # | "FAILED" | "KILLED": final backfill, artifacts, end the run
    print(ui_command(cfg))            # mlflow ui --backend-store-uri sqlite:////abs/runs/mlflow.db

Where it goes: `tracking.uri` (any tracking server or store URI); empty = a sqlite store at
<run.root>/mlflow.db with artifacts in <run.root>/mlartifacts (absolute paths, so `ui_command` works from anywhere).

This file is the facade the trainer sees. The parts:
  worker.py  the background thread that makes every MLflow call: queue, backoff, backfill, system metrics
  remote.py  the MLflow run (create, reopen, params and tags) and the no-duplicate-steps guarantee
  outbox.py  mlflow_run.json and mlflow_outbox.jsonl in the run dir (what close() could not send)
  format.py  params, tags and metric names within MLflow's limits
  sync.py, __main__.py  `python -m resnext_dist.tracking sync RUN_DIR`: deliver an outbox after the fact

The run id is kept in the checkpoint (the trainer passes it back as `run_id`) and in <run dir>/mlflow_run.json,
which covers a crash before the first checkpoint: with run_id=None and checkpoint.resume != never, the run
recorded there (same tracking URI) is reopened. Tags: git commit and dirty flag, world size, nodes, device,
Slurm job id, host, versions (provenance.py).

mlflow is imported only when a Tracker is enabled on the main rank (the import takes seconds).
"""
from __future__ import annotations

import atexit
import logging
import os
import shlex
import time
from typing import Any, Dict, Optional

from resnext_dist.provenance import provenance_tags
from resnext_dist.tracking.format import (MAX_KEY, MAX_PARAM_VALUE, MAX_TAG_VALUE, METRICS_PER_BATCH,
                                          PARAMS_TAGS_PER_BATCH, Point, config_params, metric_key)
from resnext_dist.tracking.outbox import OUTBOX_FILE, RUN_FILE, outbox_paths, read_outbox, recorded_run_id
from resnext_dist.tracking.remote import RemoteRun, configure_http
from resnext_dist.tracking.sync import sync_outbox
from resnext_dist.tracking.worker import Sender

__all__ = [
    "Tracker", "resolve_uri", "default_artifact_location", "ui_command", "config_params", "metric_key",
    "sync_outbox", "outbox_paths", "read_outbox", "STATUSES", "RUN_FILE", "OUTBOX_FILE", "METRICS_PER_BATCH",
    "PARAMS_TAGS_PER_BATCH", "MAX_PARAM_VALUE", "MAX_TAG_VALUE", "MAX_KEY", "Point",
]

log = logging.getLogger(__name__)

STATUSES = ("FINISHED", "FAILED", "KILLED")


def resolve_uri(cfg) -> str:
    """`tracking.uri`, or the default sqlite store in the runs root (absolute)."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    return "sqlite:///" + os.path.join(os.path.abspath(cfg.run.root), "mlflow.db")


def default_artifact_location(cfg) -> Optional[str]:
    """Artifacts next to the default store; a configured store or server decides for itself."""
    if cfg.tracking.uri:
        return None
    return os.path.join(os.path.abspath(cfg.run.root), "mlartifacts")


def ui_command(cfg) -> str:
    """The command that shows the runs in a browser; for a tracking server, its address (its UI is already up)."""
    uri = resolve_uri(cfg)
    if uri.startswith(("http://", "https://")):
        return uri
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)}"


class Tracker:
    """See the module docstring. Every public method is a no-op when tracking is off or not on the main rank."""

    def __init__(self, cfg, dist, run_dir: str, run_id: Optional[str] = None):
        self.enabled = bool(cfg.tracking.enabled and dist.is_main)
        self._closed = False
        self._remote: Optional[RemoteRun] = None
        if not self.enabled:
            return
        t = cfg.tracking
        self.uri = resolve_uri(cfg)
        self.run_dir = os.path.abspath(run_dir)
        timeout_s = max(0.1, float(t.timeout_s))
        resume_never = cfg.checkpoint.resume == "never"
        # No run id from a checkpoint: the run of an earlier attempt that died before its first checkpoint.
        wanted = run_id or (None if resume_never else recorded_run_id(self.run_dir, self.uri))
        self._remote = RemoteRun(self.uri, self.run_dir, t.experiment, cfg.run.name, default_artifact_location(cfg),
                                 config_params(cfg), provenance_tags(dist, self.run_dir), wanted)
        self._key_cache: Dict[str, str] = {}

        configure_http(timeout_s)
        os.makedirs(self.run_dir, exist_ok=True)
        if self.uri.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(self.uri[len("sqlite:///"):]) or ".", exist_ok=True)
        try:
            import mlflow  # noqa: F401  (seconds: only here, on the main rank, when enabled)
        except Exception as e:
            log.warning("MLflow tracking off: cannot import mlflow (%s); log.jsonl is still written", e)
            self.enabled = False
            return
        self._sender = Sender(self._remote, resume_never=resume_never,
                              close_timeout_s=max(0.0, float(t.close_timeout_s)),
                              system_metrics=bool(t.system_metrics),
                              interval_s=max(0.1, float(t.system_metrics_interval_s)))
        self._sender.start()
        # Give the run a moment to exist so the first checkpoint can carry its id; a slow or absent
        # server (or a fresh sqlite store, ~15 s of migrations) does not hold training up longer.
        self._sender.first_try.wait(timeout_s + 1.0)
        atexit.register(self._at_exit)

    @property
    def run_id(self) -> Optional[str]:
        """The MLflow run id once the run exists (None while disabled or before the server answered)."""
        return self._remote.run_id if self._remote is not None else None

    def log_metrics(self, metrics: Dict[str, Any], step: int) -> None:
        """Queue numeric values at `step` (global step); non-numeric values are skipped. Never blocks or raises."""
        if not self.enabled or self._closed:
            return
        try:
            ts = int(time.time() * 1000)
            step = int(step)
            points = []
            for key, value in metrics.items():
                try:
                    value = float(value)
                except Exception:  # strings, multi-element tensors, None: not a metric
                    continue
                name = self._key_cache.get(key)
                if name is None:
                    name = self._key_cache[key] = metric_key(key)
                points.append((name, value, ts, step))
            self._sender.put(points)
        except Exception as e:  # tracking must never break a training step
            log.debug("log_metrics failed: %s", e)

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        """Upload a file or folder (read when sent: a growing log goes as it is then). Best effort, never blocks."""
        if not self.enabled or self._closed:
            return
        self._sender.add_artifact(os.path.abspath(path), artifact_path)

    def flush(self) -> None:
        """Retry now what could not be sent (backfill) and wait up to ~1 s for the queue to drain."""
        if not self.enabled or self._closed:
            return
        self._sender.flush()

    def close(self, status: str = "FINISHED") -> None:
        """Send everything, end the run with `status`; after `tracking.close_timeout_s`, spool the rest."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if status not in STATUSES:
            log.warning("unknown MLflow run status %r; using FAILED", status)
            status = "FAILED"
        self._sender.close(status)

    def _at_exit(self) -> None:
        # The interpreter is exiting without close() (a bug or an unhandled error): don't leave it RUNNING.
        if self.enabled and not self._closed:
            self.close("FAILED")
