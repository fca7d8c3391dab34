"""Tracker against a real `mlflow server` (tests/plugins/mlflow_server.py): what lands in MLflow, checked
through MlflowClient, and how the tracker behaves when the server stops, hangs, or comes back.

The "trainer" here writes log.jsonl through runlog.RunLog, as the real one does; the Tracker reads it."""
import json
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
from resnext_dist.runlog import RunLog, read_log
from resnext_dist.tracking.mirror import RUN_FILE
from resnext_dist.tracking.mlflow_store import config_params
from resnext_dist.tracking.mlflow_tracker import Tracker
from tests.plugins.mlflow_server import client_for, runs_in

pytestmark = pytest.mark.mlflow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK_BOUND_S = 1.5  # a behaviour bound ("never blocks the step"), not a performance target


def make_cfg(tmp_path, uri, *overrides):
    experiment = f"test-{uuid.uuid4().hex[:8]}"
    return load_config(None, [f"tracking.uri={uri}", f"tracking.experiment={experiment}", f"run.root={tmp_path}",
                              "run.name=tiny", "tracking.timeout_s=1", "tracking.close_timeout_s=20",
                              "tracking.retry_max_s=2",  # an outage test waits 2 s at most for the next try
                              *overrides])


def run_log(run_dir) -> RunLog:
    os.makedirs(run_dir, exist_ok=True)
    return RunLog(os.path.join(run_dir, "log.jsonl"))


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


def cursor(run_dir) -> dict:
    return json.loads((run_dir / RUN_FILE).read_text())


def final_files(run_dir, cfg, model):
    """What a finished run leaves for its MLflow model: export/ (its final weights) and config.yaml."""
    from resnext_dist.config import to_yaml
    from resnext_dist.weights.export import write_export
    os.makedirs(run_dir, exist_ok=True)
    export = write_export(model, cfg, os.path.join(run_dir, "export"))
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(to_yaml(cfg))
    return export, os.path.join(run_dir, "config.yaml")


def logits(model_uri, x):
    """What MLflow's own loader serves for a logged model: its predictions, one column per class."""
    import mlflow.pyfunc
    import torch
    return torch.from_numpy(mlflow.pyfunc.load_model(model_uri).predict(x.numpy()).to_numpy())


def all_sent(run_dir) -> bool:
    """The cursor is at the end of log.jsonl: MLflow holds every record."""
    return cursor(run_dir)["offset"] == (run_dir / "log.jsonl").stat().st_size


# ----------------------------------------------------------------------------------------------
# What a run holds


