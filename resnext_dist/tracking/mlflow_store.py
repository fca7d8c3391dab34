"""MLflow, all but the live tracker: where runs are kept (open_store: tracking.uri, or sqlite at
<run.root>/mlflow.db) and shown (ui_command, runs_table, experiment_link; tracking/ui.py starts the UI), MLflow's names and limits, and the runs made in one
go (tracking's API: figures added to a run, a sweep's parent run, a bench result).

mlflow itself is imported only inside the functions that talk to a store: its import takes seconds, and a run that
does not track (or the bench's GPU host, which has no mlflow) never pays it.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import shlex
import time
from typing import Dict, Optional, Tuple

from resnext_dist.config import to_flat_dict
from resnext_dist.errors import InputError, one_line
from resnext_dist.files import atomic_write

MAX_PARAM_VALUE, MAX_TAG_VALUE, MAX_KEY = 6000, 8000, 250  # MLflow's limits
PARENT_FILE = "mlflow_parent.json"  # in a sweep's directory: its parent run, so a resubmission reuses it
SUMMARY = ("best_val_top1", "final_val_top1", "epochs_done", "train_hours", "mean_img_per_s")
# A model-training experiment (the UI's runs table and training charts, not the GenAI overview), and a view of its
# runs table with the summary metrics as columns, best first, which experiment_url() links to.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development", "mlflow.sharedViewState.training": json.dumps(
    {"selectedColumns": [f"metrics.`{k}`" for k in SUMMARY], "orderByKey": "metrics.`best_val_top1`",
     "orderByAsc": False})}


def resolve_uri(cfg) -> str:
    """`tracking.uri`, or a sqlite store at <run.root>/mlflow.db (absolute: ui_command works from anywhere)."""
    return cfg.tracking.uri or "sqlite:///" + os.path.join(os.path.abspath(cfg.run.root), "mlflow.db")


def open_store(cfg) -> Tuple[str, Optional[str]]:
    """(tracking URI, artifact location) for the runs of `cfg`, the sqlite store's folder made: artifacts go to
    <run.root>/mlartifacts next to the default store, where a tracking server puts them otherwise (None). The
    Tracker's runs and a sweep's parent run both come here, so they share one store."""
    uri = resolve_uri(cfg)
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri[len("sqlite:///"):]), exist_ok=True)
    quiet_store_creation()
    return uri, None if cfg.tracking.uri else local_artifacts(uri)


# The first run in a folder makes its sqlite store: MLflow and alembic say so in INFO lines ("Creating initial MLflow
# database tables...", "Context impl SQLiteImpl") that are nothing a user must read; their warnings still show.
STORE_CREATION_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration", "alembic")


def quiet_store_creation() -> None:
    for name in STORE_CREATION_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def local_artifacts(uri: str) -> Optional[str]:
    """For a sqlite store, the artifact folder beside its database (mlartifacts/, as the default store has it; not
    MLflow's ./mlruns in whatever folder the command runs in); None for a server, which has its own."""
    return os.path.join(os.path.dirname(uri[len("sqlite:///"):]), "mlartifacts") if uri.startswith("sqlite:///") \
        else None


def ui_command(cfg) -> str:
    """The command that shows the runs in a browser; for a tracking server, its address (its UI is already up)."""
    uri = resolve_uri(cfg)
    return uri if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {shlex.quote(uri)}"


LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` and `python -m resnext_dist.tracking ui` serve by default


def ui_address(uri: str, port: int = 5000) -> str:
    """The address of the UI that shows the store at `uri`: a tracking server is its own UI; a local store's UI is
    started on 127.0.0.1 (tracking/ui.py)."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"


def ui_start_line(run_dir: str) -> str:
    """The command that starts the UI on a run's local store and prints its link (tracking/ui.py)."""
    return f"python -m resnext_dist.tracking ui {shlex.quote(os.path.abspath(run_dir))}"


def browse_hint(cfg, python: str, link: Optional[str] = None) -> str:
    """ui_command as a person runs it here (with the mlflow beside `python`: a virtual environment not on PATH),
    and the page to open then (`link`: the experiment's runs table, else the UI's address)."""
    ui, beside = ui_command(cfg), os.path.join(os.path.dirname(python), "mlflow")
    if ui.startswith("mlflow ") and os.path.exists(beside):
        ui = os.path.abspath(beside) + ui[len("mlflow"):]  # absolute: the line works from any directory
    if ui.startswith(("http://", "https://")):
        return link or ui  # a server's UI is up already
    return f"{ui}   (then open {link or LOCAL_UI})"


def experiment_url(ui: str, experiment_id: str) -> str:
    """The runs table of an experiment in the MLflow UI at `ui`: training view, summary columns, best run first."""
    view = "workflowType=machine_learning&viewStateShareKey=training"  # see EXPERIMENT_TAGS
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{view}"


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    """A run's own page in the MLflow UI at `ui`."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def page_link(ui: str, run_id: Optional[str], experiment: str) -> str:
    """The run's own page when its id is known, else the runs table of `experiment`, at the tracking server `ui`
    (looked up with a short timeout); the server's address when it does not say."""
    try:
        configure_http(5)
        from mlflow import MlflowClient  # seconds: only where a link is asked for
        client = MlflowClient(ui)
        if run_id:
            return run_url(ui, client.get_run(run_id).info.experiment_id, run_id)
        found = client.get_experiment_by_name(experiment)
    except Exception:  # a run deleted, a server that does not answer: the address still helps
        return ui
    return experiment_url(ui, found.experiment_id) if found else ui


def runs_table(cfg, port: int = 5000) -> Optional[str]:
    """The runs table of cfg's experiment (experiment_url at ui_address), looked up in its store with a short
    timeout; None when the experiment does not exist (yet) or the store does not answer."""
    uri = resolve_uri(cfg)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        return None  # no store yet: looking would create one
    try:
        configure_http(5)
        quiet_store_creation()
        from mlflow import MlflowClient  # seconds: only where a link is asked for
        found = MlflowClient(uri).get_experiment_by_name(cfg.tracking.experiment)
    except Exception:  # an unreachable server must not stop what asked for a link
        return None
    return experiment_url(ui_address(uri, port), found.experiment_id) if found else None


def experiment_link(cfg) -> str:
    """Where a run of `cfg` appears: the experiment's runs table on a tracking server (looked up with a short
    timeout; the experiment may not exist before the first run), else the command that opens the UI."""
    ui = ui_command(cfg)
    found = runs_table(cfg) if ui.startswith(("http://", "https://")) else None
    return found or f"{ui}  (experiment {cfg.tracking.experiment})"


def metric_key(key: str) -> str:
    """A name MLflow accepts: bad characters become '_', no empty or path-like parts, at most 250 characters."""
    clean = re.sub(r"/+", "/", re.sub(r"[^/\w.\- :]", "_", str(key)).strip("/") or "_")
    return "/".join(p if p not in (".", "..") else "_" for p in clean.split("/"))[:MAX_KEY]


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 14] + "...(truncated)"


def config_params(cfg) -> Dict[str, str]:
    """The flattened resolved config as MLflow params (dict values flattened further, values cut to size)."""
    todo, out = list(to_flat_dict(cfg).items()), {}
    while todo:
        key, value = todo.pop()
        if isinstance(value, dict) and value:
            todo += [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
            out[key[:MAX_KEY]] = cut(text, MAX_PARAM_VALUE)
    return out


def is_permanent(exc: BaseException) -> bool:
    """Retrying cannot help: a 4xx answer (but 408/429), or no network or server error at all."""
    from mlflow.exceptions import MlflowException  # only called after a store call failed: mlflow is loaded
    if not isinstance(exc, MlflowException):
        return not isinstance(exc, OSError)  # requests' errors are OSErrors
    return 400 <= exc.get_http_status_code() < 500 and exc.get_http_status_code() not in (408, 429)


def is_full(exc: BaseException) -> bool:
    """The store is out of space (a local artifact folder's ENOSPC, or a server's answer quoting it): a state to
    report as such, not as a server that does not answer. Retried all the same: space may be freed."""
    seen = exc
    while seen is not None:
        if (isinstance(seen, OSError) and seen.errno == errno.ENOSPC) or "no space left on device" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def configure_http(timeout_s: float) -> None:
    """Short requests, no in-request retries (MLflow's default: minutes per call); the caller retries. Process-wide
    on purpose: rank 0 is the only process that talks to MLflow. MLflow reads these at each request."""
    os.environ.update(MLFLOW_HTTP_REQUEST_TIMEOUT=str(max(1, int(timeout_s + 0.999))),
                      MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0")


def experiment_id(client, name: str, artifact_location: Optional[str]) -> str:
    """The experiment `name`, made (or restored from deleted) if need be, tagged as a model-training experiment
    with its runs-table view (EXPERIMENT_TAGS). The Tracker's runs and a sweep's parent run both come here."""
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name, artifact_location=artifact_location)
        except Exception:
            pass  # another run created it meanwhile, or the answer was lost: read it back
    exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    for key, value in EXPERIMENT_TAGS.items():
        client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def log_metrics(cfg, run_id: str, metrics: Dict[str, float], step: int = 0) -> None:
    """Add `metrics` (now, at `step`) to the existing run `run_id` of cfg's store; InputError `<run id>: could not
    log to it at <uri> (why)` for an unknown run or a store that does not answer."""
    from mlflow import MlflowClient  # seconds: only when asked to log
    from mlflow.entities import Metric
    now, uri = int(time.time() * 1000), resolve_uri(cfg)
    try:
        MlflowClient(tracking_uri=uri).log_batch(run_id, metrics=[Metric(k, float(v), now, step)
                                                                  for k, v in metrics.items()])
    except Exception as e:  # MlflowException for an unknown run, connection errors for a server that is down
        raise InputError(f"{run_id}: could not log to it at {uri} ({one_line(e, 200)})") from None


def open_sweep(cfg, name: str, sweep_dir: str, params: Dict[str, str]) -> str:
    """The sweep's parent run (named `name`, the grid as `params`; a sweep's runs name it in
    tracking.parent_run_id), created once: its id is kept in `sweep_dir` so a resubmission reuses it (RUNNING
    again: runs will train). Raises what MLflow raises."""
    path, (uri, artifacts) = os.path.join(sweep_dir, PARENT_FILE), open_store(cfg)
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = {}
    configure_http(cfg.tracking.timeout_s)  # as the Tracker: short requests; an absent server is said at once
    from mlflow import MlflowClient  # seconds: only for a tracked sweep
    from mlflow.entities import Param
    client = MlflowClient(tracking_uri=uri)
    if old.get("tracking_uri") == uri and old.get("experiment") == cfg.tracking.experiment:
        client.update_run(old["run_id"], status="RUNNING")
        return old["run_id"]
    exp_id = experiment_id(client, cfg.tracking.experiment, artifacts)
    run_id = client.create_run(exp_id, run_name=name, tags={"sweep_dir": sweep_dir}).info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    os.makedirs(sweep_dir, exist_ok=True)
    atomic_write(path, json.dumps({"run_id": run_id, "tracking_uri": uri, "experiment": cfg.tracking.experiment}))
    return run_id


def finish_sweep(sweep_dir: str) -> None:
    """Mark the sweep's parent run FINISHED (nothing when the sweep has none); raises what MLflow raises."""
    try:
        with open(os.path.join(sweep_dir, PARENT_FILE)) as f:
            parent = json.load(f)
    except FileNotFoundError:
        return
    from mlflow import MlflowClient  # seconds: only for a tracked sweep
    with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints "View run" links; the sweep prints its table
        MlflowClient(tracking_uri=parent["tracking_uri"]).set_terminated(parent["run_id"], "FINISHED")


def log_result(uri: str, experiment: str, name: str, tags: Dict[str, str], params: Dict[str, str],
               metrics: Dict[str, float], document: Dict, document_name: str) -> str:
    """A finished result (a bench's) as one run of `experiment` at `uri`: its tags, params (cut to MLflow's size),
    metrics and the whole `document` as the JSON artifact `document_name`; returns the run's id."""
    import mlflow  # seconds: only when asked to log
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tags(tags)
        mlflow.log_params({k: cut(v, MAX_PARAM_VALUE) for k, v in params.items()})
        mlflow.log_metrics(metrics)
        mlflow.log_dict(document, document_name)
        return run.info.run_id
