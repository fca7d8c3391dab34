"""Issue 26, "quiet, true console": nothing the project causes prints library INFO lines."""
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
