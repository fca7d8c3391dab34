"""MLflow mirror of the run log: one MLflow run per training run, from rank 0, never in the way of training.

    tracker = Tracker(cfg, dist, run_dir, run_id=state.mlflow_run_id)   # no-op unless enabled and dist.is_main
    tracker.log_metrics({"loss": 2.3, "lr": 0.1}, step=global_step)     # returns at once, never raises
    tracker.log_artifact(os.path.join(run_dir, "config.yaml"))
    tracker.flush()                   # at each epoch end: retry what could not be sent yet
    tracker.close("FINISHED")         # | "FAILED" | "KILLED": final backfill, artifacts, end the run
    print(ui_command(cfg))            # mlflow ui --backend-store-uri sqlite:////abs/runs/mlflow.db

Where it goes: `tracking.uri` (any tracking server or store URI); empty = a sqlite store at
<run.root>/mlflow.db with artifacts in <run.root>/mlartifacts (absolute paths, so `ui_command` works from anywhere).

How it stays out of the way. log.jsonl (runlog.py) is the record; this is a mirror. Every MLflow call runs in one
background thread that owns the MlflowClient; the training thread only appends (key, value, time, step) to a
queue under a lock, so a log call costs microseconds whatever the server does. We use our own thread rather than
MLflow's async logging (`synchronous=False`) because MLflow's queue drops a batch whose request failed, while
we must keep it and send it again when the server is back ("backfill"), and because run creation, params and
artifacts must not block either. MLflow's own HTTP retries (7 retries, 120 s timeout by default: minutes per
call, mlflow#1550) are turned off for this process: one request waits at most `tracking.timeout_s`, and the
worker retries with its own backoff (1 s doubling to 30 s), at once on `flush()`, and until
`tracking.close_timeout_s` at `close()`. An outage gives ONE warning per Tracker (later outages and the
recovery are logged at INFO). What is still unsent when close gives up is written to
<run dir>/mlflow_outbox.jsonl, delivered by the next attempt of the same run (resume, requeue) or by
`python -m resnext_dist.tracking sync RUN_DIR`.

One MLflow run per training run. The run id is kept in the checkpoint (the trainer passes it back) and in
<run dir>/mlflow_run.json, which covers a crash before the first checkpoint: with run_id=None and
checkpoint.resume != never, the run recorded there (same tracking URI) is reopened. Reopening sets the run
RUNNING again, adds the params it lacks, refreshes the per-attempt tags and counts attempts in the `attempt` tag.
A run created through a request whose answer was lost is found again by its `launch_id` tag, not created twice.

No duplicate steps (what we guarantee): for every metric key, MLflow holds at most one value per step, and the
steps of each key only grow. Points go out in the order they were logged, so what MLflow holds of a key is a
prefix of what was logged; before sending, the worker drops any (key, step) at or below the highest step the run
already holds for that key (read from the server on reopen, and after any failed request, whose batch may or may
not have been stored). So after a resume from step k, where the crashed attempt had got its points to MLflow up
to step m: steps <= m keep the crashed attempt's values (equal to the resumed ones when training is
deterministic) and the resumed attempt's points from m+1 on are added. History complete: an outage is backfilled
by the same process, or via the outbox when it ends with close() (exception, signal, normal end). Not covered: a
process killed outright (SIGKILL, node loss) *during* an outage loses its unsent backlog; if the resume then
starts past it (k > m), MLflow has a gap (m, k] that only log.jsonl holds, which keeps every attempt's records.

Params: the flattened resolved config (config.to_flat_dict), values cut to MLflow's 6000 characters. Tags: git
commit and dirty flag, world size, nodes, device, Slurm job id, host, versions (provenance.py). System metrics:
MLflow's SystemMetricsMonitor (CPU, memory, disk, network, GPU through pynvml), restarted at `flush()` if an
outage stopped it.

mlflow is imported only when a Tracker is enabled on the main rank (the import takes seconds).
"""
from __future__ import annotations

import atexit
import collections
import glob
import json
import logging
import math
import os
import re
import shlex
import sys
import threading
import time
import uuid
from typing import Any, Deque, Dict, List, Optional, Tuple

