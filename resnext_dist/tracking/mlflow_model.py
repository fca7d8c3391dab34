"""The final weights as an MLflow model ("model": signature, input example and class names included), logged from
the run's export folder (weights/export.py): the logged model *is* the export (its model.safetensors and
model.json, copied once into the model's artifacts, served by tracking/pyfunc_export.py), so the MLflow run holds
the final weights once; the trainer does not log export/ again as a plain artifact (only when
tracking.log_model=false, see Tracker.log_model). A model asked for is a request in the cursor, like an artifact,
so whoever sends the run's artifacts logs it too: the tracker's thread, the next attempt, or
`python -m resnext_dist.tracking sync` (also to another server), never lost with the process that trained it.

    request = model_request(export_dir, (2, 3, 224, 224))   # kept in the cursor until logged
    send_model(client, uri, run_id, request)                 # by the mirror (mirror.py)

Why the model holds the export rather than the reverse (export/ as an artifact, a model pointing at it): an MLflow
model is one self-contained folder, which `mlflow.pyfunc.load_model`, serving and the registry copy as a whole;
files outside it would be missing from every such copy.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Sequence

from resnext_dist.errors import InputError, one_line
from resnext_dist.readback import check, count, list_of, text
from resnext_dist.tracking.mlflow_store import is_permanent

log = logging.getLogger(__package__)
FIELDS = {"export": text(4096), "input_shape": list_of(count, limit=8)}


def request_rule(v):
    """What is wrong with a model request read back from a cursor, or None."""
    return check(v, FIELDS, required=FIELDS)


def model_request(export: str, input_shape: Sequence[int]) -> dict:
    """The model exported in the folder `export`, its example input a zero batch of `input_shape` (2 or more
    images: a batch of 1 would be fixed in the signature)."""
    return {"export": export, "input_shape": [int(n) for n in input_shape]}


@contextlib.contextmanager
def _quiet(name: str):
    """Logger `name` says errors only, for the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _no_progress_bar():
    """No "Downloading artifacts" bar on the console while MLflow copies the export into the model (it reads the
    variable at each copy; the tracker's thread is the only one logging artifacts)."""
    name, old = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ[name] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def send_model(client, uri: str, run_id: str, request: dict) -> None:
    """Log the requested model to `run_id` (once: a run that holds a logged model already is left as it is, for a
    replay by a rebuilt cursor). A request that cannot be met (an export gone or broken) is said and dropped; a
    store that does not answer raises (the caller retries)."""
    import mlflow
    import mlflow.pyfunc  # seconds more: only for the final model
    import torch
    from mlflow.models import Model

    # MLflow advises type hints when the class is defined, in a filter of its own ("once") that no "ignore"
    # overrides: recorded, not shown (our model is checked against the signature given below instead)
    with warnings.catch_warnings(record=True):
        from resnext_dist.tracking.pyfunc_export import EXPORT_ARTIFACT, ExportModel, column_names, signature
    from resnext_dist.weights.export import read_meta
    try:
        run = client.get_run(run_id)
        if getattr(run, "outputs", None) is not None and run.outputs.model_outputs:
            return
        meta = read_meta(request["export"])  # checked before anything is copied
        num_classes = meta["model"]["num_classes"]
        columns = column_names(meta["class_names"], num_classes)
        example = torch.zeros(*request["input_shape"]).numpy()
        # the fluent API's store and experiment (process-wide: this process talks to this one run only)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment_id=run.info.experiment_id)
        with warnings.catch_warnings(), _quiet("mlflow.pyfunc"), _no_progress_bar():
            # MLflow's advice (type hints, models from code) is for hand-written models: ours is pickled empty
            warnings.simplefilter("ignore", UserWarning)
            Model.log(artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=run_id,
                      python_model=ExportModel(), artifacts={EXPORT_ARTIFACT: os.path.dirname(meta["_path"])},
                      signature=signature(columns, request["input_shape"]), input_example=example,
                      pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                      metadata={"class_names": columns, "num_classes": num_classes, "arch": meta["arch"],
                                "export_sha256": meta.get("sha256")})
    except InputError as e:
        log.warning("MLflow: the model was not logged (%s)", one_line(e, 300))
    except Exception as e:
        if not is_permanent(e):
            raise
        log.warning("MLflow: the model was not logged (%s)", one_line(e, 300))
