"""Issue 26, "quiet, true console": nothing the project causes prints library INFO lines."""
import os
import subprocess

import pytest

from tests.tiny import PYTHON, REPO, env


@pytest.mark.slow  # importing MLflow in a fresh process: 10-45 s on the loaded 2-core VM
def test_a_new_sqlite_store_is_made_without_mlflows_info_lines(tmp_path):
    """The first run in a folder: MLflow's "Creating initial MLflow database tables" and alembic's INFO lines are
    not shown (a subprocess: MLflow configures its log handler once per process)."""
    code = ("from resnext_dist.config import load_config; from resnext_dist.tracking.mlflow_store import open_store; "
            "import mlflow; "
            f"uri, _ = open_store(load_config(None, ['run.root={tmp_path}'])); "
            "mlflow.MlflowClient(uri).search_experiments(); print('store', uri)")
    r = subprocess.run([PYTHON, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "mlflow.db").exists()
    assert "INFO" not in r.stderr and "Creating initial MLflow database tables" not in r.stderr, r.stderr


def test_an_extended_run_walks_its_new_schedule_without_torchs_warning():
    """Extending a finished run (train.epochs raised) rebuilds the schedule and walks it to the step reached, with no
    optimizer step: PyTorch's "lr_scheduler.step() before optimizer.step()" warning was printed once per rank."""
    import types
    import warnings

    import torch

    from resnext_dist.config import load_config
    from resnext_dist.optim import build_optimizer, build_scheduler
    from resnext_dist.run.build import rebuild_schedule

    cfg = load_config(None, ["data.loader=synthetic", "train.epochs=3"])
    optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg.optim, global_batch_size=256)
    state = types.SimpleNamespace(optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg.optim, 4, 2), step=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rebuild_schedule(state, cfg, steps_per_epoch=4)
    assert state.scheduler.last_epoch == 7


def test_the_trainers_help_says_what_a_run_without_config_does(capsys):
    """--help listed the schema's defaults only (synthetic, 90 epochs, bf16) and "run.name = <the config file's
    name>": beside each, what the bare command (the quickstart recipe) uses where it differs."""
    from resnext_dist import evaluate, train

    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    out = capsys.readouterr().out
    for line in ("  data.loader = auto (no --config: ffcv)", "  train.epochs = 90 (no --config: 8)",
                 "  data.train = '' (no --config: embedded:digits/train)", "  model.num_classes = 0 (no --config: 10)",
                 ("  run.name = <the recipe's name>-<the identity keys set otherwise, e.g. lr0.2>-<a hash of the identity keys> "
                  "(no --config: quickstart-")):
        assert line in out
    with pytest.raises(SystemExit):
        evaluate.parser().parse_args(["--help"])
    assert "  train.epochs = 90\n" in capsys.readouterr().out  # evaluate without --config: the schema's


def test_the_summary_of_an_extended_run_says_which_time_is_which_and_prints_absolute_paths(tmp_path, monkeypatch):
    """An extension's summary read "done in 18 s (31 s of training)": the wall time is this start's, the training
    all starts'. Its paths are absolute, so a copied path works from any directory."""
    from resnext_dist.run.console import summary

    monkeypatch.chdir(tmp_path)
    s = {"best_val_top1": 0.9, "best_epoch": 2, "final_val_top1": 0.9, "mean_img_per_s": 100.0, "epochs_done": 3,
         "step": 30, "train_hours": 31 / 3600, "wall_s": 18.0}
    text = summary(s, "runs/x/export/model.safetensors", "runs/x/log.jsonl", None)
    assert text.startswith("done in 18 s this start (31 s of training over all starts) | ")
    assert f"  weights   {tmp_path}/runs/x/export/model.safetensors" in text and f"  log       {tmp_path}/runs/x/log" in text
    assert summary({**s, "wall_s": 40.0}, None, "l", None).startswith("done in 40 s (31 s of training) | ")


def test_launch_quickstart_names_runs_as_the_bare_command_and_writes_runs_here(tmp_path, monkeypatch):
    """launch/quickstart.py named each run by a timestamp (each call a new run) and wrote runs/ inside the
    repository whatever the current directory: now the bare command's name, and runs/ in the current directory."""
    import importlib.util

    from resnext_dist.config import find_config, load_config
    spec = importlib.util.spec_from_file_location("quickstart_launcher", os.path.join(REPO, "launch", "quickstart.py"))
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    monkeypatch.chdir(tmp_path)
    cfg = launcher.load([])
    assert cfg.run.name == load_config(find_config("quickstart"), []).run.name  # quickstart-<hash>, no timestamp
    assert os.path.abspath(cfg.run.dir) == str(tmp_path / "runs" / cfg.run.name)


def test_the_mlflow_ui_line_names_the_mlflow_beside_python_by_an_absolute_path(tmp_path, monkeypatch):
    """launch/quickstart.py printed `.venv/bin/mlflow ui ...`, relative to the repository: from elsewhere it failed."""
    from resnext_dist.config import load_config
    from resnext_dist.tracking.mlflow_store import browse_hint

    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "mlflow").write_text("")
    monkeypatch.chdir(tmp_path)
    hint = browse_hint(load_config(None, [f"run.root={tmp_path / 'runs'}"]), "venv/bin/python")
    assert hint.startswith(f"{tmp_path}/venv/bin/mlflow ui --backend-store-uri sqlite:///{tmp_path}/runs/mlflow.db")
