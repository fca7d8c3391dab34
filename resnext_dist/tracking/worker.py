"""The background sender: one thread that makes every MLflow call, so tracking never holds training up.

    sender = Sender(remote, resume_never=False, close_timeout_s=60, system_metrics=True, interval_s=10)
    sender.start(); sender.first_try.wait(timeout_s + 1)
    sender.put(points)          # training thread: append under a lock, microseconds whatever the server does
    sender.flush()              # retry now, wait up to ~1 s for the queue to drain
    sender.close("FINISHED")    # send the rest and end the run, or spool it to the outbox

log.jsonl (runlog.py) is the record; MLflow is a mirror. We use our own thread rather than MLflow's async
logging (`synchronous=False`) because MLflow's queue drops a batch whose request failed, while we must keep it
and send it again when the server is back ("backfill"), and because run creation, params and artifacts must not
block either. One request waits at most `tracking.timeout_s` (remote.configure_http), and the worker retries
with its own backoff (1 s doubling to 30 s), at once on `flush()`, and until `tracking.close_timeout_s` at
`close()`. An outage gives ONE warning per Sender (later outages and the recovery are logged at INFO). What is
still unsent when close gives up is written to the run dir's outbox (outbox.py), and what earlier attempts of
the run left there is queued first.

System metrics: MLflow's SystemMetricsMonitor (CPU, memory, disk, network, GPU through pynvml), started by the
worker once the run exists, restarted at `flush()` if an outage stopped it.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Deque, List, Optional, Tuple

from resnext_dist.errors import one_line
from resnext_dist.tracking.format import METRICS_PER_BATCH, Point
from resnext_dist.tracking.outbox import outbox_paths, read_outbox, save_outbox
from resnext_dist.tracking.remote import RemoteRun

log = logging.getLogger(__package__)  # one logger for all of tracking: callers and tests filter on it

FLUSH_WAIT_S = 1.0          # flush() waits at most this long for the queue to drain
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 30.0
MAX_PENDING = 2_000_000     # ~200 MB of queued points; beyond, new points are dropped (log.jsonl has them)


class Sender:
    """The queue between the training thread and the worker thread, and the worker itself."""

    def __init__(self, remote: RemoteRun, resume_never: bool, close_timeout_s: float, system_metrics: bool,
                 interval_s: float):
        self._remote = remote
        self._resume_never = resume_never
        self._close_timeout_s = close_timeout_s
        self._system_metrics = system_metrics
        self._system_metrics_interval_s = interval_s

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
        self._outbox_loaded = False
        self._monitor = None
        self._down = False
        self._warned = False
        self._backoff = BACKOFF_MIN_S
        self.first_try = threading.Event()  # set after the worker's first attempt, whatever its outcome
        self._thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- training thread -------------------------------------------------------------------------

    def put(self, points: List[Point]) -> None:
        """Queue points; beyond MAX_PENDING the newest are dropped (one warning)."""
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

    def add_artifact(self, path: str, artifact_path: Optional[str]) -> None:
        with self._cv:
            self._artifacts.append((path, artifact_path))
            self._cv.notify_all()

    def flush(self) -> None:
        """Retry now what could not be sent (backfill) and wait up to FLUSH_WAIT_S for the queue to drain."""
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

    def close(self, status: str) -> None:
        """Send everything and end the run with `status`; after close_timeout_s, spool the rest."""
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

    # -- the worker thread -----------------------------------------------------------------------

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
                self.first_try.set()

    def _has_work(self) -> bool:
        return bool(self._pending or self._artifacts or self._closing or self._restart_monitor
                    or self._remote.run_id is None or not self._remote.annotated or not self._outbox_loaded)

    def _due(self) -> bool:
        return self._has_work() and time.monotonic() >= self._next_try

    def _mark_down(self, exc: BaseException) -> None:
        self._remote.mark_stale()
        with self._cv:
            self._next_try = time.monotonic() + (min(self._backoff, 2.0) if self._closing else self._backoff)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        if not self._down:
            self._down = True
            msg = one_line(exc, 300)
            uri = self._remote.uri
            if not self._warned:
                self._warned = True
                log.warning("MLflow at %s is not answering (%s); training goes on, metrics are kept and sent "
                            "when it is back (log.jsonl is complete)", uri, msg)
            else:
                log.info("MLflow at %s is not answering again (%s)", uri, msg)

    def _mark_up(self) -> None:
        self._backoff = BACKOFF_MIN_S
        if self._down:
            self._down = False
            log.info("MLflow at %s answers again; backlog sent", self._remote.uri)

    def _setup(self) -> None:
        """Run, params, tags, stored steps, then the outbox and the monitor: each done once, retried until done."""
        self._remote.ensure()
        if not self._outbox_loaded:
            self._load_outbox()
            self._outbox_loaded = True
        if self._system_metrics and self._monitor is None and self._closing is None:
            self._start_monitor()

    def _send_metrics(self) -> None:
        while True:
            with self._cv:
                if self._abort or not self._pending:
                    return
                n = min(METRICS_PER_BATCH, len(self._pending))
                batch = [self._pending.popleft() for _ in range(n)]
                self._inflight = batch
            try:
                self._remote.log_points(batch)
            except Exception:
                with self._cv:  # transient: send it again, in order, on the next try
                    self._pending.extendleft(reversed(batch))
                    self._inflight = []
                raise
            with self._cv:
                self._inflight = []
                self._cv.notify_all()

    def _send_artifacts(self) -> None:
        while True:
            with self._cv:
                if self._abort or not self._artifacts:
                    return
                path, artifact_path = self._artifacts[0]
            self._remote.upload(path, artifact_path)
            with self._cv:
                self._artifacts.popleft()

    def _finish(self, status: str) -> None:
        self._stop_monitor()
        self._remote.end(status)
        with self._cv:
            self._done = True
            self._cv.notify_all()

    # -- system metrics --------------------------------------------------------------------------

    def _start_monitor(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # resume_logging: continue the run's system-metric steps (a reopened run, or a restart after an outage)
        self._monitor = SystemMetricsMonitor(self._remote.run_id, sampling_interval=self._system_metrics_interval_s,
                                             resume_logging=True, tracking_uri=self._remote.uri)
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

    # -- the outbox ------------------------------------------------------------------------------

    def _load_outbox(self) -> None:
        """Queue what earlier attempts of this run could not send (older points first)."""
        run_id = self._remote.run_id
        for path in outbox_paths(self._remote.run_dir):
            header, points, artifacts = read_outbox(path)
            # run_id None: no earlier attempt ever reached MLflow; unless resume=never, this run continues it.
            orphan = header is not None and header.get("run_id") is None and not self._resume_never
            if header is None or not (orphan or header.get("run_id") == run_id):
                continue
            with self._cv:
                self._pending.extendleft(reversed(points))
                self._artifacts.extendleft(reversed(artifacts))
            os.remove(path)
            log.info("MLflow: %d metric points and %d artifacts from %s queued", len(points), len(artifacts),
                     path)

    def _spool(self, status: str, points: List[Point], artifacts) -> None:
        """Keep what close could not send, for the next attempt or `python -m resnext_dist.tracking sync`."""
        remote = self._remote
        saved = save_outbox(remote.run_dir, remote.outbox_header(status), points, artifacts, remote.owns,
                            remote.run_id or remote.launch_id)
        if saved is None:
            return
        path, n_points, n_artifacts = saved
        log.warning("MLflow at %s did not take everything within %.0f s: %d metric points and %d artifacts "
                    "saved to %s; the run is not marked %s yet. They are sent when this run resumes, or by: "
                    "python -m resnext_dist.tracking sync %s", remote.uri, self._close_timeout_s, n_points,
                    n_artifacts, path, status, remote.run_dir)
