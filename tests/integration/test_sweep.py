"""Sweeps on the real local Slurm cluster (slurm/dev-cluster) with a real MLflow server: one job array per sweep.

Every run trains a tiny ResNeXt on synthetic data, one CPU process, a few dozen steps.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_slurm import Submission, job_info, records, wait_for_step, wait_job
from tests.tiny import free_port

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = """\
model: {arch: resnext50_32x4d, stem: cifar, num_classes: 10, layers: [1, 1, 1, 1], cardinality: 2, group_width: 4,
        base_channels: 8}
data: {loader: synthetic, batch_size: 8, num_workers: 0, train_res: 16, val_res: 16, synthetic_size: 64,
       val_synthetic_size: 32, random_crop: false}
train: {epochs: 2, precision: fp32, channels_last: false, log_every_steps: 4, progress_bar: false}
checkpoint: {every_steps: 4}
tracking: {enabled: false}
slurm: {gpus_per_node: 0, cpus_per_task: 1, timeout_min: 20}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


class Sweep(Submission):
    """`python launch/submit.py --config RECIPE ... --sweep ... --wait` in the background; `dir` is the sweep's."""

    @property
    def dir(self) -> Path:
        return self.run_dir

    def array_id(self, timeout: float = 120) -> str:
        return self.submitted(r"submitted job array (\d+)", timeout)


def table_runs(output: str, keys: int) -> list:
    """The values column(s) of the table that ends --wait's output, top to bottom."""
    lines = output.strip().splitlines()
    head = max(i for i, ln in enumerate(lines) if ln.split()[:1] and "best" in ln and "top-1" in ln)
    return [tuple(ln.split()[:keys]) for ln in lines[head + 1:]]


def best_top1(run_dir: Path) -> float:
    return max(r["val_top1"] for r in records(run_dir) if r["kind"] == "epoch")


# ---- 1. a 2x2 sweep: four runs DONE, one MLflow parent and four children, the table best first


@pytest.fixture(scope="module")
def grid_sweep(slurm_cluster, mlflow_server, recipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    experiment = f"sweep-{os.getpid()}"
    sub = Sweep(recipe, root, "grid", "tracking.enabled=true", f"tracking.uri={mlflow_server}",
                f"tracking.experiment={experiment}", "slurm.array_parallelism=2",
                "--sweep", "optim.lr=0.05,0.2", "--sweep", "optim.weight_decay=0,1e-3")
    array_id = sub.array_id()
    throttle = job_info(slurm_cluster, array_id).get("ArrayTaskThrottle")
    rc = sub.finish()
    return dict(sub=sub, rc=rc, array_id=array_id, throttle=throttle, experiment=experiment, root=root,
                uri=mlflow_server)


VALUES = {"lr0.05-wd0": ("0.05", "0"), "lr0.05-wd1e-3": ("0.05", "1e-3"), "lr0.2-wd0": ("0.2", "0"),
          "lr0.2-wd1e-3": ("0.2", "1e-3")}  # run name (config/naming.py's label) -> its values
NAMES = list(VALUES)


def test_a_2x2_sweep_trains_four_runs_to_done_best_first(grid_sweep, recipe, capsys):
    sub = grid_sweep["sub"]
    assert grid_sweep["rc"] == 0, sub.output
    assert "sweep grid: 4 runs (optim.lr x optim.weight_decay = 2 x 2)" in sub.output
    assert grid_sweep["throttle"] == "2"  # slurm.array_parallelism reached Slurm
    for name in NAMES:
        assert (sub.dir / name / "DONE").exists(), name
        assert re.search(rf"{re.escape(name)} \(job {grid_sweep['array_id']}_\d\): COMPLETED", sub.output)
    # the table: best val top-1 first (ties in grid order), as each run's own log says
    best = {n: best_top1(sub.dir / n) for n in NAMES}
    expected = sorted(NAMES, key=lambda n: (-best[n], NAMES.index(n)))
    shown = table_runs(sub.output, 2)
    assert shown == [VALUES[n] for n in expected], sub.output
    summary = json.loads((sub.dir / "summary.json").read_text())
    assert [r["run"] for r in summary] == expected and {r["state"] for r in summary} == {"DONE"}
    # `report` prints the same table again, from the files
    from resnext_dist.sweep import main as sweep_main
    assert sweep_main(["report", str(sub.dir)]) == 0
    assert table_runs(capsys.readouterr().out, 2) == shown
    # what --dry-run printed is what submitit submitted
    dry = subprocess.run([sys.executable, "launch/submit.py", "--config", str(recipe), f"run.root={grid_sweep['root']}",
                          "run.name=fresh", "slurm.array_parallelism=2", "--sweep", "optim.lr=0.05,0.2", "--sweep",
                          "optim.weight_decay=0,1e-3", "--dry-run"], cwd=REPO, capture_output=True, text=True)
    submitted = (sub.dir / "slurm" / f"{grid_sweep['array_id']}_submission.sh").read_text()
    for line in dry.stdout.splitlines():
        if line.startswith("#SBATCH") and "--output" not in line and "--error" not in line:
            assert line in submitted, line


def test_the_sweep_is_one_mlflow_parent_with_four_children_named_by_their_values(grid_sweep, mlflow_server):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name(grid_sweep["experiment"])
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 5
    parent = parents[0]
    assert parent.info.run_name == "grid" and parent.info.status == "FINISHED"
    assert parent.data.params == {"optim.lr": "0.05,0.2", "optim.weight_decay": "0,1e-3"}
    children = [r for r in runs if r is not parent]
    assert sorted(r.info.run_name for r in children) == sorted(NAMES)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}


