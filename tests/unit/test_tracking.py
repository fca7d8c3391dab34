"""resnext_dist.tracking without a server: URIs, params/metric-name formatting, provenance tags, the off switches,
and the learning-curve pictures."""
import json
import os
import subprocess
import sys

import pytest
import torch

from resnext_dist.config import load_config, to_flat_dict
from resnext_dist.dist import DistInfo
from resnext_dist.tracking.provenance import git_state, provenance_tags
from resnext_dist.tracking.mlflow_store import MAX_PARAM_VALUE, config_params, metric_key, resolve_uri, ui_command

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_default_store_is_absolute_sqlite_in_runs_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["run.root=runs"])
    db = os.path.join(str(tmp_path), "runs", "mlflow.db")
    assert resolve_uri(cfg) == "sqlite:///" + db  # sqlite:////abs/... : absolute, works from any folder
    assert ui_command(cfg) == f"mlflow ui --backend-store-uri sqlite:///{db}"


def test_ui_command_for_a_tracking_server_is_its_address():
    cfg = load_config(None, ["tracking.uri=http://127.0.0.1:5000"])
    assert ui_command(cfg) == "http://127.0.0.1:5000"


def test_params_are_the_flattened_config_within_mlflow_limits():
    cfg = load_config(None, ["model.layers=[1,1,1,1]", "slurm.additional_parameters={mail-type: END}"])
    cfg.data.train = "x" * 10000  # a long path must not make MLflow refuse the whole batch
    params = config_params(cfg)
    flat = to_flat_dict(cfg)
    assert set(flat) - {"slurm.additional_parameters"} <= set(params)
    assert params["slurm.additional_parameters.mail-type"] == "END"
    assert params["model.layers"] == "[1, 1, 1, 1]"
    assert params["model.cardinality"] == "None"
    assert params["optim.lr"] == str(cfg.optim.lr)
    assert len(params["data.train"]) == MAX_PARAM_VALUE and params["data.train"].endswith("(truncated)")
    assert all(isinstance(v, str) and len(v) <= MAX_PARAM_VALUE for v in params.values())


def test_metric_names_are_made_acceptable_to_mlflow():
    assert metric_key("loss") == "loss"
    assert metric_key("img/s") == "img/s"
    assert metric_key("val top-1:ema") == "val top-1:ema"
    assert metric_key("acc%") == "acc_"
    assert metric_key("/a//b/") == "a/b"
    assert metric_key("../x") == "_/x"
    assert len(metric_key("k" * 400)) == 250


def _git(cwd, *args):
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                   env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                            GIT_COMMITTER_EMAIL="t@t"))


def test_git_state_reports_commit_and_dirty(tmp_path):
    assert git_state(tmp_path) == {"commit": "unknown", "dirty": "unknown"}  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert git_state(tmp_path) == {"commit": head, "dirty": "false"}
    (tmp_path / "notes.txt").write_text("untracked files do not make a run dirty\n")
    assert git_state(tmp_path)["dirty"] == "false"
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": "true"}


