"""The MLflow side of a tracked run: the run itself (found, created or reopened), its params and tags, and
metric batches sent without duplicate steps. Only the sender's worker thread calls RemoteRun.

One MLflow run per training run. The run id is kept in the checkpoint (the trainer passes it back) and in
<run dir>/mlflow_run.json (outbox.py); the Tracker hands the run to continue, if any, as `wanted_run_id`.
Reopening sets the run RUNNING again, adds the params it lacks, refreshes the per-attempt tags and counts
attempts in the `attempt` tag. A run created through a request whose answer was lost is found again by its
`launch_id` tag, not created twice.

No duplicate steps (what we guarantee): for every metric key, MLflow holds at most one value per step, and the
steps of each key only grow. Points go out in the order they were logged, so what MLflow holds of a key is a
prefix of what was logged; before sending, we drop any (key, step) at or below the highest step the run
already holds for that key (read from the server on reopen, and after any failed request, whose batch may or may
not have been stored). So after a resume from step k, where the crashed attempt had got its points to MLflow up
to step m: steps <= m keep the crashed attempt's values (equal to the resumed ones when training is
deterministic) and the resumed attempt's points from m+1 on are added. History complete: an outage is backfilled
by the same process, or via the outbox when it ends with close() (exception, signal, normal end). Not covered: a
process killed outright (SIGKILL, node loss) *during* an outage loses its unsent backlog; if the resume then
starts past it (k > m), MLflow has a gap (m, k] that only log.jsonl holds, which keeps every attempt's records.

mlflow is imported inside the functions: only the worker thread and the sync command get here.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import uuid
from typing import Dict, List, Optional

from resnext_dist.errors import one_line
from resnext_dist.tracking.format import MAX_TAG_VALUE, PARAMS_TAGS_PER_BATCH, Point, cut
from resnext_dist.tracking.outbox import write_run_file

log = logging.getLogger(__package__)  # one logger for all of tracking: callers and tests filter on it


def configure_http(timeout_s: float) -> None:
    """Short requests, no in-request retries: our worker retries, so one call never hangs for minutes.

    MLflow's own HTTP retries (7 retries, 120 s timeout by default: minutes per call, mlflow#1550) are turned
    off. Process-wide on purpose (rank 0 is the only process that talks to MLflow, and the system-metrics
    monitor should fail as fast). MLflow reads these at each request.
    """
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(timeout_s)))  # MLflow parses an int
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "0"


def is_permanent(exc: BaseException) -> bool:
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


def log_params_tags(client, run_id, params: Dict[str, str], tags: Dict[str, str]) -> None:
    """Params and tags in batches of MLflow's size limit; tag values cut to size."""
    from mlflow.entities import Param, RunTag

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + PARAMS_TAGS_PER_BATCH])
    tag_items = [RunTag(k, cut(v, MAX_TAG_VALUE)) for k, v in tags.items()]
    for i in range(0, len(tag_items), PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=tag_items[i:i + PARAMS_TAGS_PER_BATCH])


