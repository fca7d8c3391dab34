"""MLflow tracking of real training runs (2 ranks under torchrun or srun-style env, tiny net, synthetic data)
against a real `mlflow server`: one MLflow run per training run, across a torchrun restart, a signal and a
resume; the MLflow history mirrors log.jsonl step for step; a server outage neither slows training nor leaves
holes, and a trainer SIGKILLed during an outage loses nothing; an exception marks the run FAILED; the final
model loads back through MLflow with the same logits."""
import json
import os
import signal
import subprocess
import time
import uuid
from collections import defaultdict

import pytest

from resnext_dist.config import load_config
from resnext_dist.runlog import read_log
from resnext_dist.tracking.mirror import RUN_FILE
from resnext_dist.tracking.mlflow_store import config_params
from tests.tiny import PYTHON, REPO, TINY, env, free_port, run_train
from tests.plugins.mlflow_server import client_for, runs_in

pytestmark = [pytest.mark.slow, pytest.mark.mlflow]

NOT_METRICS = {"kind", "step", "time", "epoch"}  # log.jsonl fields that are not MLflow metrics
CONSTANTS = {"res", "val_images"}  # fixed resolution (data.min_train_res=0) and val set size: tags, not charts


def ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def tracked(uri, *more):
    """Overrides that turn tracking on, into a fresh experiment, with a short HTTP timeout and, after an outage,
    a next try within 2 s (the default backoff grows to 30 s: seconds of waiting in every outage test)."""
    return ["tracking.enabled=true", f"tracking.uri={uri}", f"tracking.experiment=train-{uuid.uuid4().hex[:8]}",
            "tracking.timeout_s=1", "tracking.retry_max_s=2", *more]


def experiment_of(overrides):
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("tracking.experiment="))


def run_name(run_dir, overrides):
    """The MLflow run is named after the training run: run.name in the run's resolved config."""
    from omegaconf import OmegaConf
    return OmegaConf.load(os.path.join(run_dir, "config.yaml")).run.name


def history(client, run_id, key):
    return sorted(((m.step, m.value) for m in client.get_metric_history(run_id, key)))


def logged_metrics(run_dir):
    """key -> step -> set of values, from log.jsonl's metric records (a resumed run may log a step twice).
    Events are not metrics (they stay in log.jsonl)."""
    out = defaultdict(lambda: defaultdict(set))
    for r in read_log(os.path.join(run_dir, "log.jsonl")):
        if r["kind"] not in ("step", "epoch", "summary"):
            continue
        for k, v in r.items():
            if k not in NOT_METRICS and isinstance(v, (int, float)):
                out[k][r["step"]].add(float(v))
    return out


def assert_mirrors_log(client, run_id, run_dir):
    """Every numeric log.jsonl field is an MLflow metric with every logged step exactly once (constants: a tag)."""
    logged = logged_metrics(run_dir)
    assert {"loss", "lr", "img_per_s", "data_wait", "val_top1", "val_top5", "val_loss", "epoch_time_s"} <= logged.keys()
    tags, metrics = client.get_run(run_id).data.tags, client.get_run(run_id).data.metrics
    for key in CONSTANTS & logged.keys():
        assert {float(tags[key])} == set().union(*logged[key].values()) and key not in metrics, key
    for key, steps in logged.items():
        if key in CONSTANTS:
            continue
        got = history(client, run_id, key)
        assert [s for s, _ in got] == sorted(steps), f"{key}: MLflow steps differ from log.jsonl"
        assert all(v in steps[s] for s, v in got), f"{key}: a value that log.jsonl does not have"


