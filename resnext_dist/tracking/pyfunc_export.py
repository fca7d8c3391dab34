"""The MLflow model of a run: its export folder (weights/export.py) wrapped as an MLflow pyfunc, so the MLflow run
holds the final weights once (inside the logged model) and MLflow's loader serves them:

    model = mlflow.pyfunc.load_model(f"models:/{model_id}")     # or runs:/<run id>/model
    logits = model.predict(images)   # images: float32 (N, 3, H, W), preprocessed as model.json says
    # -> a DataFrame, one column of logits per class, named by the class names (or 0..N-1 when the data had none)

A module of its own because it subclasses mlflow's PythonModel: imported only where a model is logged or loaded.
"""
from __future__ import annotations

from typing import List, Optional

import mlflow.pyfunc

EXPORT_ARTIFACT = "export"  # the key (and folder) of the export inside the logged model


def column_names(class_names: Optional[List[str]], num_classes: int) -> List[str]:
    """The output's columns: the class names, else the class indices as text."""
    return list(class_names) if class_names else [str(i) for i in range(num_classes)]


def signature(columns: List[str], input_shape):
    """Float32 images of input_shape's channels and size (any batch) in, one float column per class out: given,
    not inferred, so that logging runs no prediction and says nothing."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_shape[1:]))]),
                          outputs=Schema([ColSpec("float", name) for name in columns]))


class ExportModel(mlflow.pyfunc.PythonModel):
    """Logits of the exported model, one column per class."""

    def __getstate__(self):
        return {}  # what is pickled into the logged model: nothing (the weights are the export's, loaded from it)

    def load_context(self, context) -> None:
        from resnext_dist.weights.export import model_from_meta, read_meta
        meta = read_meta(context.artifacts[EXPORT_ARTIFACT])  # checked as every export is
        self.model = model_from_meta(meta)
        self.columns = column_names(meta.get("class_names"), meta["model"]["num_classes"])

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd
        import torch
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            logits = self.model(x).numpy()
        return pd.DataFrame(logits, columns=self.columns)
