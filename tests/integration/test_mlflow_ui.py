"""The MLflow UI shows tracked runs: the default local store, opened with exactly the command `ui_command`
prints (what the quickstart tells users), rendered by headless Chromium (Debian's `chromium` package).

Screenshots land in test-artifacts/ (mlflow_run_page.png, mlflow_runs.png). With RESNEXT_SAVE_DOCS_SCREENSHOT=1
the runs table is also saved as docs/mlflow-runs.png (the README's picture):
    RESNEXT_SAVE_DOCS_SCREENSHOT=1 python -m pytest tests/integration/test_mlflow_ui.py -k runs_table
"""
import os
import shlex
import shutil
import subprocess
import tempfile

import pytest

from resnext_dist.config import load_config
from resnext_dist.dist import DistInfo
from resnext_dist.runlog import RunLog
from resnext_dist.tracking.mlflow_store import experiment_url, ui_command
from resnext_dist.tracking.mlflow_tracker import Tracker
from tests.plugins.mlflow_server import MlflowServer

pytestmark = [pytest.mark.slow, pytest.mark.mlflow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.path.join(REPO, "test-artifacts")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000"]
RUNS = {"ui-demo": 0.61, "ui-demo-lr0.2": 0.67}  # run name -> best val top-1


def chromium(url: str, *what: str, size="1400,1800") -> subprocess.CompletedProcess:  # tall: the metrics table
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: run `bash launch/setup.sh --dev` (Debian package chromium)")
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile each time: no state between runs
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--window-size={size}", f"--user-data-dir={profile}", *what,
                               url], capture_output=True, text=True, timeout=180)


def screenshot_path(name: str) -> str:
    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, name)
    if os.path.exists(shot):
        os.remove(shot)
    return shot


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """Two tracked runs of one experiment in the default store, and `mlflow ui` on it (the printed command)."""
    root = tmp_path_factory.mktemp("ui")
    ids = {}
    for name, best in RUNS.items():
        cfg = load_config(None, [f"run.root={root / 'runs'}", f"run.name={name}", "tracking.experiment=ui-test"])
        assert cfg.tracking.uri == ""  # the default: sqlite store in the runs root
        tracker = Tracker(cfg, DistInfo(), str(root / "runs" / name))
        log = RunLog(str(root / "runs" / name / "log.jsonl"))
        log.write("start", 0, world_size=2, model="resnext50_32x4d")
        for step in range(1, 21):
            log.write("step", step, epoch=0, loss=2.0 / step, lr=0.1)
        log.write("epoch", 20, epoch=0, val_top1=best, val_top5=0.9)
        log.write("summary", 20, best_val_top1=best, final_val_top1=best, epochs_done=1, train_hours=0.01)
        log.close()
        tracker.close("FINISHED")
        ids[name] = tracker.run_id
    from mlflow import MlflowClient
    exp_id = MlflowClient(tracking_uri=tracker.uri).get_run(tracker.run_id).info.experiment_id
    words = shlex.split(ui_command(cfg))
    assert words[:2] == ["mlflow", "ui"]
    server = MlflowServer(root / "ui", command=words[1:]).start()  # `python -m mlflow ui --backend-store-uri ...`
    try:
        yield server.uri, exp_id, ids
    finally:
        server.stop()


def test_run_page_shows_the_run_and_its_metrics(ui):
    uri, exp_id, ids = ui
    shot = screenshot_path("mlflow_run_page.png")
    page = chromium(f"{uri}/#/experiments/{exp_id}/runs/{ids['ui-demo']}", "--dump-dom", f"--screenshot={shot}")
    assert page.returncode == 0, page.stderr[-2000:]
    dom = page.stdout
    assert "ui-demo" in dom, f"run name not on the page; DOM starts: {dom[:1500]}"
    assert "val_top1" in dom and "loss" in dom, "metric keys not on the page"
    assert os.path.getsize(shot) > 10_000, "no screenshot"


def test_runs_table_shows_run_names_and_summary_columns(ui):
    """The experiment link opens the training view's runs table, best run first, summary metrics as columns."""
    uri, exp_id, ids = ui
    url = experiment_url(uri, exp_id)
    shot = screenshot_path("mlflow_runs.png")
    page = chromium(url, "--dump-dom", f"--screenshot={shot}", size="1400,520")
    assert page.returncode == 0, page.stderr[-2000:]
    dom = page.stdout
    for name in RUNS:
        assert f">{name}<" in dom, f"run {name} not in the runs table; DOM starts: {dom[:1500]}"
    assert 'col-id="metrics.`best_val_top1`"' in dom, "no best_val_top1 column"
    assert dom.index(">ui-demo-lr0.2<") < dom.index(">ui-demo<"), "not sorted by best_val_top1, best first"
    assert os.path.getsize(shot) > 10_000, "no screenshot"
    if os.environ.get("RESNEXT_SAVE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, os.path.join(REPO, "docs", "mlflow-runs.png"))