def test_one_run_with_params_tags_metric_history_and_artifacts(mlflow_server, tmp_path):
    cfg = make_cfg(tmp_path, mlflow_server, "model.layers=[1,1,1,1]")
    run_dir = tmp_path / "run"
    tracker = Tracker(cfg, DistInfo(), str(run_dir))
    assert tracker.run_id, "the run exists before training starts when the server answers"
    log = run_log(run_dir)
    log.write("start", 0, world_size=1, backend="gloo", model="resnext50_32x4d", parameters=25_000_000)
    for step in range(1, 51):
        log.write("step", step, epoch=(step - 1) // 10, loss=1.0 / step, lr=0.1, img_per_s=100.0 + step, res=224,
                  note="skipped", finite=True)
        if step % 10 == 0:
            log.write("epoch", step, epoch=step // 10 - 1, val_top1=step / 100.0, val_images=50)
            log.write("event", step, event="checkpoint_saved")
    log.write("summary", 50, best_val_top1=0.5, final_val_top1=0.5, epochs_done=5, train_hours=0.01)
    log.close()
    (run_dir / "config.yaml").write_text("model:\n  arch: resnext50_32x4d\n")
    tracker.log_artifact(str(run_dir / "config.yaml"))
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "curve.csv").write_text("step,loss\n1,2.3\n")
    tracker.log_artifact(str(run_dir / "plots"))
    tracker.close("FINISHED")

    client = client_for(mlflow_server)
    runs = runs_in(client, cfg.tracking.experiment)
    assert [r.info.run_id for r in runs] == [tracker.run_id]
    assert client.get_experiment_by_name(cfg.tracking.experiment).tags["mlflow.experimentKind"] == \
        "custom_model_development"  # the UI opens on the runs table and training charts
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.params == config_params(cfg)
    tags = run.data.tags
    for key in ("git.commit", "git.dirty", "mlflow.source.git.commit", "world_size", "num_nodes", "device", "host",
                "version.torch", "version.ffcv", "version.resnext_dist"):
        assert key in tags, key
    assert tags["world_size"] == "1" and tags["device"] == "cpu" and tags["attempt"] == "1"
    note = tags["mlflow.note.content"]  # the start record, readable, as the run's description
    assert "| backend | gloo |" in note and "| parameters | 25000000 |" in note
    assert history(client, tracker.run_id, "loss") == [(s, 1.0 / s) for s in range(1, 51)]
    assert [s for s, _ in history(client, tracker.run_id, "img_per_s")] == list(range(1, 51))
    assert history(client, tracker.run_id, "val_top1") == [(s, s / 100.0) for s in range(10, 51, 10)]
    # constants are tags, not charts (res: data.min_train_res is 0, a fixed resolution); text is neither
    assert tags["res"] == "224" and tags["val_images"] == "50"
    assert {"note", "finite", "epoch", "res", "val_images"}.isdisjoint(run.data.metrics)
    assert {k: run.data.metrics[k] for k in ("best_val_top1", "final_val_top1", "epochs_done", "train_hours")} == \
        {"best_val_top1": 0.5, "final_val_top1": 0.5, "epochs_done": 5, "train_hours": 0.01}
    assert sorted(a.path for a in client.list_artifacts(tracker.run_id)) == ["config.yaml", "plots"]
    assert [a.path for a in client.list_artifacts(tracker.run_id, "plots")] == ["plots/curve.csv"]
    local = client.download_artifacts(tracker.run_id, "config.yaml", str(tmp_path))
    assert open(local).read().startswith("model:")
    assert all_sent(run_dir) and cursor(run_dir)["run_id"] == tracker.run_id


def test_res_is_a_metric_when_the_resolution_changes(mlflow_server, tmp_path):
    cfg = make_cfg(tmp_path, mlflow_server, "data.min_train_res=8", "data.train_res=16")
    tracker = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
    log = run_log(tmp_path / "run")
    for step, res in ((1, 8), (2, 12), (3, 16)):
        log.write("step", step, loss=1.0, res=res)
    log.close()
    tracker.close("FINISHED")
    assert history(client_for(mlflow_server), tracker.run_id, "res") == [(1, 8.0), (2, 12.0), (3, 16.0)]


def test_logged_model_loads_back_with_the_same_logits(mlflow_server, tmp_path):
    import mlflow
    import mlflow.pytorch
    import torch

    from resnext_dist.models import build_model
    from tests.tiny import TINY
    # logging a model takes seconds, tens of them on a busy 2-core machine: this is not about a timeout
    cfg = make_cfg(tmp_path, mlflow_server, "tracking.close_timeout_s=300",
                   *[o for o in TINY if o.startswith("model.")])
    model = build_model(cfg.model).eval()
    tracker = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
    weights, config = final_files(tmp_path / "run", cfg, model)
    tracker.log_model(weights, (2, 3, 16, 16))
    tracker.close("FINISHED")
    run = client_for(mlflow_server).get_run(tracker.run_id)
    (output,) = run.outputs.model_outputs
    mlflow.set_tracking_uri(mlflow_server)
    info = mlflow.models.get_model_info(f"models:/{output.model_id}")
    assert info.signature is not None and info.saved_input_example_info is not None
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(logits(f"models:/{output.model_id}", x), model(x), atol=1e-5)

    off = Tracker(make_cfg(tmp_path, mlflow_server, "tracking.log_model=false"), DistInfo(), str(tmp_path / "off"))
    off.log_model(weights, (2, 3, 16, 16))
    off.close("FINISHED")
    assert not client_for(mlflow_server).get_run(off.run_id).outputs.model_outputs
    # no model: the export goes as the plain artifact export/ (the final weights in MLflow once either way)
    assert [a.path for a in client_for(mlflow_server).list_artifacts(off.run_id, "export")] == \
        ["export/model.json", "export/model.safetensors"]


