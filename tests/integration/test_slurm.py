"""Training on a real local Slurm cluster (slurm/dev-cluster, started once per test session).

Every job trains a tiny ResNeXt on synthetic data with CPU/gloo, 2 processes, and the deterministic pipeline, so
a run that was preempted and requeued must end with exactly the weights of an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = """\
model: {arch: resnext50_32x4d, stem: cifar, num_classes: 10, layers: [1, 1, 1, 1], cardinality: 2, group_width: 4,
        base_channels: 8}
data: {loader: synthetic, batch_size: 8, num_workers: 0, train_res: 16, val_res: 16, synthetic_size: 512,
       val_synthetic_size: 32, random_crop: false}
train: {epochs: 4, precision: fp32, channels_last: false, deterministic: true, log_every_steps: 4,
        progress_bar: false}
optim: {lr: 0.1}
checkpoint: {every_steps: 8}
tracking: {enabled: false}
slurm: {gpus_per_node: 0, cpus_per_task: 1, timeout_min: 20}
"""
STEPS = 4 * 512 // 16  # epochs x images / (batch 8 x 2 processes)
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


class Submission:
    """`python launch/submit.py ... --wait` in the background: its job id as soon as it is printed, then its end."""

    def __init__(self, recipe: Path, root: Path, name: str, *args: str, **env: str):
        self.run_dir = root / name
        cmd = [sys.executable, "launch/submit.py", "--config", str(recipe), f"run.root={root}", f"run.name={name}",
               *args, "--wait"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **env})
        self.lines: list = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def job_id(self, timeout: float = 120) -> str:
        return self.submitted(r"submitted job (\d+)", timeout)

    def submitted(self, pattern: str, timeout: float) -> str:
        """The id `pattern` finds in the output, as soon as submit.py prints it."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.output)
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                self._reader.join(5)
                m = re.search(pattern, self.output)
                if m:
                    return m.group(1)
                raise AssertionError(f"submit.py exited {self.proc.returncode} without a job:\n{self.output}")
            time.sleep(0.2)
        raise AssertionError(f"no job id after {timeout} s:\n{self.output}")

    def finish(self, timeout: float = 420) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"submit.py --wait still running after {timeout} s:\n{self.output}")
        self._reader.join(10)
        return rc


