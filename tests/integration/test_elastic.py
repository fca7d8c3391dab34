"""Elastic torchrun (`--nnodes=MIN:MAX`, c10d rendezvous): a run grows when a node joins and goes on, smaller, when
a node's agent dies, keeping its global batch and its one MLflow run.

Two torchrun agents on this machine, each its own "node" of one CPU process, meet on 127.0.0.1 (the first one
started hosts the rendezvous store, as a job's first node does). Rank 0 is paced (0.3 s a step, the fault hook)
so that the run is still training while agents come and go, whatever the machine's speed; only on torchrun's first
attempt (`slow@0:1:0`): the restart after a node is lost (a failure: attempt 1) is the last change, and its steps
need no pacing. The agents run with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as the README says: with torch's shared
store, a node that joins waits for a MASTER_ADDR that a rank 0 kept from the previous round never writes (torch
2.14's dynamic_rendezvous.py).
"""
import os
import signal
import socket
import subprocess
import time
import uuid

import pytest

from resnext_dist.runlog import read_log
from tests.plugins.mlflow_server import client_for, runs_in
from tests.tiny import PYTHON, REPO, TINY, env, free_port

pytestmark = [pytest.mark.slow, pytest.mark.mlflow]


def agent(port, run_dir, overrides, log_path, last_call_s=5):
    """One torchrun agent: a node of 1 process in an elastic job of 1 to 2 nodes; a lone node starts after
    `last_call_s` (unless the other joins first), a dead node's place is given up after 3 missed heartbeats of 1 s."""
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nnodes=1:2", "--nproc-per-node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=elastic", "--max-restarts=3", "--monitor-interval=1",
           f"--rdzv-conf=last_call_timeout={last_call_s},keep_alive_interval=1,keep_alive_max_attempt=3,"
           "join_timeout=300",
           "-m", "resnext_dist.train", *TINY, f"run.dir={run_dir}", *overrides]
    out = open(log_path, "w")
    return subprocess.Popen(cmd, cwd=REPO, env=env(RESNEXT_DIST_FAULT="slow@0:1:0",
                                                   TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def steps(run_dir):
    path = os.path.join(run_dir, "log.jsonl")
    return [r for r in read_log(path) if r["kind"] == "step"] if os.path.exists(path) else []


def wait_for(predicate, what, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def children(pid):
    """The processes whose parent is `pid` (a torchrun agent's workers), read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if entry.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    return found


def overrides_for(mlflow_server, experiment):
    return ["train.epochs=3", "data.synthetic_size=512", "train.log_every_steps=1", "checkpoint.every_steps=4",
            "tracking.enabled=true", f"tracking.uri={mlflow_server}", f"tracking.experiment={experiment}",
            "tracking.timeout_s=1", "tracking.log_model=false"]


def assert_finished_as_one_run(run, mlflow_server, experiment, out, global_batch):
    """3 epochs once each, ended at world size 1 with the run's first global batch throughout, one MLflow run."""
    records = read_log(run / "log.jsonl")
    starts = [r for r in records if r["kind"] == "start"]
    assert {s["global_batch"] for s in starts} == {global_batch}, out[-3000:]
    assert {s["steps_per_epoch"] for s in starts} == {512 // global_batch}
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1, 2]
    summary = [r for r in records if r["kind"] == "summary"]
    assert (run / "DONE").exists() and len(summary) == 1 and summary[0]["epochs_done"] == 3
    assert steps(run)[-1]["step"] == 3 * 512 // global_batch and steps(run)[-1]["world_size"] == 1
    client = client_for(mlflow_server)
    runs = runs_in(client, experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", "one MLflow run across the changes"
    return records, client, runs[0].info.run_id


def test_a_node_joins_then_its_agent_is_killed_and_the_run_finishes_on_one(mlflow_server, tmp_path):
    run, port, experiment = tmp_path / "run", free_port(), f"elastic-{uuid.uuid4().hex[:8]}"
    overrides = overrides_for(mlflow_server, experiment)
    first = agent(port, run, overrides, tmp_path / "first.out")
    second = orphans = None
    try:
        wait_for(lambda: listening(port), "the first agent's rendezvous store", 120)
        wait_for(lambda: len(steps(run)) >= 2, "training on one node")  # alone after last_call: world size 1
        second = agent(port, run, overrides, tmp_path / "second.out")
        wait_for(lambda: [s["world_size"] for s in steps(run)][-3:] == [2, 2, 2], "the run grown to two nodes")
        orphans = children(second.pid)
        os.kill(second.pid, signal.SIGKILL)  # the node's agent is gone; its trainer notices at the next step
        assert first.wait(timeout=600) == 0, (tmp_path / "first.out").read_text()[-4000:]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        for pid in orphans or ():  # the killed agent's trainer, if it is still there
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    out = (tmp_path / "first.out").read_text()
    records, client, run_id = assert_finished_as_one_run(run, mlflow_server, experiment, out, global_batch=8)
    changes = [(r["old"], r["new"]) for r in records if r["kind"] == "event" and r["event"] == "world_size_changed"]
    assert changes == [(1, 2), (2, 1)], out[-4000:]
    assert [s["world_size"] for s in records if s["kind"] == "start"] == [1, 2, 1]
    assert "on 2 processes instead of 1 (same global batch)" in out and "on 1 process instead of 2" in out
    # MLflow charts the world size: 1, then 2 from the step the run grew, then 1 again
    sizes = [m.value for m in sorted(client.get_metric_history(run_id, "world_size"), key=lambda m: m.step)]
    assert sizes[0] == 1 and 2 in sizes and sizes[-1] == 1


def test_a_lost_node_leaves_the_other_going_on_from_the_last_checkpoint(mlflow_server, tmp_path):
    """A whole node is lost (its agent and its trainer SIGKILLed mid-step, no checkpoint of their own): the other
    trainer's collective fails, its agent restarts it alone, and it resumes from the last periodic checkpoint
    (checkpoint.every_steps=4), saying in log.jsonl how many logged steps it trains again."""
    run, port, experiment = tmp_path / "run", free_port(), f"elastic-{uuid.uuid4().hex[:8]}"
    overrides = overrides_for(mlflow_server, experiment)
    # last call 20 s: room for the second agent to start and join (a few seconds); it is also what the first,
    # alone after the loss, waits for another node before it goes on (60 s cost 40 s of idling)
    first = agent(port, run, overrides, tmp_path / "first.out", last_call_s=20)
    second = lost = None
    try:
        wait_for(lambda: listening(port), "the first agent's rendezvous store", 120)
        # within the first's last call: both start together (world size 2, global batch 16)
        second = agent(port, run, overrides, tmp_path / "second.out", last_call_s=20)
        wait_for(lambda: [s["world_size"] for s in steps(run)][-6:] == [2] * 6, "training on two nodes")
        lost = children(second.pid)
        for pid in [second.pid, *lost]:
            os.kill(pid, signal.SIGKILL)
        assert first.wait(timeout=600) == 0, (tmp_path / "first.out").read_text()[-4000:]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        for pid in lost or ():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    out = (tmp_path / "first.out").read_text()
    records, _, _ = assert_finished_as_one_run(run, mlflow_server, experiment, out, global_batch=16)
    changed = [r for r in records if r["kind"] == "event" and r["event"] == "world_size_changed"]
    assert [(r["old"], r["new"]) for r in changed] == [(2, 1)], out[-4000:]
    at = records.index(changed[0])
    logged = max(r["step"] for r in records[:at] if r["kind"] == "step")  # the last step the lost run logged
    assert changed[0]["step"] % 4 == 0 and changed[0]["redone_steps"] == logged - changed[0]["step"]