def test_failed_and_killed_statuses(mlflow_server, tmp_path):
    client = client_for(mlflow_server)
    for status in ("FAILED", "KILLED"):
        cfg = make_cfg(tmp_path, mlflow_server)
        tracker = Tracker(cfg, DistInfo(), str(tmp_path / status))
        log = run_log(tmp_path / status)
        log.write("step", 1, loss=1.0)
        log.close()
        tracker.close(status)
        assert client.get_run(tracker.run_id).info.status == status
        assert history(client, tracker.run_id, "loss") == [(1, 1.0)]


# ----------------------------------------------------------------------------------------------
# One run across restarts, no duplicate steps


def test_reopen_by_run_id_continues_the_run_without_duplicate_steps(mlflow_server, tmp_path):
    cfg = make_cfg(tmp_path, mlflow_server)
    first = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
    log = run_log(tmp_path / "run")
    for step in range(1, 31):  # the crashed attempt got to step 30; its last checkpoint was at step 20
        log.write("step", step, loss=float(step))
    log.close()
    first.close("KILLED")

    client = client_for(mlflow_server)
    assert client.get_run(first.run_id).info.status == "KILLED"
    second = Tracker(cfg, DistInfo(), str(tmp_path / "run"), run_id=first.run_id)
    assert second.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"
    log = run_log(tmp_path / "run")
    for step in range(21, 41):  # resumed from the checkpoint at step 20
        log.write("step", step, loss=1000.0 + step, epoch_time_s=1.0)
    log.close()
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
import os, signal, sys, time
from resnext_dist.config import load_config
from resnext_dist.dist import DistInfo
from resnext_dist.runlog import RunLog
from resnext_dist.tracking.mlflow_tracker import Tracker
uri, root, experiment, wait = sys.argv[1:5]
cfg = load_config(None, [f"tracking.uri={uri}", f"tracking.experiment={experiment}", f"run.root={root}",
                         "run.name=tiny", "tracking.timeout_s=1"])
tracker = Tracker(cfg, DistInfo(), root + "/run")
log = RunLog(root + "/run/log.jsonl")
for step in range(1, 31):
    log.write("step", step, loss=float(step))
