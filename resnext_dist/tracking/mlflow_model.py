"""The final weights as an MLflow model ("model": signature and input example included), logged from files: the
run's config.yaml (which model) and a state-dict file (its weights). A model asked for is a request in the cursor,
like an artifact, so whoever sends the run's artifacts logs it too: the tracker's thread, the next attempt, or
`python -m resnext_dist.tracking sync` (also to another server), never lost with the process that trained it.

    request = model_request(weights_path, config_path, (2, 3, 224, 224))   # kept in the cursor until logged
    send_model(client, uri, run_id, request)                                # by the mirror (mirror.py)
"""
from __future__ import annotations

import logging
from typing import Sequence

from resnext_dist.errors import one_line
from resnext_dist.readback import check, count, list_of, text
from resnext_dist.tracking.mlflow_store import is_permanent

log = logging.getLogger(__package__)
FIELDS = {"weights": text(4096), "config": text(4096), "input_shape": list_of(count, limit=8)}


def request_rule(v):
    """What is wrong with a model request read back from a cursor, or None."""
    return check(v, FIELDS, required=FIELDS)


def model_request(weights: str, config: str, input_shape: Sequence[int]) -> dict:
    """The model of `config` (a run's config.yaml) with the state dict in `weights`, its example input a zero
    batch of `input_shape` (2 or more images: a batch of 1 would be fixed in the signature)."""
    return {"weights": weights, "config": config, "input_shape": [int(n) for n in input_shape]}


def send_model(client, uri: str, run_id: str, request: dict) -> None:
    """Log the requested model to `run_id` (once: a run that holds a logged model already is left as it is, for a
    replay by a rebuilt cursor). A request that cannot be met (a file gone, weights that do not fit) is said and
    dropped; a store that does not answer raises (the caller retries)."""
    import mlflow.pytorch  # seconds more: only for the final model
    import torch

    from resnext_dist.config import load_config
    from resnext_dist.models import build_model
    from resnext_dist.weights.safe_load import safe_load
    try:
        run = client.get_run(run_id)
        if getattr(run, "outputs", None) is not None and run.outputs.model_outputs:
            return
        model = build_model(load_config(request["config"]).model)
        model.load_state_dict(safe_load(request["weights"], "state dict"))
        example = torch.zeros(*request["input_shape"]).numpy()
        # the fluent API's store and experiment (process-wide: this process talks to this one run only)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment_id=run.info.experiment_id)
        mlflow.pytorch.log_model(model.eval(), name="model", input_example=example, run_id=run_id,
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    except Exception as e:
        if not is_permanent(e):
            raise
        log.warning("MLflow: the model was not logged (%s)", one_line(e, 300))
