"""Weights once (issue 26): a finished run keeps its final weights in export/ (no final_weights.pt beside it) and
the checkpoints checkpoint.keep says; its MLflow run holds them once, inside the logged model (no export/ or weights
artifact beside it). Counted on a real run with MLflow's default local store (run.root/mlflow.db + mlartifacts/)."""
import json
import os

from safetensors.torch import load_file

from tests.tiny import run_train


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_a_finished_run_and_its_mlflow_run_hold_the_final_weights_once(tmp_path):
    run = tmp_path / "run"
    r = run_train(run, [f"run.root={tmp_path}", "tracking.enabled=true", "tracking.experiment=once",
                        "tracking.close_timeout_s=300", "train.epochs=1", "data.synthetic_size=32",
                        "data.val_synthetic_size=16",
                        "checkpoint.every_steps=2", "checkpoint.keep=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    export = run / "export" / "model.safetensors"
    # a file holding the final weights holds the classifier's final bytes (a checkpoint stores tensors raw too)
    final_fc = load_file(export)["fc.weight"].numpy().tobytes()
    holding = [f for f in files_under(tmp_path) if final_fc in (tmp_path / f).read_bytes()]
    logged = [f for f in holding if f.startswith("mlartifacts")]
    assert holding == sorted(["run/export/model.safetensors", "run/checkpoints/step_00000004.pt", *logged])
    assert len(logged) == 1 and logged[0].endswith("/artifacts/export/model.safetensors")  # the MLflow model's
    # every other file as large as half the weights: the checkpoints checkpoint.keep=2 keeps, nothing else
    big = [f for f in files_under(tmp_path) if (tmp_path / f).stat().st_size >= export.stat().st_size // 2
           and f != "mlflow.db"]
    assert big == sorted(["run/export/model.safetensors", "run/checkpoints/step_00000002.pt",
                          "run/checkpoints/step_00000004.pt", *logged])
    assert not (run / "final_weights.pt").exists()
    assert json.loads((run / "DONE").read_text())["step"] == 4