time.sleep(float(wait))
print(tracker.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit: as a node failure or an OOM kill
"""


def crash(uri, root, experiment, wait_s=3.0):
    r = subprocess.run([sys.executable, "-c", _CRASH, uri, str(root), experiment, str(wait_s)], cwd=REPO,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == -9, r.stderr[-2000:]
    return r.stdout.split()[-1]


def test_crash_before_first_checkpoint_reopens_the_recorded_run(mlflow_server, tmp_path):
    """run_id=None (no checkpoint yet) but the run dir records the run: the same MLflow run goes on."""
    experiment = f"test-{uuid.uuid4().hex[:8]}"
    crashed_id = crash(mlflow_server, tmp_path, experiment)
    client = client_for(mlflow_server)
    assert client.get_run(crashed_id).info.status == "RUNNING"  # nobody could end it

    cfg = load_config(None, [f"tracking.uri={mlflow_server}", f"tracking.experiment={experiment}",
                             f"run.root={tmp_path}", "run.name=tiny"])
    tracker = Tracker(cfg, DistInfo(), str(tmp_path / "run"), run_id=None)
    assert tracker.run_id == crashed_id
    log = run_log(tmp_path / "run")
    for step in range(1, 41):  # no checkpoint: training starts again from step 0
        log.write("step", step, loss=1000.0 + step)
    log.close()
    tracker.close("FINISHED")
    runs = runs_in(client, experiment)
    assert [x.info.run_id for x in runs] == [crashed_id] and runs[0].info.status == "FINISHED"
    assert history(client, crashed_id, "loss") == [(s, float(s)) for s in range(1, 31)] + \
        [(s, 1000.0 + s) for s in range(31, 41)]


def test_resume_never_starts_a_new_run_and_ends_the_orphan(mlflow_server, tmp_path):
    """A run left RUNNING by a killed trainer is ended KILLED when its run dir starts a different MLflow run;
    log.jsonl says so. The new run holds only its own records."""
    experiment = f"test-{uuid.uuid4().hex[:8]}"
    orphan = crash(mlflow_server, tmp_path, experiment)
    client = client_for(mlflow_server)
    assert client.get_run(orphan).info.status == "RUNNING"
    cfg = load_config(None, [f"tracking.uri={mlflow_server}", f"tracking.experiment={experiment}",
                             f"run.root={tmp_path}", "run.name=tiny", "checkpoint.resume=never"])
    second = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
    log = run_log(tmp_path / "run")
    log.write("step", 1, loss=7.0)
    log.close()
    second.close("FINISHED")
    assert second.run_id != orphan
    assert client.get_run(orphan).info.status == "KILLED"
    events = [r for r in read_log(tmp_path / "run" / "log.jsonl") if r["kind"] == "event"
              and r["event"] != "tracked"]
    assert [(e["event"], e["run_id"], e["status"]) for e in events] == [("mlflow_run_closed", orphan, "KILLED")]
    assert history(client, second.run_id, "loss") == [(1, 7.0)]
    assert len(runs_in(client, experiment)) == 2


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
    log = run_log(run_dir)
    for step in range(1, 11):
        log.write("step", step, loss=float(step), lr=0.1)
    assert wait_for(lambda: all_sent(run_dir))

    server.stop()
    waits = []
    for step in range(11, 61):
        waits.append(timed(log.write, "step", step, loss=float(step), lr=0.1))
        time.sleep(0.05)  # ~2.5 s of "training" while the server is gone
    (run_dir / "config.yaml").write_text("a: 1\n")
    waits.append(timed(tracker.log_artifact, str(run_dir / "config.yaml")))
    time.sleep(2)
    assert max(waits) < BLOCK_BOUND_S, waits
    assert len(tracker_warnings(caplog)) == 1, [r.getMessage() for r in tracker_warnings(caplog)]

    server.start()  # same port, same database
    client = client_for(server.uri)
    assert wait_for(lambda: len(history(client, run_id, "loss")) == 60, 40), "sent when back, before close"
    assert wait_for(lambda: any("answers again" in r.getMessage() for r in caplog.records), 40)
    assert len(tracker_warnings(caplog)) == 1
    server.stop()  # a second outage: one more warning
    for step in range(61, 71):
        log.write("step", step, loss=float(step), lr=0.1)
    assert wait_for(lambda: len(tracker_warnings(caplog)) == 2, 10)
    time.sleep(2)
    assert len(tracker_warnings(caplog)) == 2, [r.getMessage() for r in tracker_warnings(caplog)]
    server.start()
    log.close()
    tracker.close("FINISHED")

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert history(client, run_id, "loss") == [(s, float(s)) for s in range(1, 71)]
    assert [s for s, _ in history(client, run_id, "lr")] == list(range(1, 71))
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]
    assert len(runs_in(client, cfg.tracking.experiment)) == 1
    assert len(tracker_warnings(caplog)) == 2


@pytest.mark.slow
def test_frozen_server_at_start_and_at_close(mlflow_server_factory, tmp_path, caplog):
    """The server freezes (SIGSTOP: requests time out, and are processed later when it thaws).
    At close: the rest stays after the cursor, sent by `sync` or by the resumed attempt, no step twice.
    At start: the run is created when the server answers again."""
    caplog.set_level(logging.INFO)
    server = mlflow_server_factory()
    synced = Tracker(make_cfg(tmp_path, server.uri, "tracking.close_timeout_s=2"), DistInfo(), str(tmp_path / "a"))
    resumed_cfg = make_cfg(tmp_path, server.uri, "tracking.close_timeout_s=2")
    resumed = Tracker(resumed_cfg, DistInfo(), str(tmp_path / "b"))
    logs = {d: run_log(tmp_path / d) for d in "abc"}
    for step in range(1, 11):
        for d in "ab":
            logs[d].write("step", step, loss=float(step))
    assert wait_for(lambda: all_sent(tmp_path / "a") and all_sent(tmp_path / "b"))

    server.pause()
    for step in range(11, 21):
        for d in "ab":
            logs[d].write("step", step, loss=float(step))
    logs["a"].close()
    logs["b"].close()
    assert timed(synced.close, "FINISHED") < 2 + BLOCK_BOUND_S
    assert timed(resumed.close, "KILLED") < 2 + BLOCK_BOUND_S
    for d in ("a", "b"):
        assert not all_sent(tmp_path / d)
    assert cursor(tmp_path / "a")["status"] == "FINISHED"
    late_cfg = make_cfg(tmp_path, server.uri)
    t0 = time.monotonic()
    late = Tracker(late_cfg, DistInfo(), str(tmp_path / "c"))
    assert time.monotonic() - t0 < late_cfg.tracking.timeout_s + 1 + BLOCK_BOUND_S
    assert late.run_id is None
    for step in range(1, 6):
        assert timed(logs["c"].write, "step", step, loss=float(step)) < BLOCK_BOUND_S
    logs["c"].close()

    server.resume()  # requests that timed out on our side may be stored now: they must not appear twice
    client = client_for(server.uri)
    r = subprocess.run([sys.executable, "-m", "resnext_dist.tracking", "sync", str(tmp_path / "a")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert history(client, synced.run_id, "loss") == [(s, float(s)) for s in range(1, 21)]
    assert client.get_run(synced.run_id).info.status == "FINISHED"
    assert all_sent(tmp_path / "a")

    again = Tracker(resumed_cfg, DistInfo(), str(tmp_path / "b"), run_id=resumed.run_id)
    log = run_log(tmp_path / "b")
    for step in range(16, 31):  # resumed from a checkpoint at step 15
        log.write("step", step, loss=1000.0 + step)
    log.close()
    again.close("FINISHED")
    assert history(client, resumed.run_id, "loss") == \
        [(s, float(s)) for s in range(1, 21)] + [(s, 1000.0 + s) for s in range(21, 31)]
    assert client.get_run(resumed.run_id).info.status == "FINISHED"

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
        log = run_log(tmp_path / "run")
        waits = [timed(log.write, "step", s, loss=float(s)) for s in range(1, 201)]
        waits.append(timed(tracker.log_artifact, str(tmp_path / "run" / "log.jsonl")))
        assert max(waits) < BLOCK_BOUND_S
        log.close()
        assert timed(tracker.close, "FINISHED") < cfg.tracking.close_timeout_s + BLOCK_BOUND_S
        outage = [r for r in tracker_warnings(caplog) if "not answering" in r.getMessage()]
        assert len(outage) == 1 and len(tracker_warnings(caplog)) == 2  # the outage, and what close left behind
        left = cursor(tmp_path / "run")
        assert left["run_id"] is None and left["offset"] == 0 and left["status"] == "FINISHED"
        assert left["artifacts"] == [[str(tmp_path / "run" / "log.jsonl"), None]]  # for sync or the next attempt

        cfg.checkpoint.resume = "never"  # a new training run in the same run dir: it starts after the old records
        other = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
        other.close("FINISHED")
    assert cursor(tmp_path / "run")["start"] == (tmp_path / "run" / "log.jsonl").stat().st_size


def test_an_artifact_asked_for_during_an_outage_is_in_the_cursor_at_once(tmp_path):
    """log_artifact lists the file in the cursor before anything is sent: a SIGKILL during an outage loses no
    upload (the next attempt or `sync` sends it)."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(128)
        cfg = make_cfg(tmp_path, f"http://127.0.0.1:{hole.getsockname()[1]}", "tracking.close_timeout_s=1")
        tracker = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
        (tmp_path / "run" / "config.yaml").write_text("a: 1\n")
        tracker.log_artifact(str(tmp_path / "run" / "config.yaml"))
        assert cursor(tmp_path / "run")["artifacts"] == [[str(tmp_path / "run" / "config.yaml"), None]]
        tracker.close("KILLED")


def test_submit_names_where_the_run_appears(mlflow_server, tmp_path):
    """launch/submit.py prints the experiment's runs table on a server (once it exists), else the UI command."""
    from resnext_dist.tracking import experiment_link
    cfg = make_cfg(tmp_path, mlflow_server)
    assert experiment_link(cfg) == f"{mlflow_server}  (experiment {cfg.tracking.experiment})"  # not created yet
    experiment_id = client_for(mlflow_server).create_experiment(cfg.tracking.experiment)
    assert experiment_link(cfg) == (f"{mlflow_server.rstrip('/')}/#/experiments/{experiment_id}/runs"
                                    "?workflowType=machine_learning&viewStateShareKey=training")
    local = load_config(None, [f"run.root={tmp_path}"])
    assert experiment_link(local).startswith(f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db")


# ----------------------------------------------------------------------------------------------
# Tracking completes (issue 25): a broken cursor, the model after an outage, another store, a full store


def sync_to(run_dir, *args):
    r = subprocess.run([sys.executable, "-m", "resnext_dist.tracking", "sync", str(run_dir), *args], cwd=REPO,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


@pytest.mark.parametrize("broken", ['[1]', '{"run_id": 3, "tracking_uri": "x"}', "offset beyond the log", "{"],
                         ids=["list", "ill-typed", "offset", "torn"])
def test_a_broken_cursor_is_made_anew_and_the_run_loses_and_doubles_nothing(mlflow_server, tmp_path, broken):
    cfg = make_cfg(tmp_path, mlflow_server)
    first = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
    log = run_log(tmp_path / "run")
    for step in range(1, 21):
        log.write("step", step, loss=float(step))
    log.close()
    first.close("KILLED")
    if broken == "offset beyond the log":
        rec = cursor(tmp_path / "run")
        broken = json.dumps(dict(rec, offset=10**9))
    (tmp_path / "run" / RUN_FILE).write_text(broken)
    again = Tracker(cfg, DistInfo(), str(tmp_path / "run"), run_id=first.run_id)  # the checkpoint's run id
    log = run_log(tmp_path / "run")
    for step in range(21, 31):
        log.write("step", step, loss=float(step))
    log.close()
    again.close("FINISHED")
    client = client_for(mlflow_server)
    assert [r.info.run_id for r in runs_in(client, cfg.tracking.experiment)] == [first.run_id]
    assert history(client, first.run_id, "loss") == [(s, float(s)) for s in range(1, 31)]  # the replay: once
    assert cursor(tmp_path / "run")["run_id"] == first.run_id and all_sent(tmp_path / "run")


def test_the_model_asked_for_during_an_outage_is_logged_by_sync(mlflow_server_factory, tmp_path):
    """The server is away for the whole run: close gives up; the model request waits in the cursor, beside the
    artifacts, and `sync` logs both once the server is back."""
    import torch

    from resnext_dist.models import build_model
    from tests.tiny import TINY
    server = mlflow_server_factory()
    server.stop()
    cfg = make_cfg(tmp_path, server.uri, "tracking.close_timeout_s=1", *[o for o in TINY if o.startswith("model.")])
    run_dir = tmp_path / "run"
    tracker = Tracker(cfg, DistInfo(), str(run_dir))
    log = run_log(run_dir)
    for step in range(1, 6):
        log.write("step", step, loss=float(step))
    log.close()
    model = build_model(cfg.model).eval()
    weights, config = final_files(run_dir, cfg, model)
    tracker.log_artifact(config)
    tracker.log_model(weights, (2, 3, 16, 16))
    tracker.close("FINISHED")
    left = cursor(run_dir)
    assert left["run_id"] is None and left["model"]["export"] == weights and left["artifacts"]

    server.start()
    assert "; status FINISHED" in sync_to(run_dir)
    client = client_for(server.uri)
    (run,) = runs_in(client, cfg.tracking.experiment)
    assert run.info.status == "FINISHED" and [a.path for a in client.list_artifacts(run.info.run_id)] == \
        ["config.yaml"]
    (output,) = client.get_run(run.info.run_id).outputs.model_outputs
    import mlflow
    mlflow.set_tracking_uri(server.uri)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(logits(f"models:/{output.model_id}", x), model(x), atol=1e-5)
    assert cursor(run_dir)["model"] is None and history(client, run.info.run_id, "loss")[-1] == (5, 5.0)


def test_sync_uri_sends_the_whole_run_to_another_store_once(mlflow_server, mlflow_server_factory, tmp_path):
    from resnext_dist.models import build_model
    from tests.tiny import TINY
    cfg = make_cfg(tmp_path, mlflow_server, *[o for o in TINY if o.startswith("model.")])
    run_dir = tmp_path / "run"
    tracker = Tracker(cfg, DistInfo(), str(run_dir))
    log = run_log(run_dir)
    log.write("start", 0, world_size=1, resumed_from=None)
    for step in range(1, 11):
        log.write("step", step, loss=float(step), lr=0.1)
    log.write("epoch", 10, epoch=0, val_top1=0.5, val_images=50)
    log.close()
    weights, config = final_files(run_dir, cfg, build_model(cfg.model))
    (run_dir / "DONE").write_text(json.dumps({"step": 10, "epochs_done": 1}))
    tracker.log_artifact(config)
    tracker.close("FINISHED")
    home = (run_dir / RUN_FILE).read_text()

    other = mlflow_server_factory()
    out = sync_to(run_dir, "--uri", other.uri)
    assert out.startswith("sent 21 metric points to MLflow run ") and out.endswith(f"({other.uri}); status FINISHED")
    client = client_for(other.uri)
    (run,) = runs_in(client, cfg.tracking.experiment)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny" and run.data.params == config_params(cfg)
    assert history(client, run.info.run_id, "loss") == [(s, float(s)) for s in range(1, 11)]
    assert history(client, run.info.run_id, "val_top1") == [(10, 0.5)] and run.data.tags["val_images"] == "50"
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["config.yaml", "log.jsonl"]
    assert len(client.get_run(run.info.run_id).outputs.model_outputs) == 1
    assert sync_to(run_dir, "--uri", other.uri).startswith("sent 0 metric points")  # once: its own cursor goes on
    assert len(runs_in(client, cfg.tracking.experiment)) == 1
    assert (run_dir / RUN_FILE).read_text() == home  # the run's own store is not touched
    tracked = [r for r in read_log(run_dir / "log.jsonl") if r.get("event") == "tracked"]
    assert [(t["tracking_uri"], t["how"]) for t in tracked] == [(mlflow_server, "created"), (other.uri, "created")]


def test_a_resume_with_a_new_uri_backfills_the_run_and_the_old_store_can_still_be_synced(
        mlflow_server, mlflow_server_factory, tmp_path):
    from resnext_dist.tracking.mlflow_tracker import open_tracker
    old_cfg = make_cfg(tmp_path, mlflow_server)
    run_dir = tmp_path / "run"
    first = Tracker(old_cfg, DistInfo(), str(run_dir))
    log = run_log(run_dir)
    log.write("start", 0, world_size=1, resumed_from=None)
    for step in range(1, 21):
        log.write("step", step, loss=float(step))
    log.close()
    first.close("KILLED")
    state = first.state  # what the checkpoint kept: the run id of the old store
    assert state == {"mlflow_run_id": first.run_id, "tracking_uri": mlflow_server}

    other = mlflow_server_factory()
    new_cfg = make_cfg(tmp_path, other.uri)
    again = open_tracker(new_cfg, DistInfo(), str(run_dir), state)
    log = run_log(run_dir)
    log.write("start", 15, world_size=1, resumed_from="step_15.pt")
    for step in range(16, 31):  # resumed from a checkpoint at step 15
        log.write("step", step, loss=1000.0 + step)
    log.close()
    again.close("FINISHED")
    (run_dir / "DONE").write_text(json.dumps({"step": 30, "epochs_done": 1}))
    client = client_for(other.uri)
    (run,) = runs_in(client, new_cfg.tracking.experiment)
    assert run.info.run_id != first.run_id and run.info.status == "FINISHED"
    assert history(client, run.info.run_id, "loss") == \
        [(s, float(s)) for s in range(1, 21)] + [(s, 1000.0 + s) for s in range(21, 31)]  # the steps before too

    sync_to(run_dir, "--uri", mlflow_server)  # the old store's cursor was kept: it goes on from where it was
    old = client_for(mlflow_server)
    assert old.get_run(first.run_id).info.status == "FINISHED"
    assert history(old, first.run_id, "loss") == \
        [(s, float(s)) for s in range(1, 21)] + [(s, 1000.0 + s) for s in range(21, 31)]
    assert len(runs_in(old, old_cfg.tracking.experiment)) == 1


def test_a_full_artifact_store_is_reported_as_full_and_synced_once_there_is_room(tmp_path, caplog):
    """The default store (sqlite beside run.root, artifacts in run.root/mlartifacts) on a disk that is full."""
    from tests.mounts import small_tmpfs
    caplog.set_level(logging.INFO)
    cfg = load_config(None, [f"run.root={tmp_path}", "run.name=tiny", f"tracking.experiment=e-{uuid.uuid4().hex[:6]}",
                             "tracking.close_timeout_s=3", "tracking.timeout_s=1"])
    run_dir = tmp_path / "run"
    with small_tmpfs(tmp_path / "mlartifacts", "64k"):
        tracker = Tracker(cfg, DistInfo(), str(run_dir))
        big = run_dir / "final_weights.pt"
        big.write_bytes(os.urandom(512 * 1024))
        tracker.log_artifact(str(big))
        tracker.close("FINISHED")
        said = [r.getMessage() for r in tracker_warnings(caplog)]
        assert any("is full" in m and "No space left on device" in m for m in said), said
        assert not any("not answering" in m for m in said), said
        assert cursor(run_dir)["artifacts"] == [[str(big), None]]
    assert sync_to(run_dir).endswith("status FINISHED")  # the disk unmounted: room again
    client = client_for(f"sqlite:///{tmp_path}/mlflow.db")
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["final_weights.pt"]


def test_a_close_gives_up_at_once_when_asked_and_the_summary_names_no_run(tmp_path, caplog):
    """A signal during a hung close (give_up); and a run the store never made is described as such."""
    caplog.set_level(logging.INFO)
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(128)
        cfg = make_cfg(tmp_path, f"http://127.0.0.1:{hole.getsockname()[1]}", "tracking.close_timeout_s=120")
        tracker = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
        assert tracker.describe().startswith("not created yet: ") and "None" not in tracker.describe()
        asked = []
        t = timed(tracker.close, "FINISHED", give_up=lambda: bool(asked.append(1)) or len(asked) > 3)
        assert t < BLOCK_BOUND_S
        assert any("stopped waiting on a signal" in r.getMessage() for r in tracker_warnings(caplog))
        assert cursor(tmp_path / "run")["status"] == "FINISHED"


def test_tries_while_mlflow_does_not_answer_are_at_most_retry_max_s_apart(tmp_path):
    """tracking.retry_max_s=1: a server that closes every connection is tried about every second (the default
    backoff, 1 s doubling, would try at 0, 1, 3, 7 s: 3 times in the first 6 s)."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    tries, stop = [], threading.Event()

    def refuse():  # accepts and closes at once: every request of a try fails, and one connection is one try
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            tries.append(time.monotonic())
            conn.close()

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    cfg = make_cfg(tmp_path, f"http://127.0.0.1:{listener.getsockname()[1]}", "tracking.retry_max_s=1",
                   "tracking.close_timeout_s=0")
    tracker = Tracker(cfg, DistInfo(), str(tmp_path / "run"))
    try:
        assert wait_for(lambda: tries, 10)
        t0 = tries[0]
        time.sleep(6.5)
        gaps = [b - a for a, b in zip(tries, tries[1:]) if b - t0 < 6.5]
        assert len(gaps) >= 4 and max(gaps) < 1 + BLOCK_BOUND_S, gaps
    finally:
        tracker.close("KILLED")
        stop.set()
        thread.join()
        listener.close()
