"""The logged MLflow model is the run's export (issue 26): it carries the class names in its metadata and names
its output columns by them; MLflow's own loader serves the export's logits. A real local store (sqlite + a folder)."""
import logging
import os

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient

from resnext_dist.config import load_config
from resnext_dist.models import build_model
from resnext_dist.tracking.mlflow_model import model_request, send_model
from resnext_dist.weights.export import write_export
from tests.tiny import TINY

MODEL = [o for o in TINY if o.startswith("model.")]


def logged_model(tmp_path, export, load=True, run=None):
    """Log `export` to a new run of a local store (or take the run id `run`): (its pyfunc model if `load`, its
    model info, the run id)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    if run is None:
        run = client.create_run(client.create_experiment("m", artifact_location=str(tmp_path / "art"))).info.run_id
        send_model(client, uri, run, model_request(export, (2, 3, 16, 16)))
    outputs = client.get_run(run).outputs.model_outputs
    if not outputs:
        return None, None, run
    mlflow.set_tracking_uri(uri)
    model_uri = f"models:/{outputs[0].model_id}"
    return mlflow.pyfunc.load_model(model_uri) if load else None, mlflow.models.get_model_info(model_uri), run


def test_class_names_name_the_output_and_sit_in_the_metadata(tmp_path, recwarn, caplog, capfd):
    caplog.set_level(logging.INFO)
    cfg = load_config(None, MODEL + ["model.num_classes=3"])
    model = build_model(cfg.model).eval()
    export = write_export(model, cfg, str(tmp_path / "export"), ["cat", "dog", "eel"])
    capfd.readouterr()
    _, _, run_id = logged_model(tmp_path, export, load=False)
    assert "Downloading artifacts" not in capfd.readouterr().err  # no progress bar on the trainer's console
    loaded, info, _ = logged_model(tmp_path, export, run=run_id)
    assert info.metadata["class_names"] == ["cat", "dog", "eel"] and info.metadata["num_classes"] == 3
    assert [c.name for c in info.signature.outputs.inputs] == ["cat", "dog", "eel"]
    x = torch.randn(4, 3, 16, 16)
    out = loaded.predict(x.numpy())
    assert list(out.columns) == ["cat", "dog", "eel"]
    with torch.no_grad():
        np.testing.assert_allclose(out.to_numpy(), model(x).numpy(), atol=1e-5)
    # quiet: MLflow's advice on hand-written models (type hints, pickling) is not shown to our users
    shown = [w for w in recwarn if issubclass(w.category, UserWarning)]  # what Python shows a user by default
    assert not shown, [str(w.message)[:200] for w in shown]
    assert not [r for r in caplog.records if r.name.startswith("mlflow.pyfunc") and r.levelno >= logging.INFO]
    # the export once: the logged model's artifacts hold model.safetensors and no pickled copy of the weights
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "art") for f in fs]
    assert [os.path.basename(f) for f in files if os.path.getsize(f) > 50_000] == ["model.safetensors"]


def test_without_class_names_the_columns_are_the_class_indices(tmp_path):
    cfg = load_config(None, MODEL + ["model.num_classes=2"])
    export = write_export(build_model(cfg.model), cfg, str(tmp_path / "export"))
    loaded, info, _ = logged_model(tmp_path, export)
    assert info.metadata["class_names"] == ["0", "1"]
    assert list(loaded.predict(np.zeros((2, 3, 16, 16), np.float32)).columns) == ["0", "1"]


def test_an_export_gone_is_said_and_no_model_is_logged(tmp_path, caplog):
    loaded, _, _ = logged_model(tmp_path, str(tmp_path / "nowhere"))
    assert loaded is None
    assert any("the model was not logged" in r.getMessage() and "nowhere" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
