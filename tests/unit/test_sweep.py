"""Sweeps without a cluster: the grid (slurm/grid.py), the report from run directories, and submit.py --sweep's checks
that run before anything is submitted (slurm/sweep.plan)."""
import json
import os

import pytest

from resnext_dist import sweep
from resnext_dist.slurm import grid as sweep_grid, report
from resnext_dist import submit as submit_command
from resnext_dist.errors import InputError
from tests.tiny import TINY

CPU = ["slurm.gpus_per_node=0", "slurm.cpus_per_task=1"]


# ---- the grid


def test_values_ranges_and_bracketed_lists():
    assert sweep_grid.parse_sweep("optim.lr=0.05, 0.1") == ("optim.lr", ["0.05", "0.1"])
    assert sweep_grid.parse_sweep("train.seed=0:3") == ("train.seed", ["0", "1", "2"])  # the end is excluded
    assert sweep_grid.parse_sweep("train.seed=10:0:-5") == ("train.seed", ["10", "5"])
    assert sweep_grid.parse_sweep("model.layers=[1,1,1,1],[2,2,2,2]") == ("model.layers", ["[1,1,1,1]", "[2,2,2,2]"])


@pytest.mark.parametrize("spec, message", [
    ("optim.lr", "expected KEY=V1,V2"),
    ("optim.lr=", "expected KEY=V1,V2"),
    ("train.seed=3:3", "the range 3:3 is empty"),
    ("optim.lr=0.1,,0.2", "an empty value"),
    ("optim.lr=0.1,0.1", "value 0.1 given twice"),
    ("slurm.nodes=1,2", "not slurm.nodes"),
    ("run.name=a,b", "not run.name"),
])
def test_bad_sweeps_name_the_problem(spec, message):
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        sweep_grid.parse_sweep(spec)


def test_grid_expands_first_key_slowest_and_says_its_size():
    grid = sweep_grid.parse_grid(["optim.lr=0.05,0.1", "optim.weight_decay=5e-5,1e-4,0"])
    points = sweep_grid.expand(grid)
    assert len(points) == 6 and points[0] == {"optim.lr": "0.05", "optim.weight_decay": "5e-5"}
    assert points[3] == {"optim.lr": "0.1", "optim.weight_decay": "5e-5"}
    assert sweep_grid.describe_grid(grid) == "6 runs (optim.lr x optim.weight_decay = 2 x 3)"
    with pytest.raises(InputError, match="given twice"):
        sweep_grid.parse_grid(["optim.lr=0.1", "optim.lr=0.2"])


def test_run_names_carry_the_values():
    """The label of every default run name (config/naming.py): short names, values, '-' between."""
    assert sweep_grid.run_name({"optim.lr": "0.05", "optim.weight_decay": "5e-5"}) == "lr0.05-wd5e-5"
    # two keys ending alike: the full keys
    assert sweep_grid.run_name({"data.train_res": "16", "model.train_res": "8"}) == "data_train_res16-model_train_res8"
    assert sweep_grid.run_name({"data.train": "/a/b.beton"}) == "train_b"  # a path by its last part: no '/'
    # a label cut to its length ends with a hash of all the values: two runs that differ only in what was cut
    many = {"model.arch": "resnext101_32x8d", "data.train": "/x/imagenet_train.beton", "optim.lr": "0.1",
            "optim.weight_decay": "5e-5", "train.seed": "1"}
    cut = [sweep_grid.run_name(many), sweep_grid.run_name(dict(many, **{"train.seed": "2"}))]
    assert cut[0] != cut[1] and all(len(n) <= 48 + 9 and "+" in n for n in cut)
    with pytest.raises(InputError, match="would both be named"):
        sweep_grid.run_names([{"data.train": "x/b"}, {"data.train": "y/b"}])  # both train_b


# ---- the report, from the run directories alone


def _run(sweep_dir, name, top1s, done):
    d = sweep_dir / name
    d.mkdir(parents=True)
    with open(d / "log.jsonl", "w") as f:
        f.write(json.dumps({"kind": "start", "step": 0}) + "\n")
        for epoch, top1 in enumerate(top1s):
            f.write(json.dumps({"kind": "epoch", "step": 10 * (epoch + 1), "epoch": epoch, "val_top1": top1}) + "\n")
        f.write('{"kind": "step", "ste')  # a line being written as the report reads
    if done:
        (d / "DONE").write_text(json.dumps({"step": 10 * len(top1s), "epochs_done": len(top1s)}))