class RemoteRun:
    """One training run's MLflow run. `ensure()` does each setup step once, and is called until it succeeds."""

    def __init__(self, uri: str, run_dir: str, experiment: str, run_name: str,
                 artifact_location: Optional[str], params: Dict[str, str], tags: Dict[str, str],
                 wanted_run_id: Optional[str]):
        self.uri = uri
        self.run_dir = run_dir
        self.experiment = experiment
        self.run_name = run_name
        self.artifact_location = artifact_location
        self.params = params
        self.tags = tags
        self.launch_id = uuid.uuid4().hex
        self.wanted_run_id = wanted_run_id
        self.run_id: Optional[str] = None
        self.experiment_id: Optional[str] = None
        self.annotated = False
        self._client = None
        self._create_tried = False
        self._reopened = False
        self._previous_params: Dict[str, str] = {}
        self._attempt = 1
        self._hwm: Dict[str, int] = {}   # highest step MLflow holds per key
        self._hwm_stale = False          # a request failed: what it stored is unknown until re-read

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def ensure(self) -> None:
        """The run exists (reopened or created, and recorded in the run dir), has its params and tags, and
        the highest stored steps are known."""
        client = self.client
        if self.run_id is None:
            run_id = self._reopen(client, self.wanted_run_id) if self.wanted_run_id else None
            if run_id is None:
                self.experiment_id = self.experiment_id or self._ensure_experiment(client)
                run_id = self._create(client)
            else:
                self._reopened = True
            self.run_id = run_id
            write_run_file(self.run_dir, {"run_id": self.run_id, "tracking_uri": self.uri,
                                          "experiment_id": self.experiment_id})
            self._hwm_stale = self._reopened
            log.info("MLflow run %s %s (%s)", self.run_id, "reopened" if self._reopened else "created", self.uri)
        if not self.annotated:
            self._annotate(client)
            self.annotated = True
        if self._hwm_stale:
            self._refresh_hwm(client)

    def mark_stale(self) -> None:
        """A request failed: re-read the highest stored steps before the next send."""
        self._hwm_stale = True

    def log_points(self, batch: List[Point]) -> None:
        """Send the points above the highest stored step of their key. Raises if the failure is transient
        (the caller keeps the batch); a permanent refusal is logged and the points are given up."""
        from mlflow.entities import Metric

        keep, top = [], {}
        for key, value, ts, step in batch:
            if step > top.get(key, self._hwm.get(key, -sys.maxsize)):
                top[key] = step
                keep.append(Metric(key, value, ts, step))
        try:
            if keep:
                self.client.log_batch(self.run_id, metrics=keep)
        except Exception as e:
            if not is_permanent(e):
                raise
            log.warning("MLflow refused %d metric points (%s); they are in log.jsonl only", len(keep), one_line(e, 300))
        else:
            self._hwm.update(top)

    def upload(self, path: str, artifact_path: Optional[str]) -> None:
        """Upload a file or folder; raises if the failure is transient, skips (with a warning) otherwise."""
        if not os.path.exists(path):
            log.warning("MLflow artifact %s does not exist; skipped", path)
            return
        try:
            if os.path.isdir(path):  # a folder: its files, under the folder's name
                self.client.log_artifacts(self.run_id, path, artifact_path or os.path.basename(path.rstrip("/")))
            else:
                self.client.log_artifact(self.run_id, path, artifact_path)
        except Exception as e:
            if not is_permanent(e):
                raise
            log.warning("MLflow refused artifact %s (%s)", path, one_line(e, 300))

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)
        log.info("MLflow run %s ended: %s", self.run_id, status)

    def outbox_header(self, status: str) -> dict:
        """What `sync` needs to deliver an outbox of this run, including the params and tags if it never got them."""
        header = {"run_id": self.run_id, "launch_id": self.launch_id, "tracking_uri": self.uri,
                  "status": status, "experiment": self.experiment, "run_name": self.run_name}
        if self.run_id is None or not self.annotated:
            header.update(params=self.params, tags=dict(self.tags, launch_id=self.launch_id, attempt="1"),
                          artifact_location=self.artifact_location)
        return header

    def owns(self, header: dict) -> bool:
        """Whether an outbox is this run's: same run id, or written by this very launch before the run existed."""
        if self.run_id is not None:
            return header.get("run_id") == self.run_id
        return header.get("run_id") is None and header.get("launch_id") == self.launch_id

    # -- setup steps -----------------------------------------------------------------------------

    def _ensure_experiment(self, client) -> str:
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                return client.create_experiment(self.experiment, artifact_location=self.artifact_location)
            except Exception as e:
                exp = client.get_experiment_by_name(self.experiment)  # another run created it meanwhile
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
            if not is_permanent(e):
                raise
            log.warning("MLflow run %s not found at %s (%s); starting a new run", run_id, self.uri, one_line(e, 300))
            return None
        if run.info.lifecycle_stage == "deleted":
            log.warning("MLflow run %s was deleted; starting a new run", run_id)
            return None
        client.update_run(run_id, status="RUNNING")
        self.experiment_id = run.info.experiment_id
        self._previous_params = dict(run.data.params)
        self._attempt = int(run.data.tags.get("attempt", "1") or 1) + 1
        return run_id

    def _create(self, client) -> str:
        if self._create_tried:  # an earlier create may have reached the server and lost its answer
            found = client.search_runs([self.experiment_id],
                                       filter_string=f"tags.launch_id = '{self.launch_id}'", max_results=1)
            if found:
                return found[0].info.run_id
        self._create_tried = True
        tags = dict(self.tags, launch_id=self.launch_id, attempt="1")
        run = client.create_run(self.experiment_id, run_name=self.run_name,
                                tags={k: cut(v, MAX_TAG_VALUE) for k, v in tags.items()})
        self._previous_params = {}
        self._attempt = 1
        return run.info.run_id

    def _annotate(self, client) -> None:
        """Params the run lacks; on reopen, this attempt's tags and the config keys that changed."""
        missing = {k: v for k, v in self.params.items() if k not in self._previous_params}
        changed = {k: v for k, v in self.params.items()
                   if k in self._previous_params and self._previous_params[k] != v}
        tags: Dict[str, str] = {}
        if self._reopened:
            tags.update(self.tags, attempt=str(self._attempt))
            if changed:
                log.warning("config changed on resume (%s); MLflow params keep the first values, the new ones "
                            "are in the tag 'changed_on_attempt_%d'", ", ".join(sorted(changed)), self._attempt)
                tags[f"changed_on_attempt_{self._attempt}"] = json.dumps(changed)
        log_params_tags(client, self.run_id, missing, tags)

    def _refresh_hwm(self, client) -> None:
        """Highest stored step per key, from the run's latest metrics (one request, not the whole history)."""
        data = client.get_run(self.run_id).data
        objs = getattr(data, "_metric_objs", None)
        if objs is None:  # an MLflow without the step in RunData: read the histories
            objs = [m for key in data.metrics for m in client.get_metric_history(self.run_id, key)]
        for m in objs:
            self._hwm[m.key] = max(self._hwm.get(m.key, -sys.maxsize), int(m.step))
        self._hwm_stale = False