def test_two_rank_run_is_one_mlflow_run_mirroring_the_log(mlflow_server, tmp_path):
    run = tmp_path / "run"
    overrides = tracked(mlflow_server, "train.epochs=2")
    ok(run_train(run, overrides, nproc=2))
    client = client_for(mlflow_server)
    runs = runs_in(client, experiment_of(overrides))
    assert len(runs) == 1, "one MLflow run for a 2-rank training run, not one per rank"
    info, data = runs[0].info, runs[0].data
    assert info.status == "FINISHED" and info.run_name == run_name(run, overrides)
    assert data.params == config_params(load_config(str(run / "config.yaml")))
    assert data.tags["world_size"] == "2" and data.tags["num_nodes"] == "1" and data.tags["device"] == "cpu"
    for key in ("git.commit", "git.dirty", "host", "version.torch", "version.ffcv", "version.resnext_dist"):
        assert data.tags.get(key), key
    assert_mirrors_log(client, info.run_id, run)
    assert sorted(a.path for a in client.list_artifacts(info.run_id)) == \
        ["config.yaml", "curves.png", "log.jsonl"]  # the weights: once, in the logged model (test_weights_once.py)
    assert (run / "curves.png").stat().st_size > 10_000
    # the final model, logged as an MLflow model: MLflow's own loader gives the logits of the run's export
    import mlflow.pyfunc
    import torch
    from resnext_dist.weights import load
    (output,) = client.get_run(info.run_id).outputs.model_outputs
    mlflow.set_tracking_uri(mlflow_server)
    loaded = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(loaded.predict(x.numpy()).to_numpy()), load(str(run)).eval()(x),
                              atol=1e-5)
    assert json.loads((run / RUN_FILE).read_text())["run_id"] == info.run_id
    from tests.tiny import last_checkpoint
    assert last_checkpoint(run)["tracker"] == {"mlflow_run_id": info.run_id,  # what a resume reopens
                                               "tracking_uri": mlflow_server}


def test_resume_after_rank0_is_killed_continues_the_same_run(mlflow_server, tmp_path):
    """Rank 0 (the one that talks to MLflow) is SIGKILLed after step 7: the MLflow run is left RUNNING. The job
    is started again (a requeue) and resumes from the checkpoint at step 4: steps 5-6 are logged again, and
    must not be doubled in MLflow."""
    run = tmp_path / "run"
    overrides = tracked(mlflow_server, "train.epochs=2", "train.log_every_steps=1", "checkpoint.every_steps=4",
                        "train.deterministic=true")
    assert run_train(run, overrides, nproc=2, RESNEXT_DIST_FAULT="kill@0:7").returncode != 0
    client = client_for(mlflow_server)
    runs = runs_in(client, experiment_of(overrides))
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"  # nobody was left to end it
    ok(run_train(run, overrides, nproc=2))
    events = [r for r in read_log(run / "log.jsonl") if r["kind"] == "event" and r["event"] != "tracked"]
    assert events[0]["event"] == "resumed" and events[0]["step"] == 4
    runs = runs_in(client, experiment_of(overrides))
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["attempt"] == "2"
    assert_mirrors_log(client, runs[0].info.run_id, run)
    assert [s for s, _ in history(client, runs[0].info.run_id, "loss")] == list(range(1, 33))


def test_torchrun_restart_after_a_rank_dies_continues_the_same_run(mlflow_server, tmp_path):
    run = tmp_path / "run"
    overrides = tracked(mlflow_server, "train.epochs=2", "train.log_every_steps=1", "checkpoint.every_steps=4",
                        "tracking.log_model=false")
    ok(run_train(run, overrides, nproc=2, extra_torchrun=["--max-restarts=1"], RESNEXT_DIST_FAULT="kill@1:6:0"))
    events = [r for r in read_log(run / "log.jsonl") if r["kind"] == "event" and r["event"] != "tracked"]
    assert events[0]["event"] == "resumed" and events[0]["restart"] == 1
    client = client_for(mlflow_server)
    runs = runs_in(client, experiment_of(overrides))
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["attempt"] == "2" and runs[0].data.tags["torchrun.restart_count"] == "1"
    assert_mirrors_log(client, runs[0].info.run_id, run)
    assert not client.get_run(runs[0].info.run_id).outputs.model_outputs  # tracking.log_model=false