def test_report_sorts_by_best_top1_and_writes_the_summaries(tmp_path, capsys):
    names = ["lr=0.05", "lr=0.1", "lr=0.2", "lr=0.4"]
    report.write_sweep(str(tmp_path), {"grid": [["optim.lr", ["0.05", "0.1", "0.2", "0.4"]]], "runs": [
        {"name": n, "values": {"optim.lr": n[3:]}, "dir": str(tmp_path / n)} for n in names]})
    _run(tmp_path, "lr=0.05", [0.30, 0.50], done=True)
    _run(tmp_path, "lr=0.1", [0.60, 0.55], done=True)   # best 0.60 but final 0.55: sorted by best
    _run(tmp_path, "lr=0.2", [0.40], done=False)        # trained an epoch, stopped
    assert sweep.main(["report", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["optim.lr", "best", "top-1", "final", "top-1", "epochs", "state"]
    assert [ln.split()[0] for ln in lines[1:]] == ["0.1", "0.05", "0.2", "0.4"]
    assert lines[1].split() == ["0.1", "60.00%", "55.00%", "2", "DONE"]
    assert lines[3].split() == ["0.2", "40.00%", "40.00%", "1", "stopped"]
    assert lines[4].split() == ["0.4", "-", "-", "0", "not", "started"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["run"] for r in summary] == ["lr=0.1", "lr=0.05", "lr=0.2", "lr=0.4"]
    assert summary[0]["best_val_top1"] == 0.60 and summary[0]["final_val_top1"] == 0.55
    csv_lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert csv_lines[0] == "optim.lr,best_val_top1,final_val_top1,epochs_done,state,run"
    assert csv_lines[1] == "0.1,0.600000,0.550000,2,DONE,lr=0.1"
    # what Slurm says of runs that are not DONE replaces the files' guess; DONE stays DONE
    _, rows = report.report(str(tmp_path), {"lr=0.2": "RUNNING", "lr=0.1": "COMPLETED"})
    assert {r["run"]: r["state"] for r in rows}["lr=0.2"] == "RUNNING"
    assert {r["run"]: r["state"] for r in rows}["lr=0.1"] == "DONE"


def test_report_on_a_folder_that_is_no_sweep_exits_2(tmp_path, capsys):
    assert sweep.main(["report", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


# ---- submit.py --sweep: everything checked before anything is submitted


def submit_main(capsys, *args):
    rc = submit_command.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_dry_run_lists_the_runs_their_directories_and_the_array(tmp_path, capsys):
    rc, out, err = submit_main(capsys, "--dry-run", *TINY, *CPU, f"run.root={tmp_path}", "run.name=lrs",
                               "--sweep", "optim.lr=0.05,0.1", "slurm.array_parallelism=1", "--sweep", "train.seed=0:2")
    assert rc == 0, err
    assert f"sweep lrs: 4 runs (optim.lr x train.seed = 2 x 2) in {tmp_path}/lrs" in out
    for i, name in enumerate(["lr0.05-seed0", "lr0.05-seed1", "lr0.1-seed0", "lr0.1-seed1"]):
        assert f"  {i + 1}  {tmp_path}/lrs/{name}\n" in out
    assert "#SBATCH --array=0-3%1" in out and f"#SBATCH --output={tmp_path}/lrs/slurm/%A_%a_0_log.out" in out
    assert not (tmp_path / "lrs").exists()


def test_the_same_command_finds_the_same_sweep_and_another_grid_another(tmp_path, capsys):
    def name(*extra):
        out = submit_main(capsys, "--dry-run", *TINY, *CPU, f"run.root={tmp_path}", *extra)[1]
        return out.split()[1].rstrip(":")
    a = name("--sweep", "optim.lr=0.1,0.2")
    assert a.startswith("run-sweep-") and name("--sweep", "optim.lr=0.1,0.2") == a
    assert name("--sweep", "optim.lr=0.1,0.3") != a


def test_a_bad_value_in_one_run_exits_2_naming_it_and_submits_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: reaching the submission would say so instead
    rc, out, err = submit_main(capsys, *TINY, *CPU, f"run.root={tmp_path}", "run.name=bad",
                               "--sweep", "optim.lr=0.1,-1", "--sweep", "train.seed=0:2")
    assert rc == 2 and out == ""
    assert err == "error: sweep run 3/4 (lr-1-seed0): optim.lr=-1.0: must be > 0\n"
    assert not (tmp_path / "bad").exists()


def test_more_runs_than_max_runs_asks_for_the_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    args = [*TINY, *CPU, f"run.root={tmp_path}", "--sweep", "train.seed=0:9", "--sweep", "optim.lr=0.1,0.2"]
    rc, _, err = submit_main(capsys, *args, "--max-runs", "16")
    assert rc == 2 and "18 runs (train.seed x optim.lr = 9 x 2) is more than --max-runs=16" in err
    assert "--max-runs 18" in err and len(err.strip().splitlines()) == 1
    assert submit_main(capsys, "--dry-run", *args, "--max-runs", "18")[0] == 0


@pytest.mark.parametrize("spec, runs", [("train.seed=0:100000", "100000 runs (train.seed = 100000)"),
                                         ("train.seed=0:1000000000000000", "1000000000000000 runs"),
                                         ("optim.lr=" + ",".join(f"0.{k}" for k in range(1, 200001)), "200000 runs")])
def test_a_grid_over_max_runs_is_refused_at_once_before_any_value_is_listed(tmp_path, monkeypatch, capsys, spec,
                                                                          runs):
    import time
    monkeypatch.setenv("PATH", str(tmp_path))
    t0 = time.monotonic()
    rc, _, err = submit_main(capsys, *TINY, *CPU, f"run.root={tmp_path}", "--sweep", spec)
    assert rc == 2 and err.startswith(f"error: --sweep: {runs}") and "more than --max-runs=64" in err
    assert time.monotonic() - t0 < 10  # it took over a minute: a duplicate check quadratic in the values


def test_a_large_grid_is_expanded_and_named_in_linear_time():
    import time
    t0 = time.monotonic()
    grid = sweep_grid.parse_grid(["optim.lr=" + ",".join(f"0.{k}" for k in range(1, 100001))])
    names = sweep_grid.run_names(sweep_grid.expand(grid))
    assert len(names) == 100000 and time.monotonic() - t0 < 20  # quadratic: 10^10 comparisons
    with pytest.raises(InputError, match="value 0.5 given twice"):
        sweep_grid.parse_sweep("optim.lr=" + ",".join(f"0.{k}" for k in range(1, 100001)) + ",0.5")


def test_array_parallelism_must_be_positive(tmp_path, capsys):
    rc, _, err = submit_main(capsys, "--dry-run", *TINY, *CPU, f"run.root={tmp_path}", "slurm.array_parallelism=0",
                             "--sweep", "optim.lr=0.1,0.2")
    assert rc == 2 and "slurm.array_parallelism" in err


def test_done_runs_are_listed_as_not_submitted(tmp_path, capsys):
    args = ["--dry-run", *TINY, *CPU, f"run.root={tmp_path}", "run.name=s", "--sweep", "optim.lr=0.1,0.2"]
    done = tmp_path / "s" / "lr0.1"
    done.mkdir(parents=True)
    (done / "DONE").write_text(json.dumps({"step": 64, "epochs_done": 2}))
    rc, out, _ = submit_main(capsys, *args)
    assert rc == 0
    assert f"{done}  (DONE: not submitted)" in out and "# one job array of 1 run(s)" in out
    assert "#SBATCH --array" not in out  # one run left: a plain job
    assert os.listdir(tmp_path / "s") == ["lr0.1"]


def test_a_named_sweep_refuses_another_grid_in_its_directory(tmp_path, capsys):
    args = [*TINY, *CPU, f"run.root={tmp_path}", "run.name=s"]
    report.write_sweep(str(tmp_path / "s"), {"grid": [["optim.lr", ["0.1", "0.2"]]], "runs": []})
    assert submit_main(capsys, "--dry-run", *args, "--sweep", "optim.lr=0.1,0.2")[0] == 0  # the same grid: fine
    rc, _, err = submit_main(capsys, "--dry-run", *args, "--sweep", "optim.lr=0.1,0.3")
    assert rc == 2 and f"{tmp_path}/s holds a sweep over another grid" in err and "another run.name" in err
