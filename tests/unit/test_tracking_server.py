"""Tracker against a real `mlflow server` (tests/plugins/mlflow_server.py): what lands in MLflow, checked
through MlflowClient, and how the tracker behaves when the server stops, hangs, or comes back."""
import logging
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from resnext_dist.config import load_config
from resnext_dist.dist import DistInfo
from resnext_dist.tracking import OUTBOX_FILE, RUN_FILE, Tracker, config_params
from tests.plugins.mlflow_server import client_for, runs_in

pytestmark = pytest.mark.mlflow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK_BOUND_S = 1.5  # a behaviour bound ("never blocks the step"), not a performance target


def make_cfg(tmp_path, uri, *overrides):
    experiment = f"test-{uuid.uuid4().hex[:8]}"
    return load_config(None, [f"tracking.uri={uri}", f"tracking.experiment={experiment}", f"run.root={tmp_path}",
                              "run.name=tiny", "tracking.timeout_s=1", "tracking.close_timeout_s=20",
                              *overrides])


def history(client, run_id, key):
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return [(m.step, m.value) for m in points]


def timed(fn, *args, **kwargs) -> float:
    t = time.monotonic()
    fn(*args, **kwargs)
    return time.monotonic() - t


def tracker_warnings(caplog):
    return [r for r in caplog.records if r.name == "resnext_dist.tracking" and r.levelno >= logging.WARNING]


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


# ----------------------------------------------------------------------------------------------
# What a run holds