def test_provenance_tags_describe_the_launch(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    dist = DistInfo(rank=0, local_rank=0, world_size=4, local_world_size=2, device=torch.device("cpu"))
    tags = provenance_tags(dist, str(tmp_path))
    assert tags["world_size"] == "4" and tags["num_nodes"] == "2" and tags["device"] == "cpu"
    assert tags["slurm.job_id"] == "4242"
    assert tags["version.torch"] == torch.__version__
    assert tags["run_dir"] == str(tmp_path)
    for key in ("git.commit", "git.dirty", "mlflow.source.git.commit", "host", "version.ffcv", "version.mlflow",
                "version.resnext_dist", "version.python"):
        assert tags[key], key
    assert all(isinstance(v, str) for v in tags.values())


# Off means off: no thread, no run, no mlflow import (seconds) -- checked in a fresh interpreter.
_OFF = r"""
import sys, torch
from resnext_dist.config import load_config
from resnext_dist.dist import DistInfo
from resnext_dist.tracking.mlflow_tracker import Tracker
root = sys.argv[1]
off = Tracker(load_config(None, ["tracking.enabled=false", f"run.root={root}"]), DistInfo(), root + "/a")
rank1 = Tracker(load_config(None, [f"run.root={root}"]), DistInfo(rank=1, world_size=2), root + "/b")
for t in (off, rank1):
    assert t.run_id is None and not t.enabled
    t.log_artifact(root + "/x"); t.log_model(root + "/export", (2, 3, 8, 8)); t.close("FINISHED")
assert "mlflow" not in sys.modules, "mlflow imported although tracking is off"
print("ok")
"""


def test_disabled_or_not_main_rank_is_a_no_op(tmp_path):
    r = subprocess.run([sys.executable, "-c", _OFF, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    assert os.listdir(tmp_path) == []  # no store, no run file


def _fake_run(run_dir, lr_scale=1.0):
    from resnext_dist.runlog import RunLog
    os.makedirs(run_dir)
    log = RunLog(os.path.join(run_dir, "log.jsonl"))
    log.write("start", 0, world_size=1)
    for step in range(1, 41):
        log.write("step", step, epoch=(step - 1) // 10, loss=3.0 / step, lr=0.1 * lr_scale, data_wait=0.01)
        if step % 10 == 0:
            log.write("epoch", step, epoch=step // 10 - 1, val_top1=step / 50, val_top5=step / 45)
    log.close()
    with open(os.path.join(run_dir, "log.jsonl"), "a") as f:
        f.write('{"kind": "step", "step": 41, "lo')  # a line still being written: skipped


def test_curves_are_drawn_from_the_log(tmp_path):
    from resnext_dist.tracking.plot import series, write_curves
    run = str(tmp_path / "a")
    _fake_run(run)
    s = series(run)
    assert s["loss"][:2] == [(1, 3.0), (2, 1.5)] and len(s["loss"]) == 40
    assert s["val_top1"] == [(e, e * 10 / 50) for e in range(1, 5)]  # against epochs done
    path = write_curves(run)
    assert path == os.path.join(run, "curves.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_command_draws_several_runs(tmp_path):
    _fake_run(str(tmp_path / "a"))
    _fake_run(str(tmp_path / "b"), lr_scale=2.0)
    out = tmp_path / "cmp.png"
    r = subprocess.run([sys.executable, "-m", "resnext_dist.tracking", "plot", str(tmp_path / "a"), str(tmp_path / "b"),
                        "-o", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == str(out), r.stderr[-2000:]
    assert out.stat().st_size > 10_000
    r = subprocess.run([sys.executable, "-m", "resnext_dist.tracking", "plot", str(tmp_path / "nope")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "plot failed" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_no_module_outside_tracking_imports_mlflow():
    """The seam: everything MLflow-specific is in resnext_dist/tracking/; the rest talks to its API. The scan runs in
    a fresh interpreter: CPython 3.11's ast.parse can fail with "AST constructor recursion depth mismatch" in a
    process where an earlier test provoked a RecursionError (the readback tests' deeply nested JSON)."""
    import json
    import subprocess
    import sys
    scan = r"""
import ast, glob, json, os, sys
repo = sys.argv[1]
found = []
for path in sorted(glob.glob(os.path.join(repo, "resnext_dist", "**", "*.py"), recursive=True) +
                   glob.glob(os.path.join(repo, "launch", "*.py"))):
    if os.path.relpath(path, repo).startswith(os.path.join("resnext_dist", "tracking") + os.sep):
        continue
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        found += [f"{os.path.relpath(path, repo)}:{node.lineno} {n}" for n in names
                  if n == "mlflow" or n.startswith("mlflow.")]
print(json.dumps(found))
"""
    out = subprocess.run([sys.executable, "-c", scan, REPO], capture_output=True, text=True, check=True).stdout
    found = json.loads(out)
    assert not found, found


def _cursor(**changes):
    rec = {"run_id": "0123456789abcdef0123456789abcdef", "tracking_uri": "http://127.0.0.1:5000", "experiment": "e",
           "run_name": "tiny", "launch_id": "ab" * 16, "start": 0, "offset": 10, "hwm": {"loss": 3},
           "artifacts": [["/x/config.yaml", None], ["/x/export", "export"]], "tags": {"host": "h"},
           "constants": ["val_images"], "stale": None, "status": None, "artifact_location": None,
           "model": {"export": "/x/export", "input_shape": [2, 3, 16, 16]}}
    rec.update(changes)
    return json.dumps(rec)


@pytest.mark.parametrize("content, problem", [
    ("[1]", "is [1], not a JSON object"),
    ("{", "not JSON"),
    (_cursor(run_id=3), "run_id is 3, not a run id"),
    (_cursor(run_id="None; DROP"), "not a run id"),
    (_cursor(offset="10"), "offset is '10', not an integer"),
    (_cursor(offset=10**6), "outside log.jsonl's 20 bytes"),
    (_cursor(start=15), "offsets 15..10 outside"),
    (_cursor(hwm={"loss": "3"}), "hwm: loss is '3', not an integer"),
    (_cursor(artifacts=[["/x", None, 1]]), "artifacts: item 0 is"),
    (_cursor(status="DONE"), "status is 'DONE', not one of FINISHED, FAILED, KILLED"),
    (_cursor(model={"export": "/x"}), "model: no input_shape"),
    (_cursor(tracking_uri=None), "tracking_uri is None"),
    (json.dumps({"run_id": None}), "no tracking_uri"),
])
def test_a_cursor_of_another_shape_is_named_and_not_used(tmp_path, content, problem):
    from resnext_dist.tracking.mirror import RUN_FILE, read_cursor
    (tmp_path / "log.jsonl").write_text("x" * 19 + "\n")
    (tmp_path / RUN_FILE).write_text(content)
    rec, said = read_cursor(str(tmp_path))
    assert rec is None and said.startswith(f"{tmp_path / RUN_FILE}: ") and problem in said, said
    (tmp_path / RUN_FILE).write_text(_cursor())
    assert read_cursor(str(tmp_path)) == (json.loads(_cursor()), "")
    os.remove(tmp_path / RUN_FILE)
    assert read_cursor(str(tmp_path)) == (None, "")


def test_the_run_start_is_found_in_the_log(tmp_path):
    """Where a rebuilt cursor starts: the newest `tracked` event of the store (and run), else the newest fresh start
    record, else 0."""
    from resnext_dist.runlog import RunLog
    from resnext_dist.tracking.mirror import run_start
    log = RunLog(str(tmp_path / "log.jsonl"))
    assert run_start(str(tmp_path), "http://a") == (None, 0)
    log.write("start", 0, resumed_from=None)
    log.write("step", 1, loss=1.0)
    fresh = os.path.getsize(tmp_path / "log.jsonl")
    log.write("start", 0, resumed_from=None)  # resume=never: a new training run in the same directory
    log.write("event", 0, event="tracked", run_id="a" * 32, tracking_uri="http://a", start=fresh, how="created")
    log.write("start", 1, resumed_from="step_00000001.pt")  # a resume: the same run goes on
    log.write("event", 0, event="tracked", run_id="b" * 32, tracking_uri="http://b", start=0, how="created")
    log.close()
    assert run_start(str(tmp_path), "http://a") == ("a" * 32, fresh)
    assert run_start(str(tmp_path), "http://b") == ("b" * 32, 0)
    assert run_start(str(tmp_path), "http://c") == (None, fresh)
    assert run_start(str(tmp_path), "http://a", "c" * 32) == ("c" * 32, fresh)