def test_a_finished_sweep_submitted_again_trains_nothing(grid_sweep, recipe, slurm_cluster):
    sub = grid_sweep["sub"]
    logs = {n: (sub.dir / n / "log.jsonl").read_bytes() for n in NAMES}
    before = slurm_cluster.run("squeue", "-h", "-o", "%A").stdout
    again = Sweep(recipe, grid_sweep["root"], "grid", "tracking.enabled=true", "slurm.array_parallelism=2",
                  f"tracking.uri={grid_sweep['uri']}",
                  f"tracking.experiment={grid_sweep['experiment']}",
                  "--sweep", "optim.lr=0.05,0.2", "--sweep", "optim.weight_decay=0,1e-3")
    assert again.finish(120) == 0, again.output
    assert again.output.count("(DONE: not submitted)") == 4 and "nothing submitted" in again.output
    assert slurm_cluster.run("squeue", "-h", "-o", "%A").stdout == before
    assert {n: (sub.dir / n / "log.jsonl").read_bytes() for n in NAMES} == logs


# ---- 2. one element preempted: requeued alone; one cancelled: resumed by submitting the sweep again


def test_a_preempted_element_requeues_alone_and_a_resubmission_resumes_only_the_unfinished(
        slurm_cluster, recipe, tmp_path):
    # 3 CPUs each: one element per node, so the urgent job preempts exactly one. 0.3 s a step (the slow fault):
    # time to act mid-run.
    args = ["data.synthetic_size=320", "train.epochs=1", "slurm.cpus_per_task=3", "--sweep", "train.seed=0:2"]
    sub = Sweep(recipe, tmp_path, "pre", *args, RESNEXT_DIST_FAULT="slow@0:2")
    array_id = sub.array_id()
    victim, other = sub.dir / "seed0", sub.dir / "seed1"
    wait_for_step(other, 4)
    slurm_cluster.run("scancel", f"{array_id}_1")  # a plain cancel: checkpoint, stop, no requeue
    wait_for_step(victim, 8)
    node = job_info(slurm_cluster, f"{array_id}_0")["NodeList"]
    urgent = slurm_cluster.run("sbatch", "--parsable", "-p", slurm_cluster.preempting_partition, "-w", node,
                               f"-c{slurm_cluster.cpus_per_node}", "-o", str(tmp_path / "urgent-%j.out"),
                               "--wrap", "sleep 1")
    assert wait_job(slurm_cluster, urgent.stdout.strip())["JobState"] == "COMPLETED"
    assert sub.finish() == 1, sub.output  # one run CANCELLED: not every run is DONE
    assert job_info(slurm_cluster, f"{array_id}_0")["Restarts"] == "1"
    assert job_info(slurm_cluster, f"{array_id}_1")["Restarts"] == "0"
    resumed = [r for r in records(victim) if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 8 and (victim / "DONE").exists()
    assert not (other / "DONE").exists()
    assert re.search(r"^1\s+-\s+-\s+0\s+CANCELLED$", sub.output, re.M), sub.output  # the table's row of seed1

    done_log = (victim / "log.jsonl").read_bytes()
    again = Sweep(recipe, tmp_path, "pre", *args)
    assert again.finish() == 0, again.output
    assert f"{victim}  (DONE: not submitted)" in again.output and "1 run(s)" in again.output
    assert (victim / "log.jsonl").read_bytes() == done_log  # nothing trained twice
    assert [r["event"] for r in records(other) if r.get("event") == "resumed"] == ["resumed"]
    assert (other / "DONE").exists()


# ---- 3. bad input


def test_a_bad_value_in_one_element_submits_nothing(slurm_cluster, recipe, tmp_path):
    before = slurm_cluster.run("squeue", "-h", "-o", "%A").stdout
    out = subprocess.run([sys.executable, "launch/submit.py", "--config", str(recipe), f"run.root={tmp_path}",
                          "run.name=bad", "--sweep", "optim.lr=0.1,0.2", "--sweep", "data.batch_size=8,0"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("error: sweep run 2/4 (lr0.1-bs0): data.batch_size") and \
        len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert slurm_cluster.run("squeue", "-h", "-o", "%A").stdout == before
    assert not (tmp_path / "bad").exists()


def test_an_unreachable_mlflow_server_submits_nothing_and_says_so(slurm_cluster, recipe, tmp_path):
    """The parent run cannot be made (nothing listens at tracking.uri): no run of the sweep is submitted, since its
    runs could not be linked to it, and the message names MLflow and the way to sweep without it."""
    before = slurm_cluster.run("squeue", "-h", "-o", "%A").stdout
    uri = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on
    out = subprocess.run([sys.executable, "launch/submit.py", "--config", str(recipe), f"run.root={tmp_path}",
                          "run.name=away", "tracking.enabled=true", f"tracking.uri={uri}", "tracking.timeout_s=2",
                          "--sweep", "optim.lr=0.1,0.2"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "error: MLflow parent run" in out.stderr and "nothing submitted" in out.stderr, out.stderr
    assert "tracking.enabled=false" in out.stderr, out.stderr
    assert slurm_cluster.run("squeue", "-h", "-o", "%A").stdout == before
    assert not (tmp_path / "away" / "sweep.json").exists()