def records(run_dir: Path) -> list:
    with open(run_dir / "log.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def wait_for_step(run_dir: Path, step: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if any(r.get("step", 0) >= step for r in records(run_dir)):
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{run_dir}: training did not reach step {step} in {timeout} s")


def job_info(cluster, job_id: str) -> dict:
    out = cluster.run("scontrol", "-o", "show", "job", job_id)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def wait_job(cluster, job_id: str, timeout: float = 420) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(cluster, job_id)
        if info.get("JobState") in FINAL:
            return info
        time.sleep(1)
    raise AssertionError(f"job {job_id} not finished after {timeout} s: {job_info(cluster, job_id)}")


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(run_dir / "export" / "model.safetensors")  # the run's one final-weights file


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_trained_to_done(run_dir: Path) -> None:
    assert (run_dir / "DONE").exists(), f"no DONE in {run_dir}"
    recs = records(run_dir)
    assert [r["step"] for r in recs if r.get("event") == "done"] == [STEPS]


def task_log(run_dir: Path, job_id: str, stream: str = "out", task: int = 0) -> str:
    """A task's stdout (submitit's log lines, all attempts) or stderr (its warnings again, and errors)."""
    return (run_dir / "slurm" / f"{job_id}_{task}_log.{stream}").read_text()


# ---- 1. plain jobs through the submitit launcher: started together, checked one by one


@pytest.fixture(scope="module")
def plain_jobs(slurm_cluster, recipe, tmp_path_factory):
    """Started together at the first use (most of a job's time is waiting): the uninterrupted reference
    (1 node x 2 tasks), a 2-node job (1 task each), and the timeout job of test 3 (which waits on the clock)."""
    root = tmp_path_factory.mktemp("jobs")
    jobs = {"one_node": Submission(recipe, root, "one_node", "slurm.nodes=1", "slurm.tasks_per_node=2"),
            "two_nodes": Submission(recipe, root, "two_nodes", "slurm.nodes=2", "slurm.tasks_per_node=1"),
            # A 1-minute limit with the signal 10 s before it: Slurm's own time-limit signal, on every attempt.
            # On so short a limit submitit counts every signal as a timeout.
            "timeouts": Submission(recipe, root, "timeouts", "slurm.tasks_per_node=2", "slurm.timeout_min=1",
                                   "slurm.signal_delay_s=10", "slurm.max_num_timeout=1", "train.epochs=100000")}
    yield jobs
    for job in jobs.values():
        if job.proc.poll() is None:
            job.proc.kill()


def test_one_node_two_tasks_trains_to_done(slurm_cluster, plain_jobs):
    sub = plain_jobs["one_node"]
    job_id = sub.job_id()
    assert sub.finish() == 0, sub.output
    assert f"job {job_id}: done: {sub.run_dir}" in sub.output
    assert_trained_to_done(sub.run_dir)
    info = job_info(slurm_cluster, job_id)
    assert info["NumNodes"] == "1" and info["NumTasks"] == "2" and info["Restarts"] == "0"


def test_two_node_job_trains_to_done_with_the_same_weights(slurm_cluster, plain_jobs):
    sub = plain_jobs["two_nodes"]
    job_id = sub.job_id()
    assert sub.finish() == 0, sub.output
    assert_trained_to_done(sub.run_dir)
    info = job_info(slurm_cluster, job_id)
    assert info["NodeList"] == "n[1-2]" and info["NumTasks"] == "2"
    # Same world size, same pipeline: where the two processes ran does not change a bit of the result.
    assert plain_jobs["one_node"].finish() == 0
    assert_same_weights(sub.run_dir, plain_jobs["one_node"].run_dir)


# ---- 2. preemption and cancellation


def test_preempted_job_requeues_resumes_the_same_mlflow_run_and_matches_uninterrupted(
        slurm_cluster, plain_jobs, recipe, tmp_path, mlflow_server):
    experiment = f"slurm-preempt-{os.getpid()}"
    sub = Submission(recipe, tmp_path, "preempted", "slurm.nodes=2", "slurm.tasks_per_node=1",
                     "tracking.enabled=true", f"tracking.uri={mlflow_server}", f"tracking.experiment={experiment}")
    job_id = sub.job_id()
    wait_for_step(sub.run_dir, 20)  # past the checkpoint at step 16, well before the end (128)
    slurm_cluster.run("scancel", "--signal=USR2", job_id)  # what a preempting cluster sends (submitit's signal)
    assert sub.finish() == 0, sub.output

    info = job_info(slurm_cluster, job_id)
    assert info["Restarts"] == "1", sub.output
    log = task_log(sub.run_dir, job_id)
    assert "this job is preempted" in log
    assert "Requeued job %s (3 remaining timeouts)" % job_id in log  # a preemption spends no timeout
    # The trainer saved at the step it stopped, and the requeued job started exactly there.
    resumed = [r for r in records(sub.run_dir) if r.get("event") == "resumed"]
    assert len(resumed) == 1 and 20 <= resumed[0]["step"] < STEPS
    assert resumed[0]["checkpoint"].endswith(f"step_{resumed[0]['step']:08d}.pt")
    assert_trained_to_done(sub.run_dir)
    assert plain_jobs["one_node"].finish() == 0
    assert_same_weights(sub.run_dir, plain_jobs["one_node"].run_dir)

    # One MLflow run across both attempts, with the loss before and after the requeue and no step twice.
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags.get("attempt") == "2"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert steps == sorted(set(steps)) and steps[0] < resumed[0]["step"] < steps[-1] == STEPS


def test_real_preemption_requeues_and_scancel_stops_without_requeue(slurm_cluster, plain_jobs, recipe, tmp_path):
    # The cluster preempts for a job of the higher-priority partition; with preempt_send_user_signal the
    # victim gets its --signal (USR2) and requeues itself. Then a plain scancel: checkpoint, exit, no requeue.
    assert plain_jobs["timeouts"].finish(timeout=400) is not None  # the urgent job would preempt it too
    sub = Submission(recipe, tmp_path, "victim", "slurm.nodes=2", "slurm.tasks_per_node=1", "train.epochs=1000")
    job_id = sub.job_id()
    wait_for_step(sub.run_dir, 12)
    urgent = slurm_cluster.run("sbatch", "--parsable", "-p", slurm_cluster.preempting_partition, "-N2",
                               f"-c{slurm_cluster.cpus_per_node}", "-o", str(tmp_path / "urgent-%j.out"),
                               "--wrap", "sleep 1")
    assert wait_job(slurm_cluster, urgent.stdout.strip())["JobState"] == "COMPLETED"
    # Requeued, resumed, and training again (the trainer's handlers are in place once steps are logged).
    deadline = time.time() + 240
    while True:
        recs = records(sub.run_dir)
        resumed = [i for i, r in enumerate(recs) if r.get("event") == "resumed"]
        if resumed and any(r["kind"] == "step" for r in recs[resumed[0]:]):
            break
        assert time.time() < deadline, f"not training again after preemption:\n{sub.output}"
        time.sleep(0.5)
    log = task_log(sub.run_dir, job_id)
    assert "this job is preempted" in log and "Requeued job %s (3 remaining timeouts)" % job_id in log

    slurm_cluster.run("scancel", job_id)
    assert sub.finish() != 0
    info = job_info(slurm_cluster, job_id)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "1", sub.output
    assert "stopped by SIGTERM after saving a checkpoint" in task_log(sub.run_dir, job_id, "err")
    assert not (sub.run_dir / "DONE").exists()


# ---- 3. timeouts: requeued at most slurm.max_num_timeout times


def test_timeout_requeues_up_to_max_num_timeout_then_fails_clearly(slurm_cluster, plain_jobs):
    sub = plain_jobs["timeouts"]  # slurm.timeout_min=1, slurm.max_num_timeout=1: one requeue, then the end
    job_id = sub.job_id()
    rc = sub.finish(timeout=400)
    assert rc != 0, sub.output
    assert "slurm.max_num_timeout=1" in sub.output and "not requeued" in sub.output
    info = job_info(slurm_cluster, job_id)
    # FAILED when the last signal came during training (every rank stops); TIMEOUT when it came during start-up,
    # before the trainer's handler: then only rank 0 ends at once and the others run into the time limit.
    assert info["JobState"] in ("FAILED", "TIMEOUT") and info["Restarts"] == "1"
    log = task_log(sub.run_dir, job_id)
    assert log.count("this job is timed-out") == 2
    assert "Requeued job %s (0 remaining timeouts)" % job_id in log
    assert not (sub.run_dir / "DONE").exists()


# ---- 4. the sbatch templates


def sbatch(cluster, *args, env_extra=None) -> str:
    env = {**os.environ, **cluster.env, "PYTHON": sys.executable, **(env_extra or {})}
    out = subprocess.run(["sbatch", "--parsable", *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def test_train_sbatch_requeues_on_usr2_and_trains_to_done(slurm_cluster, plain_jobs, recipe, tmp_path):
    job_id = sbatch(slurm_cluster, "--gpus-per-node=0", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                    f"--output={tmp_path}/train-%j.out", "slurm/train.sbatch", "--config", str(recipe),
                    f"run.root={tmp_path}", "run.name=sbatch")
    run_dir = tmp_path / "sbatch"
    wait_for_step(run_dir, 20)
    slurm_cluster.run("scancel", "--signal=USR2", job_id)  # what Slurm sends before the time limit
    info = wait_job(slurm_cluster, job_id)
    output = (tmp_path / f"train-{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", output
    assert "requeueing job" in output and "attempt 2" in output
    assert_trained_to_done(run_dir)
    assert plain_jobs["one_node"].finish() == 0
    assert_same_weights(run_dir, plain_jobs["one_node"].run_dir)


def test_torchrun_sbatch_requeues_on_usr2_and_trains_to_done(slurm_cluster, plain_jobs, recipe, tmp_path):
    job_id = sbatch(slurm_cluster, "--gpus-per-node=0", "--nodes=2", "--cpus-per-task=1",
                    f"--output={tmp_path}/torchrun-%j.out", "slurm/torchrun.sbatch", "--config", str(recipe),
                    f"run.root={tmp_path}", "run.name=torchrun", env_extra={"NPROC_PER_NODE": "1"})
    wait_for_step(tmp_path / "torchrun", 20)
    slurm_cluster.run("scancel", "--batch", "--signal=USR2", job_id)  # what --signal=B:USR2@120 sends
    info = wait_job(slurm_cluster, job_id)
    output = (tmp_path / f"torchrun-{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", output
    assert "2 node(s) x 1" in output
    # a requeue reads as one: the trainers' checkpoint line and the script's requeue, no torchrun failure report
    assert "after saving a checkpoint at step" in output and "requeueing job" in output, output
    assert "ChildFailedError" not in output, output
    assert_trained_to_done(tmp_path / "torchrun")
    assert plain_jobs["one_node"].finish() == 0
    assert_same_weights(tmp_path / "torchrun", plain_jobs["one_node"].run_dir)


def test_torchrun_sbatch_with_a_node_range_comes_back_on_fewer_nodes_and_continues(slurm_cluster, recipe, tmp_path):
    """`sbatch --nodes=1-2` + MIN_NODES=1: the job starts on both nodes (world size 2, global batch 16). One node is
    drained (gone for the job's next attempt), the job is preempted and requeued, comes back on the one node left
    and trains to the end at world size 1, the same global batch, saying so in log.jsonl."""
    job_id = sbatch(slurm_cluster, "--gpus-per-node=0", "--nodes=1-2", "--cpus-per-task=1",
                    f"--output={tmp_path}/range-%j.out", "slurm/torchrun.sbatch", "--config", str(recipe),
                    f"run.root={tmp_path}", "run.name=range", env_extra={"NPROC_PER_NODE": "1", "MIN_NODES": "1"})
    run_dir = tmp_path / "range"
    wait_for_step(run_dir, 20)
    nodes = slurm_cluster.run("scontrol", "show", "hostnames", job_info(slurm_cluster, job_id)["NodeList"]).stdout.split()
    assert len(nodes) == 2, nodes
    slurm_cluster.run("scontrol", "update", f"nodename={nodes[1]}", "state=drain", "reason=test-node-range")
    try:
        slurm_cluster.run("scancel", "--batch", "--signal=USR2", job_id)
        info = wait_job(slurm_cluster, job_id)
    finally:
        slurm_cluster.run("scontrol", "update", f"nodename={nodes[1]}", "state=resume")
    output = (tmp_path / f"range-{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", output
    assert "attempt 1: 2 node(s) x 1, rendezvous" in output and "elastic down to 1 node(s)" in output, output
    assert "attempt 2: 1 node(s) x 1" in output, output
    recs = records(run_dir)
    starts = [r for r in recs if r["kind"] == "start"]
    assert [(s["world_size"], s["global_batch"]) for s in starts] == [(2, 16), (1, 16)]
    assert [(r["old"], r["new"]) for r in recs if r.get("event") == "world_size_changed"] == [(2, 1)]
    assert_trained_to_done(run_dir)


# ---- 5. options the cluster cannot satisfy: a clear error, not a job pending forever


@pytest.mark.parametrize("override, message", [
    ("slurm.partition=gpu", "slurm.partition='gpu': no such partition (partitions: debug, urgent)"),
    ("slurm.nodes=3", "slurm.nodes=3: partition debug has only 2 node(s)"),
    ("slurm.cpus_per_task=8", "slurm.cpus_per_task=8 x 1 task(s) per node = 8 CPUs: nodes of partition debug "
                              "have at most 4 CPUs"),
    ("slurm.constraint=a100", "Slurm refuses these slurm.* options: allocation failure: Invalid feature"),
])
def test_options_the_cluster_cannot_run_exit_2_and_submit_nothing(slurm_cluster, recipe, tmp_path, capsys,
                                                                   override, message):
    from resnext_dist.submit import main
    before = slurm_cluster.run("squeue", "-h", "-o", "%A").stdout
    rc = main(["--config", str(recipe), f"run.root={tmp_path}", "run.name=bad", override])
    out, err = capsys.readouterr()
    assert rc == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert "submitted job" not in out
    assert slurm_cluster.run("squeue", "-h", "-o", "%A").stdout == before
    assert not (tmp_path / "bad").exists()


def test_a_second_job_on_a_busy_run_dir_is_refused(slurm_cluster, recipe, tmp_path, capsys):
    from resnext_dist.submit import main
    first = Submission(recipe, tmp_path, "busy", "train.epochs=1000")
    job_id = first.job_id()
    try:
        rc = main(["--config", str(recipe), f"run.root={tmp_path}", "run.name=busy"])
        err = capsys.readouterr().err
        assert rc == 2 and f"already has job {job_id}" in err and len(err.strip().splitlines()) == 1, err
    finally:
        slurm_cluster.run("scancel", job_id)
        first.finish()