from resnext_dist.config import to_flat_dict
from resnext_dist.provenance import provenance_tags

log = logging.getLogger(__name__)

STATUSES = ("FINISHED", "FAILED", "KILLED")
RUN_FILE = "mlflow_run.json"
OUTBOX_FILE = "mlflow_outbox.jsonl"

# MLflow's request limits (mlflow/utils/validation.py).
METRICS_PER_BATCH = 1000
PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250

FLUSH_WAIT_S = 1.0          # flush() waits at most this long for the queue to drain
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 30.0
MAX_PENDING = 2_000_000     # ~200 MB of queued points; beyond, new points are dropped (log.jsonl has them)

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")  # what MLflow accepts in metric names

Point = Tuple[str, float, int, int]  # key, value, timestamp (ms), step


# ----------------------------------------------------------------------------------------------
# Where the runs go


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


# ----------------------------------------------------------------------------------------------
# Formatting params, tags and metric names for MLflow's limits


def config_params(cfg) -> Dict[str, str]:
    """The flattened resolved config as MLflow params: nested dicts flattened, values as strings, cut to size."""
    out: Dict[str, str] = {}

    def add(key: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                add(f"{key}.{k}", v)
            return
        text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
        out[key[:MAX_KEY]] = _cut(text, MAX_PARAM_VALUE)

    for key, value in to_flat_dict(cfg).items():
        add(key, value)
    return out


def metric_key(key: str) -> str:
    """A name MLflow accepts: bad characters become '_', no empty or path-like parts, at most 250 characters."""
    clean = _BAD_KEY_CHARS.sub("_", str(key)).strip("/") or "_"
    clean = re.sub(r"/+", "/", clean)
    parts = [p if p not in (".", "..") else "_" for p in clean.split("/")]
    return "/".join(parts)[:MAX_KEY]


def _cut(text: str, limit: int) -> str:
    mark = "...(truncated)"
    return text if len(text) <= limit else text[: limit - len(mark)] + mark


def _is_permanent(exc: BaseException) -> bool:
    """A request the server (or the client's validation) refused for good: retrying cannot help.

    4xx answers except 408/429; network errors, timeouts and 5xx are transient (MLflow maps them to 500).
    """
    try:
        from mlflow.exceptions import MlflowException
    except Exception:
        return False
    if not isinstance(exc, MlflowException):
        return False
    try:
        status = exc.get_http_status_code()
    except Exception:
        return False
    return 400 <= status < 500 and status not in (408, 429)


def _configure_http(timeout_s: float) -> None:
    """Short requests, no in-request retries: our worker retries, so one call never hangs for minutes.

    Process-wide on purpose (rank 0 is the only process that talks to MLflow, and the system-metrics
    monitor should fail as fast). MLflow reads these at each request.
    """
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(timeout_s)))  # MLflow parses an int
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "0"


# ----------------------------------------------------------------------------------------------
# The tracker