def _launch_two(run_dir, overrides, nproc=2):
    """Two ranks with only the env:// variables (as srun + our launcher set them): each can be signalled."""
    port = free_port()
    procs = []
    for rank in range(nproc):
        e = env(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=nproc, LOCAL_WORLD_SIZE=nproc, MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port)
        procs.append(subprocess.Popen([PYTHON, "-m", "resnext_dist.train", *TINY, f"run.dir={run_dir}", *overrides],
                                      cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _last_step(log_path):
    if not os.path.exists(log_path):
        return 0
    steps = [r["step"] for r in read_log(log_path) if r["kind"] == "step"]
    return max(steps, default=0)


def _wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_outage_then_sigterm_then_resume_is_one_complete_run(mlflow_server_factory, tmp_path):
    """The server stops mid-run and comes back: training keeps its pace and the history is backfilled at an
    epoch end; SIGTERM marks the run KILLED; the resume continues the same run to FINISHED, no step twice."""
    server = mlflow_server_factory()
    run, log = tmp_path / "run", tmp_path / "run" / "log.jsonl"
    overrides = tracked(server.uri, "train.epochs=1000", "train.log_every_steps=2")
    procs = _launch_two(run, overrides)
    try:
        _wait_until(lambda: _last_step(log) >= 10, 180, "training to start")
        server.stop()
        down_from = _last_step(log)
        _wait_until(lambda: _last_step(log) >= down_from + 40, 120, "training to go on while MLflow is down")
        server.start()
        up_at = _last_step(log)
        client = client_for(server.uri)
        runs = runs_in(client, experiment_of(overrides))
        assert len(runs) == 1
        run_id = runs[0].info.run_id
        # backfill at the next epoch ends, while training goes on
        _wait_until(lambda: len(history(client, run_id, "loss")) >= up_at // 2, 60, "the backlog to be sent")
        assert procs[0].poll() is None, "training is still running"
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [143, 143], [o[1][-2000:] for o in outs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    records = [r for r in read_log(log) if r["kind"] == "step"]
    gaps = [b["time"] - a["time"] for a, b in zip(records, records[1:])]
    assert max(gaps) < 5.0, f"a step waited on MLflow: {max(gaps):.1f} s"  # loose: seconds, not minutes
    assert client.get_run(run_id).info.status == "KILLED"
    assert_mirrors_log(client, run_id, run)

    from tests.tiny import last_checkpoint
    epochs_done = last_checkpoint(run)["epoch"]
    resume = [o for o in overrides if not o.startswith("train.epochs=")] + [f"train.epochs={epochs_done + 1}"]
    ok(run_train(run, resume, nproc=2))
    runs = runs_in(client, experiment_of(overrides))
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["attempt"] == "2"
    assert "changed_on_attempt_2" in runs[0].data.tags  # train.epochs differs; params keep the first value
    assert_mirrors_log(client, run_id, run)


def test_exception_marks_the_run_failed(mlflow_server, tmp_path):
    run = tmp_path / "run"
    overrides = tracked(mlflow_server, "train.epochs=1", "train.log_every_steps=1")
    r = run_train(run, overrides, nproc=1, RESNEXT_DIST_FAULT="nan@0:3")
    assert r.returncode not in (0, 2) and "NonFiniteLoss" in r.stderr, r.stderr[-2000:]
    client = client_for(mlflow_server)
    runs = runs_in(client, experiment_of(overrides))
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert [s for s, _ in history(client, runs[0].info.run_id, "loss")] == [1, 2]


def sync(run_dir):
    return ok(subprocess.run([PYTHON, "-m", "resnext_dist.tracking", "sync", str(run_dir)], cwd=REPO, env=env(),
                             capture_output=True, text=True, timeout=120))


def test_sigkill_while_the_server_is_down_loses_nothing_sync(mlflow_server_factory, tmp_path):
    """The server is away for the whole attempt, which is SIGKILLed in step 7 (no close, nothing sent). When the
    server is back, `sync` sends every step once and ends the run KILLED; the requeued attempt (resumed from the
    checkpoint at step 4, so steps 5-6 are logged again) continues the same run to FINISHED, no step twice."""
    server = mlflow_server_factory()
    server.stop()
    run = tmp_path / "run"
    overrides = tracked(server.uri, "train.epochs=1", "train.log_every_steps=1", "checkpoint.every_steps=4",
                        "tracking.log_model=false")
    r = run_train(run, overrides, nproc=1, RESNEXT_DIST_FAULT="kill@0:7")
    assert r.returncode == -9, r.stderr[-2000:]
    assert _last_step(run / "log.jsonl") == 6  # step 7 was not logged
    assert json.loads((run / RUN_FILE).read_text())["offset"] == 0  # nothing could be sent

    server.start()  # same port, same (empty) database
    sync(run)
    client = client_for(server.uri)
    (mirror,) = runs_in(client, experiment_of(overrides))
    assert mirror.info.status == "KILLED" and mirror.info.run_name == run_name(run, overrides)
    assert mirror.data.params == config_params(load_config(str(run / "config.yaml")))
    for key in ("loss", "lr", "img_per_s", "data_wait"):  # every step once (no epoch has ended yet)
        assert [s for s, _ in history(client, mirror.info.run_id, key)] == list(range(1, 7)), key

    ok(run_train(run, overrides, nproc=1))
    runs = runs_in(client, experiment_of(overrides))
    assert [x.info.run_id for x in runs] == [mirror.info.run_id] and runs[0].info.status == "FINISHED"
    assert [s for s, _ in history(client, mirror.info.run_id, "loss")] == list(range(1, 33))
    assert_mirrors_log(client, mirror.info.run_id, run)


def test_sigkill_during_an_outage_then_restart_loses_nothing(mlflow_server_factory, tmp_path):
    """The server stops mid-run; the trainer is SIGKILLed during the outage (its backlog unsent); the server
    comes back and the run is started again (a requeue, no sync): one MLflow run, every step exactly once."""
    server = mlflow_server_factory()
    run, log = tmp_path / "run", tmp_path / "run" / "log.jsonl"
    overrides = tracked(server.uri, "train.epochs=1000", "train.log_every_steps=1", "checkpoint.every_steps=4",
                        "tracking.log_model=false")
    (proc,) = _launch_two(run, overrides, nproc=1)
    try:
        _wait_until(lambda: _last_step(log) >= 3, 180, "training to start")
        server.stop()
        down_from = _last_step(log)
        _wait_until(lambda: _last_step(log) >= down_from + 6, 120, "training to go on while MLflow is down")
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    logged = _last_step(log)
    assert json.loads((run / RUN_FILE).read_text())["offset"] < log.stat().st_size, "a backlog was left unsent"

    server.start()
    from tests.tiny import last_checkpoint
    epochs = last_checkpoint(run)["epoch"] + 1  # finish the epoch it was killed in (32 steps each)
    ok(run_train(run, [o for o in overrides if not o.startswith("train.epochs=")] + [f"train.epochs={epochs}"]))
    client = client_for(server.uri)
    runs = runs_in(client, experiment_of(overrides))
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["attempt"] == "2"
    loss = history(client, runs[0].info.run_id, "loss")
    assert [s for s, _ in loss] == list(range(1, 32 * epochs + 1)) and logged >= down_from + 6
    assert_mirrors_log(client, runs[0].info.run_id, run)


def test_a_broken_cursor_or_a_new_uri_on_resume_still_gives_whole_runs(mlflow_server, mlflow_server_factory,
                                                                      tmp_path):
    """Killed at step 20 (checkpoint at 16); its cursor replaced by `[1]`: the resume continues the same MLflow
    run, every step once. Killed again; resumed with tracking.uri pointing at another server: that server gets
    the whole run (backfilled from log.jsonl), and `sync --uri` ends the first one with the rest."""
    run = tmp_path / "run"
    overrides = tracked(mlflow_server, "train.epochs=2", "train.log_every_steps=1", "checkpoint.every_steps=8",
                        "tracking.log_model=false")
    assert run_train(run, overrides, RESNEXT_DIST_FAULT="kill@0:20").returncode != 0
    (run / RUN_FILE).write_text("[1]")  # crashed every start
    assert run_train(run, overrides, RESNEXT_DIST_FAULT="kill@0:40").returncode != 0
    client = client_for(mlflow_server)
    (first,) = runs_in(client, experiment_of(overrides))
    steps = [s for s, _ in history(client, first.info.run_id, "loss")]  # as far as it got before the SIGKILL
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 20, steps

    other = mlflow_server_factory()
    moved = [o for o in overrides if not o.startswith("tracking.uri=")] + [f"tracking.uri={other.uri}"]
    ok(run_train(run, moved))
    client_b = client_for(other.uri)
    (second,) = runs_in(client_b, experiment_of(overrides))
    assert second.info.status == "FINISHED"
    assert_mirrors_log(client_b, second.info.run_id, run)
    assert [s for s, _ in history(client_b, second.info.run_id, "loss")] == list(range(1, 65))
    sync(run)  # the run's own store now: nothing left
    ok(subprocess.run([PYTHON, "-m", "resnext_dist.tracking", "sync", str(run), "--uri", mlflow_server], cwd=REPO,
                      env=env(), capture_output=True, text=True, timeout=180))
    assert client.get_run(first.info.run_id).info.status == "FINISHED"
    assert_mirrors_log(client, first.info.run_id, run)
