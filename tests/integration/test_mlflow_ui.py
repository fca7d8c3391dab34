"""The MLflow UI shows a tracked run: the default local store, opened with exactly the command `ui_command`
prints (what the quickstart tells users), rendered by headless Chromium (Debian's `chromium` package).

A screenshot of the run page is saved as test-artifacts/mlflow_run_page.png.
"""
import os
import shlex
import shutil
import subprocess
import tempfile

import pytest

from resnext_dist.config import load_config
from resnext_dist.dist import DistInfo
from resnext_dist.tracking import Tracker, ui_command
from tests.plugins.mlflow_server import MlflowServer

pytestmark = [pytest.mark.slow, pytest.mark.mlflow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.path.join(REPO, "test-artifacts")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000", "--window-size=1400,1800"]  # tall: the metrics table shows


def chromium(url: str, *what: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: run `bash launch/setup.sh --dev` (Debian package chromium)")
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile each time: no state between runs
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *what, url],
                              capture_output=True, text=True, timeout=180)


def test_run_page_shows_the_run_and_its_metrics(tmp_path):
    cfg = load_config(None, [f"run.root={tmp_path / 'runs'}", "run.name=ui-demo", "tracking.experiment=ui-test"])
    assert cfg.tracking.uri == ""  # the default: sqlite store in the runs root
    tracker = Tracker(cfg, DistInfo(), str(tmp_path / "runs" / "ui-demo"))
    for step in range(1, 21):
        tracker.log_metrics({"loss": 2.0 / step, "lr": 0.1}, step)
    tracker.log_metrics({"val_top1": 0.5}, 20)
    tracker.close("FINISHED")
    assert tracker.run_id

    from mlflow import MlflowClient
    exp_id = MlflowClient(tracking_uri=tracker.uri).get_run(tracker.run_id).info.experiment_id

    words = shlex.split(ui_command(cfg))
    assert words[:2] == ["mlflow", "ui"]
    ui = MlflowServer(tmp_path / "ui", command=words[1:]).start()  # `python -m mlflow ui --backend-store-uri ...`
    try:
        url = f"{ui.uri}/#/experiments/{exp_id}/runs/{tracker.run_id}"
        os.makedirs(ARTIFACTS, exist_ok=True)
        shot = os.path.join(ARTIFACTS, "mlflow_run_page.png")
        if os.path.exists(shot):
            os.remove(shot)
        page = chromium(url, "--dump-dom", f"--screenshot={shot}")  # one page load, both outputs
        assert page.returncode == 0, page.stderr[-2000:]
        dom = page.stdout
        assert "ui-demo" in dom, f"run name not on the page; DOM starts: {dom[:1500]}"
        assert "val_top1" in dom and "loss" in dom, "metric keys not on the page"
        assert os.path.getsize(shot) > 10_000, "no screenshot"
    finally:
        ui.stop()