class Tracker:
    """See the module docstring. Every public method is a no-op when tracking is off or not on the main rank."""

    def __init__(self, cfg, dist, run_dir: str, run_id: Optional[str] = None):
        self.enabled = bool(cfg.tracking.enabled and dist.is_main)
        self._run_id: Optional[str] = None
        self._closed = False
        if not self.enabled:
            return
        t = cfg.tracking
        self.uri = resolve_uri(cfg)
        self.run_dir = os.path.abspath(run_dir)
        self._cfg = cfg
        self._timeout_s = max(0.1, float(t.timeout_s))
        self._close_timeout_s = max(0.0, float(t.close_timeout_s))
        self._experiment = t.experiment
        self._artifact_location = default_artifact_location(cfg)
        self._system_metrics = bool(t.system_metrics)
        self._system_metrics_interval_s = max(0.1, float(t.system_metrics_interval_s))
        self._params = config_params(cfg)
        self._tags = provenance_tags(dist, self.run_dir)
        self._launch_id = uuid.uuid4().hex
        self._wanted_run_id = run_id or self._recorded_run_id(cfg)

        # Shared with the worker thread; guarded by _cv.
        self._cv = threading.Condition()
        self._pending: Deque[Point] = collections.deque()
        self._inflight: List[Point] = []
        self._artifacts: Deque[Tuple[str, Optional[str]]] = collections.deque()
        self._closing: Optional[str] = None
        self._abort = False
        self._done = False
        self._next_try = 0.0
        self._restart_monitor = False
        self._dropped = 0

        # Owned by the worker thread.
        self._client = None
        self._experiment_id: Optional[str] = None
        self._create_tried = False
        self._reopened = False
        self._annotated = False
        self._outbox_loaded = False
        self._hwm: Dict[str, int] = {}   # highest step MLflow holds per key
        self._hwm_stale = False          # a request failed: what it stored is unknown until re-read
        self._monitor = None
        self._down = False
        self._warned = False
        self._backoff = BACKOFF_MIN_S
        self._first_try = threading.Event()
        self._key_cache: Dict[str, str] = {}

        _configure_http(self._timeout_s)
        os.makedirs(self.run_dir, exist_ok=True)
        if self.uri.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(self.uri[len("sqlite:///"):]) or ".", exist_ok=True)
        try:
            import mlflow  # noqa: F401  (seconds: only here, on the main rank, when enabled)
        except Exception as e:
            log.warning("MLflow tracking off: cannot import mlflow (%s); log.jsonl is still written", e)
            self.enabled = False
            return
        self._thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self._thread.start()
        # Give the run a moment to exist so the first checkpoint can carry its id; a slow or absent
        # server (or a fresh sqlite store, ~15 s of migrations) does not hold training up longer.
        self._first_try.wait(self._timeout_s + 1.0)
        atexit.register(self._at_exit)

    # -- public API (training thread) ----------------------------------------------------------

    @property
    def run_id(self) -> Optional[str]:
        """The MLflow run id once the run exists (None while disabled or before the server answered)."""
        return self._run_id

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
            with self._cv:
                room = MAX_PENDING - len(self._pending)
                if room < len(points):
                    if not self._dropped:
                        log.warning("MLflow backlog full (%d points): newer points are kept in log.jsonl only",
                                    MAX_PENDING)
                    self._dropped += len(points) - max(room, 0)
                    points = points[:max(room, 0)]
                self._pending.extend(points)
                self._cv.notify_all()
        except Exception as e:  # tracking must never break a training step
            log.debug("log_metrics failed: %s", e)

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        """Upload a file or folder (read when sent: a growing log goes as it is then). Best effort, never blocks."""
        if not self.enabled or self._closed:
            return
        with self._cv:
            self._artifacts.append((os.path.abspath(path), artifact_path))
            self._cv.notify_all()

    def flush(self) -> None:
        """Retry now what could not be sent (backfill) and wait up to ~1 s for the queue to drain."""
        if not self.enabled or self._closed:
            return
        deadline = time.monotonic() + FLUSH_WAIT_S
        with self._cv:
            self._next_try = 0.0
            self._restart_monitor = self._system_metrics
            self._cv.notify_all()
            while (self._pending or self._inflight) and not self._done:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)

    def close(self, status: str = "FINISHED") -> None:
        """Send everything, end the run with `status`; after `tracking.close_timeout_s`, spool the rest."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if status not in STATUSES:
            log.warning("unknown MLflow run status %r; using FAILED", status)
            status = "FAILED"
        deadline = time.monotonic() + self._close_timeout_s
        with self._cv:
            self._closing = status
            self._next_try = 0.0
            self._cv.notify_all()
            while not self._done:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            if self._done:
                return
            self._abort = True  # the worker stops after its current request (<= timeout_s)
            points = list(self._inflight) + list(self._pending)
            artifacts = list(self._artifacts)
            self._pending.clear()
            self._artifacts.clear()
            self._cv.notify_all()
        self._spool(status, points, artifacts)

    # -- the worker thread ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._abort and not self._due():
                    wait = self._next_try - time.monotonic() if self._has_work() else None
                    self._cv.wait(None if wait is None else max(0.05, wait))
                if self._abort:
                    return
                closing = self._closing
            try:
                self._setup()
                self._send_metrics()
                self._send_artifacts()
                self._maybe_restart_monitor()
                self._mark_up()
                if closing is not None:
                    with self._cv:
                        more = self._pending or self._artifacts
                    if not more:
                        self._finish(closing)
                        return
            except Exception as e:
                self._mark_down(e)
            finally:
                self._first_try.set()

    def _has_work(self) -> bool:
        return bool(self._pending or self._artifacts or self._closing or self._restart_monitor
                    or self._run_id is None or not self._annotated or not self._outbox_loaded)

    def _due(self) -> bool:
        return self._has_work() and time.monotonic() >= self._next_try

    def _mark_down(self, exc: BaseException) -> None:
        self._hwm_stale = True
        with self._cv:
            self._next_try = time.monotonic() + (min(self._backoff, 2.0) if self._closing else self._backoff)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        if not self._down:
            self._down = True
            msg = _one_line(exc)
            if not self._warned:
                self._warned = True
                log.warning("MLflow at %s is not answering (%s); training goes on, metrics are kept and sent "
                            "when it is back (log.jsonl is complete)", self.uri, msg)
            else:
                log.info("MLflow at %s is not answering again (%s)", self.uri, msg)

    def _mark_up(self) -> None:
        self._backoff = BACKOFF_MIN_S
        if self._down:
            self._down = False
            log.info("MLflow at %s answers again; backlog sent", self.uri)

    def _mlflow_client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # -- setup: experiment, run, params, tags, outbox (each step done once, retried until it succeeds)

    def _setup(self) -> None:
        client = self._mlflow_client()
        if self._run_id is None:
            run_id = self._reopen(client, self._wanted_run_id) if self._wanted_run_id else None
            if run_id is None:
                self._experiment_id = self._experiment_id or self._ensure_experiment(client)
                run_id = self._create(client)
            else:
                self._reopened = True
            self._run_id = run_id
            self._write_run_file()
            self._hwm_stale = self._reopened
            log.info("MLflow run %s %s (%s)", self._run_id, "reopened" if self._reopened else "created", self.uri)
        if not self._annotated:
            self._annotate(client)
            self._annotated = True
        if self._hwm_stale:
            self._refresh_hwm(client)
        if not self._outbox_loaded:
            self._load_outbox()
            self._outbox_loaded = True
        if self._system_metrics and self._monitor is None and self._closing is None:
            self._start_monitor()

    def _ensure_experiment(self, client) -> str:
        exp = client.get_experiment_by_name(self._experiment)
        if exp is None:
            try:
                return client.create_experiment(self._experiment, artifact_location=self._artifact_location)
            except Exception as e:
                exp = client.get_experiment_by_name(self._experiment)  # another run created it meanwhile
                if exp is None:
                    raise e
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def _reopen(self, client, run_id: str) -> Optional[str]:
        """RUNNING again; None if the run cannot be continued here (unknown to this store, or deleted)."""
        try:
            run = client.get_run(run_id)
        except Exception as e:
            if not _is_permanent(e):
                raise
            log.warning("MLflow run %s not found at %s (%s); starting a new run", run_id, self.uri, _one_line(e))
            return None
        if run.info.lifecycle_stage == "deleted":
            log.warning("MLflow run %s was deleted; starting a new run", run_id)
            return None
        client.update_run(run_id, status="RUNNING")
        self._experiment_id = run.info.experiment_id
        self._previous_params = dict(run.data.params)
        self._attempt = int(run.data.tags.get("attempt", "1") or 1) + 1
        return run_id

    def _create(self, client) -> str:
        if self._create_tried:  # an earlier create may have reached the server and lost its answer
            found = client.search_runs([self._experiment_id],
                                       filter_string=f"tags.launch_id = '{self._launch_id}'", max_results=1)
            if found:
                return found[0].info.run_id
        self._create_tried = True
        tags = dict(self._tags, launch_id=self._launch_id, attempt="1")
        run = client.create_run(self._experiment_id, run_name=self._cfg.run.name,
                                tags={k: _cut(v, MAX_TAG_VALUE) for k, v in tags.items()})
        self._previous_params = {}
        self._attempt = 1
        return run.info.run_id

    def _annotate(self, client) -> None:
        """Params the run lacks; on reopen, this attempt's tags and the config keys that changed."""
        missing = {k: v for k, v in self._params.items() if k not in self._previous_params}
        changed = {k: v for k, v in self._params.items()
                   if k in self._previous_params and self._previous_params[k] != v}
        tags: Dict[str, str] = {}
        if self._reopened:
            tags.update(self._tags, attempt=str(self._attempt))
            if changed:
                log.warning("config changed on resume (%s); MLflow params keep the first values, the new ones "
                            "are in the tag 'changed_on_attempt_%d'", ", ".join(sorted(changed)), self._attempt)
                tags[f"changed_on_attempt_{self._attempt}"] = json.dumps(changed)
        _log_params_tags(client, self._run_id, missing, tags)

    def _refresh_hwm(self, client) -> None:
        """Highest stored step per key, from the run's latest metrics (one request, not the whole history)."""
        data = client.get_run(self._run_id).data
        objs = getattr(data, "_metric_objs", None)
        if objs is None:  # an MLflow without the step in RunData: read the histories
            objs = [m for key in data.metrics for m in client.get_metric_history(self._run_id, key)]
        for m in objs:
            self._hwm[m.key] = max(self._hwm.get(m.key, -sys.maxsize), int(m.step))
        self._hwm_stale = False

    # -- sending ---------------------------------------------------------------------------------

    def _send_metrics(self) -> None:
        from mlflow.entities import Metric

        client = self._client
        while True:
            with self._cv:
                if self._abort or not self._pending:
                    return
                n = min(METRICS_PER_BATCH, len(self._pending))
                batch = [self._pending.popleft() for _ in range(n)]
                self._inflight = batch
            keep, top = [], {}
            for key, value, ts, step in batch:
                if step > top.get(key, self._hwm.get(key, -sys.maxsize)):
                    top[key] = step
                    keep.append(Metric(key, value, ts, step))
            try:
                if keep:
                    client.log_batch(self._run_id, metrics=keep)
            except Exception as e:
                if _is_permanent(e):
                    log.warning("MLflow refused %d metric points (%s); they are in log.jsonl only",
                                len(keep), _one_line(e))
                else:
                    with self._cv:
                        self._pending.extendleft(reversed(batch))
                        self._inflight = []
                    raise
            else:
                self._hwm.update(top)
            with self._cv:
                self._inflight = []
                self._cv.notify_all()

    def _send_artifacts(self) -> None:
        while True:
            with self._cv:
                if self._abort or not self._artifacts:
                    return
                path, artifact_path = self._artifacts[0]
            if not os.path.exists(path):
                log.warning("MLflow artifact %s does not exist; skipped", path)
            else:
                try:
                    if os.path.isdir(path):  # a folder: its files, under the folder's name
                        self._client.log_artifacts(self._run_id, path,
                                                   artifact_path or os.path.basename(path.rstrip("/")))
                    else:
                        self._client.log_artifact(self._run_id, path, artifact_path)
                except Exception as e:
                    if not _is_permanent(e):
                        raise
                    log.warning("MLflow refused artifact %s (%s)", path, _one_line(e))
            with self._cv:
                self._artifacts.popleft()

    def _finish(self, status: str) -> None:
        self._stop_monitor()
        self._client.set_terminated(self._run_id, status)
        log.info("MLflow run %s ended: %s", self._run_id, status)
        with self._cv:
            self._done = True
            self._cv.notify_all()

    # -- system metrics --------------------------------------------------------------------------

    def _start_monitor(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # resume_logging: continue the run's system-metric steps (a reopened run, or a restart after an outage)
        self._monitor = SystemMetricsMonitor(self._run_id, sampling_interval=self._system_metrics_interval_s,
                                             resume_logging=True, tracking_uri=self.uri)
        self._monitor.start()

    def _maybe_restart_monitor(self) -> None:
        with self._cv:
            wanted, self._restart_monitor = self._restart_monitor, False
        if wanted and self._closing is None and self._monitor is not None:
            thread = getattr(self._monitor, "_process", None)
            if thread is None or not thread.is_alive():  # it gives up after one failed request
                self._monitor = None
                self._start_monitor()

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as e:
                log.debug("system metrics monitor: %s", e)
            self._monitor = None

    # -- files in the run dir --------------------------------------------------------------------

    def _recorded_run_id(self, cfg) -> Optional[str]:
        """The run of an earlier attempt that died before its first checkpoint (same run dir, same URI)."""
        return None if cfg.checkpoint.resume == "never" else _recorded(self.run_dir, self.uri)

    def _write_run_file(self) -> None:
        rec = {"run_id": self._run_id, "tracking_uri": self.uri, "experiment_id": self._experiment_id}
        _atomic_write(os.path.join(self.run_dir, RUN_FILE), json.dumps(rec) + "\n")

    def _spool(self, status: str, points: List[Point], artifacts) -> None:
        """Keep what close could not send, for the next attempt or `python -m resnext_dist.tracking sync`."""
        mine = []  # outboxes of this run that no attempt could deliver yet: merged, older points first
        for p in outbox_paths(self.run_dir):
            header, old_points, old_artifacts = read_outbox(p)
            if header is not None and self._owns(header):
                mine.append(p)
                points, artifacts = old_points + points, old_artifacts + artifacts
        path = mine[0] if mine else os.path.join(self.run_dir, OUTBOX_FILE)
        if os.path.exists(path) and not mine:  # another run's (e.g. after resume=never): leave it alone
            path = os.path.join(self.run_dir, f"mlflow_outbox-{self._run_id or self._launch_id}.jsonl")
        header = {"run_id": self._run_id, "launch_id": self._launch_id, "tracking_uri": self.uri,
                  "status": status, "experiment": self._experiment, "run_name": self._cfg.run.name}
        if self._run_id is None or not self._annotated:  # the run never got its params and tags
            header.update(params=self._params, tags=dict(self._tags, launch_id=self._launch_id, attempt="1"),
                          artifact_location=self._artifact_location)
        lines = [json.dumps(header)]
        lines += [json.dumps({"metric": k, "value": v, "timestamp": t, "step": s}) for k, v, t, s in points]
        lines += [json.dumps({"artifact": p, "artifact_path": a}) for p, a in artifacts]
        try:
            _atomic_write(path, "\n".join(lines) + "\n")
            for extra in mine[1:]:
                os.remove(extra)
        except OSError as e:
            log.warning("could not write %s: %s", path, e)
            return
        log.warning("MLflow at %s did not take everything within %.0f s: %d metric points and %d artifacts "
                    "saved to %s; the run is not marked %s yet. They are sent when this run resumes, or by: "
                    "python -m resnext_dist.tracking sync %s", self.uri, self._close_timeout_s, len(points),
                    len(artifacts), path, status, self.run_dir)

    def _load_outbox(self) -> None:
        """Queue what earlier attempts of this run could not send (older points first)."""
        for path in outbox_paths(self.run_dir):
            header, points, artifacts = read_outbox(path)
            # run_id None: no earlier attempt ever reached MLflow; unless resume=never, this run continues it.
            orphan = header is not None and header.get("run_id") is None and self._cfg.checkpoint.resume != "never"
            if header is None or not (orphan or header.get("run_id") == self._run_id):
                continue
            with self._cv:
                self._pending.extendleft(reversed(points))
                self._artifacts.extendleft(reversed(artifacts))
            os.remove(path)
            log.info("MLflow: %d metric points and %d artifacts from %s queued", len(points), len(artifacts),
                     path)

    def _owns(self, header: dict) -> bool:
        """Whether an outbox is this run's: same run id, or written by this very Tracker before the run existed."""
        if self._run_id is not None:
            return header.get("run_id") == self._run_id
        return header.get("run_id") is None and header.get("launch_id") == self._launch_id

    def _at_exit(self) -> None:
        # The interpreter is exiting without close() (a bug or an unhandled error): don't leave it RUNNING.
        if self.enabled and not self._closed:
            self.close("FAILED")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


# ----------------------------------------------------------------------------------------------
# `python -m resnext_dist.tracking sync RUN_DIR`: deliver an outbox after the fact


def sync_outbox(run_dir: str, timeout_s: float = 30.0) -> int:
    """Send the run dir's outboxes to their runs (no duplicate steps) and end those runs; 0 = all sent."""
    run_dir = os.path.abspath(run_dir)
    paths = outbox_paths(run_dir)
    if not paths:
        print(f"nothing to send: no {os.path.join(run_dir, OUTBOX_FILE)}")
        return 0
    _configure_http(timeout_s)
    for path in paths:
        _sync_one(run_dir, path)
    return 0


def _sync_one(run_dir: str, path: str) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    header, points, artifacts = read_outbox(path)
    if header is None:
        return
    client = MlflowClient(tracking_uri=header["tracking_uri"])
    run_id = header["run_id"]
    if run_id is None:  # written before the run existed: the run dir's run if any, else create it now
        run_id = _recorded(run_dir, header["tracking_uri"])
        if run_id is None:
            run_id = _create_from_header(client, header)
            _atomic_write(os.path.join(run_dir, RUN_FILE),
                          json.dumps({"run_id": run_id, "tracking_uri": header["tracking_uri"]}) + "\n")
        else:
            _log_params_tags(client, run_id, {k: v for k, v in header.get("params", {}).items()
                                              if k not in client.get_run(run_id).data.params}, {})
    elif header.get("params"):  # the run exists but never got its params and tags
        have = client.get_run(run_id).data.params
        _log_params_tags(client, run_id, {k: v for k, v in header["params"].items() if k not in have},
                         header.get("tags", {}))
    data = client.get_run(run_id).data
    hwm = {m.key: int(m.step) for m in getattr(data, "_metric_objs", [])}
    keep = []
    for key, value, ts, step in points:
        if step > hwm.get(key, -sys.maxsize):
            hwm[key] = step
            keep.append(Metric(key, value, ts, step))
    for i in range(0, len(keep), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=keep[i:i + METRICS_PER_BATCH])
    for p, a in artifacts:
        if os.path.isdir(p):
            client.log_artifacts(run_id, p, a or os.path.basename(p.rstrip("/")))
        elif os.path.isfile(p):
            client.log_artifact(run_id, p, a)
    status = header.get("status", "FINISHED")
    client.set_terminated(run_id, status)
    os.remove(path)
    print(f"{os.path.basename(path)}: sent {len(keep)} metric points and {len(artifacts)} artifacts to run "
          f"{run_id}; status {status}")


def _recorded(run_dir: str, uri: str) -> Optional[str]:
    """The run id in <run_dir>/mlflow_run.json if it was recorded for `uri`."""
    try:
        with open(os.path.join(run_dir, RUN_FILE)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec.get("run_id") if rec.get("tracking_uri") == uri else None


def _create_from_header(client, header) -> str:
    exp = client.get_experiment_by_name(header["experiment"])
    exp_id = exp.experiment_id if exp else client.create_experiment(
        header["experiment"], artifact_location=header.get("artifact_location"))
    tags = {k: _cut(v, MAX_TAG_VALUE) for k, v in header.get("tags", {}).items()}
    run_id = client.create_run(exp_id, run_name=header.get("run_name"), tags=tags).info.run_id
    _log_params_tags(client, run_id, header.get("params", {}), {})
    return run_id


def _log_params_tags(client, run_id, params: Dict[str, str], tags: Dict[str, str]) -> None:
    from mlflow.entities import Param, RunTag

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + PARAMS_TAGS_PER_BATCH])
    tag_items = [RunTag(k, _cut(v, MAX_TAG_VALUE)) for k, v in tags.items()]
    for i in range(0, len(tag_items), PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=tag_items[i:i + PARAMS_TAGS_PER_BATCH])


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m resnext_dist.tracking",
                                     description="MLflow helpers for resnext_dist run directories")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_sync = sub.add_parser("sync", help="send what a run could not send to MLflow (its mlflow_outbox.jsonl)")
    p_sync.add_argument("run_dir")
    p_sync.add_argument("--timeout-s", type=float, default=30.0, help="HTTP timeout of one request")
    args = parser.parse_args(argv)
    try:
        return sync_outbox(args.run_dir, args.timeout_s)
    except Exception as e:
        print(f"sync failed: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
