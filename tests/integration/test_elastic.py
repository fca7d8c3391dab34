"""Elastic torchrun (`--nnodes=MIN:MAX`, c10d rendezvous): a run grows when a node joins and goes on, smaller, when
a node's agent dies, keeping its global batch and its one MLflow run.

Two torchrun agents on this machine, each its own "node" of one CPU process, meet on 127.0.0.1 (the first one
started hosts the rendezvous store, as a job's first node does). Rank 0 is paced (0.3 s a step, the fault hook)
so that the run is still training while agents come and go, whatever the machine's speed.
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


def agent(port, run_dir, overrides, log_path):
    """One torchrun agent: a node of 1 process in an elastic job of 1 to 2 nodes."""
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nnodes=1:2", "--nproc-per-node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=elastic", "--max-restarts=3", "--monitor-interval=1",
           # a lone node starts after 5 s; a dead node's place is given up after 3 missed heartbeats of 1 s
           "--rdzv-conf=last_call_timeout=5,keep_alive_interval=1,keep_alive_max_attempt=3,join_timeout=300",
           "-m", "resnext_dist.train", *TINY, f"run.dir={run_dir}", *overrides]
    out = open(log_path, "w")
    return subprocess.Popen(cmd, cwd=REPO, env=env(RESNEXT_DIST_FAULT="slow@0:1"), stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


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


def test_a_node_joins_then_its_agent_is_killed_and_the_run_finishes_on_one(mlflow_server, tmp_path):
    run, port, experiment = tmp_path / "run", free_port(), f"elastic-{uuid.uuid4().hex[:8]}"
    overrides = ["train.epochs=3", "data.synthetic_size=512", "train.log_every_steps=1", "checkpoint.every_steps=4",
                 "tracking.enabled=true", f"tracking.uri={mlflow_server}", f"tracking.experiment={experiment}",
                 "tracking.timeout_s=1", "tracking.log_model=false"]
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
    records = read_log(run / "log.jsonl")
    changes = [(r["old"], r["new"]) for r in records if r["kind"] == "event" and r["event"] == "world_size_changed"]
    assert changes == [(1, 2), (2, 1)], out[-4000:]
    starts = [r for r in records if r["kind"] == "start"]
    assert [s["world_size"] for s in starts] == [1, 2, 1]
    assert {s["global_batch"] for s in starts} == {8} and {s["steps_per_epoch"] for s in starts} == {64}
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1, 2]
    summary = [r for r in records if r["kind"] == "summary"]
    assert (run / "DONE").exists() and len(summary) == 1 and summary[0]["epochs_done"] == 3
    assert steps(run)[-1]["step"] == 192 and steps(run)[-1]["world_size"] == 1
    client = client_for(mlflow_server)
    runs = runs_in(client, experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", "one MLflow run across both changes"
    sizes = [m.value for m in sorted(client.get_metric_history(runs[0].info.run_id, "world_size"),
                                     key=lambda m: m.step)]
    assert sizes[0] == 1 and 2 in sizes and sizes[-1] == 1