def test_one_run_with_params_tags_metric_history_and_artifacts(mlflow_server, tmp_path):
    cfg = make_cfg(tmp_path, mlflow_server, "model.layers=[1,1,1,1]")
    run_dir = tmp_path / "run"
    tracker = Tracker(cfg, DistInfo(), str(run_dir))
    assert tracker.run_id, "the run exists before training starts when the server answers"
    for step in range(1, 51):
        tracker.log_metrics({"loss": 1.0 / step, "lr": 0.1, "img_per_s": 100.0 + step, "note": "skipped"}, step)
        if step % 10 == 0:
            tracker.log_metrics({"val_top1": step / 100.0}, step)
            tracker.flush()
    (run_dir / "config.yaml").write_text("model:\n  arch: resnext50_32x4d\n")
    tracker.log_artifact(str(run_dir / "config.yaml"))
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "curve.csv").write_text("step,loss\n1,2.3\n")
    tracker.log_artifact(str(run_dir / "plots"))
    tracker.close("FINISHED")

    client = client_for(mlflow_server)
    runs = runs_in(client, cfg.tracking.experiment)
    assert [r.info.run_id for r in runs] == [tracker.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.params == config_params(cfg)
    tags = run.data.tags
    for key in ("git.commit", "git.dirty", "mlflow.source.git.commit", "world_size", "num_nodes", "device", "host",
                "version.torch", "version.ffcv", "version.resnext_dist"):
        assert key in tags, key
    assert tags["world_size"] == "1" and tags["device"] == "cpu" and tags["attempt"] == "1"
    assert history(client, tracker.run_id, "loss") == [(s, 1.0 / s) for s in range(1, 51)]
    assert [s for s, _ in history(client, tracker.run_id, "img_per_s")] == list(range(1, 51))
    assert history(client, tracker.run_id, "val_top1") == [(s, s / 100.0) for s in range(10, 51, 10)]
    assert "note" not in run.data.metrics
    assert sorted(a.path for a in client.list_artifacts(tracker.run_id)) == ["config.yaml", "plots"]
    assert [a.path for a in client.list_artifacts(tracker.run_id, "plots")] == ["plots/curve.csv"]
    local = client.download_artifacts(tracker.run_id, "config.yaml", str(tmp_path))
    assert open(local).read().startswith("model:")
    assert (run_dir / RUN_FILE).exists()


def test_failed_and_killed_statuses(mlflow_server, tmp_path):
    client = client_for(mlflow_server)
    for status in ("FAILED", "KILLED"):
        cfg = make_cfg(tmp_path, mlflow_server)
        tracker = Tracker(cfg, DistInfo(), str(tmp_path / status))
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.close(status)
        assert client.get_run(tracker.run_id).info.status == status


# ----------------------------------------------------------------------------------------------
# One run across restarts, no duplicate steps


def test_reopen_by_run_id_continues_the_run_without_duplicate_steps(mlflow_server, tmp_path):
    cfg = make_cfg(tmp_path, mlflow_server)
    first = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
    for step in range(1, 31):  # the crashed attempt got to step 30; its last checkpoint was at step 20
        first.log_metrics({"loss": float(step)}, step)
    first.close("KILLED")

    client = client_for(mlflow_server)
    assert client.get_run(first.run_id).info.status == "KILLED"
    second = Tracker(cfg, DistInfo(), str(tmp_path / "run"), run_id=first.run_id)
    assert second.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"
    for step in range(21, 41):  # resumed from the checkpoint at step 20
        second.log_metrics({"loss": 1000.0 + step, "epoch_time_s": 1.0}, step)
    second.close("FINISHED")

    runs = runs_in(client, cfg.tracking.experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["attempt"] == "2"
    loss = history(client, first.run_id, "loss")
    assert [s for s, _ in loss] == list(range(1, 41)), "every step once"
    # steps the crashed attempt had sent keep its values; the resumed attempt's start after them
    assert loss[:30] == [(s, float(s)) for s in range(1, 31)]
    assert loss[30:] == [(s, 1000.0 + s) for s in range(31, 41)]
    assert [s for s, _ in history(client, first.run_id, "epoch_time_s")] == list(range(21, 41))


_CRASH = r"""
import os, signal, sys
from resnext_dist.config import load_config
from resnext_dist.dist import DistInfo
from resnext_dist.tracking import Tracker
uri, root, experiment = sys.argv[1:4]
cfg = load_config(None, [f"tracking.uri={uri}", f"tracking.experiment={experiment}", f"run.root={root}",
                         "run.name=tiny"])
tracker = Tracker(cfg, DistInfo(), root + "/run")
for step in range(1, 31):
    tracker.log_metrics({"loss": float(step)}, step)
tracker.flush()
print(tracker.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit: as a node failure or an OOM kill
"""


def test_crash_before_first_checkpoint_reopens_the_recorded_run(mlflow_server, tmp_path):
    """run_id=None (no checkpoint yet) but the run dir records the run: the same MLflow run goes on."""
    experiment = f"test-{uuid.uuid4().hex[:8]}"
    r = subprocess.run([sys.executable, "-c", _CRASH, mlflow_server, str(tmp_path), experiment], cwd=REPO,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == -9, r.stderr[-2000:]
    crashed_id = r.stdout.split()[-1]
    client = client_for(mlflow_server)
    assert client.get_run(crashed_id).info.status == "RUNNING"  # nobody could end it

    cfg = load_config(None, [f"tracking.uri={mlflow_server}", f"tracking.experiment={experiment}",
                             f"run.root={tmp_path}", "run.name=tiny"])
    tracker = Tracker(cfg, DistInfo(), str(tmp_path / "run"), run_id=None)
    assert tracker.run_id == crashed_id
    for step in range(1, 41):  # no checkpoint: training starts again from step 0
        tracker.log_metrics({"loss": 1000.0 + step}, step)
    tracker.close("FINISHED")
    runs = runs_in(client, experiment)
    assert [x.info.run_id for x in runs] == [crashed_id] and runs[0].info.status == "FINISHED"
    assert [s for s, _ in history(client, crashed_id, "loss")] == list(range(1, 41))


def test_resume_never_starts_a_new_run(mlflow_server, tmp_path):
    cfg = make_cfg(tmp_path, mlflow_server)
    first = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
    first.close("FINISHED")
    cfg.checkpoint.resume = "never"
    second = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
    second.close("FINISHED")
    assert second.run_id != first.run_id
    assert len(runs_in(client_for(mlflow_server), cfg.tracking.experiment)) == 2


def test_system_metrics_are_logged_when_enabled(mlflow_server, tmp_path):
    cfg = make_cfg(tmp_path, mlflow_server, "tracking.system_metrics=true", "tracking.system_metrics_interval_s=0.5")
    tracker = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
    client = client_for(mlflow_server)
    assert wait_for(lambda: any(k.startswith("system/cpu") for k in client.get_run(tracker.run_id).data.metrics))
    tracker.close("FINISHED")
    metrics = client.get_run(tracker.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics


# ----------------------------------------------------------------------------------------------
# Outages: stopped, down at start or at close, hung


@pytest.mark.slow
def test_server_stopped_mid_run_then_restarted_history_complete(mlflow_server_factory, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    server = mlflow_server_factory()
    cfg = make_cfg(tmp_path, server.uri)
    run_dir = tmp_path / "run"
    tracker = Tracker(cfg, DistInfo(), str(run_dir))
    run_id = tracker.run_id
    for step in range(1, 11):
        tracker.log_metrics({"loss": float(step), "lr": 0.1}, step)
    tracker.flush()

    server.stop()
    waits = []
    for step in range(11, 61):
        waits.append(timed(tracker.log_metrics, {"loss": float(step), "lr": 0.1}, step))
        time.sleep(0.05)  # ~2.5 s of "training" while the server is gone
    (run_dir / "config.yaml").write_text("a: 1\n")
    tracker.log_artifact(str(run_dir / "config.yaml"))
    waits.append(timed(tracker.flush))  # an epoch end during the outage
    assert max(waits) < BLOCK_BOUND_S, waits
    assert len(tracker_warnings(caplog)) == 1, [r.getMessage() for r in tracker_warnings(caplog)]

    server.start()  # same port, same database
    client = client_for(server.uri)
    tracker.flush()  # the next epoch end: backfill
    assert wait_for(lambda: len(history(client, run_id, "loss")) == 60), "backfilled at flush, before close"
    for step in range(61, 71):
        tracker.log_metrics({"loss": float(step), "lr": 0.1}, step)
    tracker.close("FINISHED")

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert history(client, run_id, "loss") == [(s, float(s)) for s in range(1, 71)]
    assert [s for s, _ in history(client, run_id, "lr")] == list(range(1, 71))
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]
    assert len(runs_in(client, cfg.tracking.experiment)) == 1
    assert len(tracker_warnings(caplog)) == 1


@pytest.mark.slow
def test_frozen_server_at_start_and_at_close(mlflow_server_factory, tmp_path, caplog):
    """The server freezes (SIGSTOP: requests time out, and are processed later when it thaws).
    At close: the rest goes to the outbox, delivered by `sync` or by the resumed attempt, no step twice.
    At start: the run is created when the server answers again."""
    caplog.set_level(logging.INFO)
    server = mlflow_server_factory()
    synced = Tracker(make_cfg(tmp_path, server.uri, "tracking.close_timeout_s=2"), DistInfo(), str(tmp_path / "a"))
    resumed_cfg = make_cfg(tmp_path, server.uri, "tracking.close_timeout_s=2")
    resumed = Tracker(resumed_cfg, DistInfo(), str(tmp_path / "b"))
    for step in range(1, 11):
        for t in (synced, resumed):
            t.log_metrics({"loss": float(step)}, step)
    synced.flush()
    resumed.flush()

    server.pause()
    for step in range(11, 21):
        for t in (synced, resumed):
            assert timed(t.log_metrics, {"loss": float(step)}, step) < BLOCK_BOUND_S
    assert timed(synced.close, "FINISHED") < 2 + BLOCK_BOUND_S
    assert timed(resumed.close, "KILLED") < 2 + BLOCK_BOUND_S
    for d in ("a", "b"):
        assert (tmp_path / d / OUTBOX_FILE).exists()
    late_cfg = make_cfg(tmp_path, server.uri)
    t0 = time.monotonic()
    late = Tracker(late_cfg, DistInfo(), str(tmp_path / "c"))
    assert time.monotonic() - t0 < late_cfg.tracking.timeout_s + 1 + BLOCK_BOUND_S
    assert late.run_id is None
    for step in range(1, 6):
        assert timed(late.log_metrics, {"loss": float(step)}, step) < BLOCK_BOUND_S

    server.resume()  # requests that timed out on our side may be stored now: they must not appear twice
    client = client_for(server.uri)
    r = subprocess.run([sys.executable, "-m", "resnext_dist.tracking", "sync", str(tmp_path / "a")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert history(client, synced.run_id, "loss") == [(s, float(s)) for s in range(1, 21)]
    assert client.get_run(synced.run_id).info.status == "FINISHED"
    assert not (tmp_path / "a" / OUTBOX_FILE).exists()

    again = Tracker(resumed_cfg, DistInfo(), str(tmp_path / "b"), run_id=resumed.run_id)
    for step in range(16, 31):  # resumed from a checkpoint at step 15
        again.log_metrics({"loss": 1000.0 + step}, step)
    again.close("FINISHED")
    assert history(client, resumed.run_id, "loss") == \
        [(s, float(s)) for s in range(1, 21)] + [(s, 1000.0 + s) for s in range(21, 31)]
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    assert not (tmp_path / "b" / OUTBOX_FILE).exists()

    late.close("FINISHED")
    assert late.run_id is not None
    run = client.get_run(late.run_id)
    assert run.info.status == "FINISHED" and run.data.params == config_params(late_cfg)
    assert history(client, late.run_id, "loss") == [(s, float(s)) for s in range(1, 6)]
    assert len(runs_in(client, late_cfg.tracking.experiment)) == 1


def test_hung_server_never_blocks_training(tmp_path, caplog):
    """A server that accepts connections and never answers (the worst case: every request times out)."""
    caplog.set_level(logging.INFO)
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(128)  # the kernel completes handshakes; nobody ever reads or answers
        uri = f"http://127.0.0.1:{hole.getsockname()[1]}"
        cfg = make_cfg(tmp_path, uri, "tracking.close_timeout_s=2")
        import mlflow  # noqa: F401  (the import's seconds are not what is measured here)

        t0 = time.monotonic()
        tracker = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
        assert time.monotonic() - t0 < cfg.tracking.timeout_s + 1 + BLOCK_BOUND_S
        waits = [timed(tracker.log_metrics, {"loss": float(s)}, s) for s in range(1, 201)]
        waits.append(timed(tracker.flush))
        assert max(waits) < BLOCK_BOUND_S
        assert timed(tracker.close, "FINISHED") < cfg.tracking.close_timeout_s + BLOCK_BOUND_S
        outage = [r for r in tracker_warnings(caplog) if "not answering" in r.getMessage()]
        assert len(outage) == 1 and len(tracker_warnings(caplog)) == 2  # the outage, and what close left behind
        outbox = (tmp_path / "run" / OUTBOX_FILE).read_text()
        assert len(outbox.splitlines()) == 1 + 200  # header + every point

        cfg.checkpoint.resume = "never"  # a new training run in the same run dir: its outbox is its own
        other = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
        other.log_metrics({"loss": 1.0}, 1)
        other.close("FINISHED")
    assert (tmp_path / "run" / OUTBOX_FILE).read_text() == outbox
    assert len(list((tmp_path / "run").glob("mlflow_outbox*.jsonl"))) == 2
