"""Where a user opens MLflow (issue 26, bullet 4): the console links to the run's runs table, and
`python -m resnext_dist.tracking ui [RUN_DIR]` starts the UI on a run's store and prints the run's page.

The local store of a run is a copy of the session server's migrated template (tests/plugins/mlflow_server.py): a
fresh sqlite store takes ~15 s of migrations on 2 cores."""
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from resnext_dist.config import load_config, to_yaml
from resnext_dist.dist import DistInfo
from resnext_dist.runlog import RunLog
from resnext_dist.tracking.__main__ import main
from resnext_dist.tracking.mlflow_store import LOCAL_UI, browse_hint, experiment_url, run_url, runs_table
from resnext_dist.tracking.mlflow_tracker import Tracker
from tests.plugins.mlflow_server import client_for, free_port

pytestmark = pytest.mark.mlflow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tracked_run(root, uri="", name="demo"):
    """A finished tracked run `root/name` (a few log lines), as the trainer leaves it: config.yaml and its cursor."""
    cfg = load_config(None, [f"run.root={root}", f"run.name={name}", "tracking.experiment=ui-test",
                             "tracking.timeout_s=2"] + ([f"tracking.uri={uri}"] if uri else []))
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    tracker = Tracker(cfg, DistInfo(), str(run_dir))
    log = RunLog(str(run_dir / "log.jsonl"))
    log.write("start", 0, world_size=1)
    log.write("summary", 1, best_val_top1=0.5, final_val_top1=0.5, epochs_done=1, train_hours=0.001)
    log.close()
    tracker.close("FINISHED")
    return tracker, run_dir, cfg


def children(pid):
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_line(proc, timeout):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def ui_command(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, "-m", "resnext_dist.tracking", "ui", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # the server's start: ~25 s on a busy 2-core machine
def test_ui_serves_the_runs_store_links_the_run_page_and_ends_cleanly_on_sigint(mlflow_server_handle, tmp_path,
                                                                             capsys):
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copyfile(mlflow_server_handle.template, root / "mlflow.db")  # migrated: no 15 s of schema creation
    tracker, run_dir, cfg = tracked_run(root)
    exp_id = client_for(tracker.uri).get_run(tracker.run_id).info.experiment_id
    # launch/quickstart.py's last line: the command that opens the UI, then the runs table to open there
    assert browse_hint(cfg, sys.executable, runs_table(cfg)).endswith(f"(then open {experiment_url(LOCAL_UI, exp_id)})")
    # The console's line (banner and summary): the runs table at the UI's address, and how to start the UI there.
    assert tracker.describe() == (f"run {tracker.run_id} | {experiment_url(LOCAL_UI, exp_id)}  "
                                  f"(start the UI: python -m resnext_dist.tracking ui {run_dir})")
    assert "workflowType=machine_learning" in tracker.describe()  # without it MLflow 3.x shows its GenAI overview

    port = free_port()
    proc = ui_command(str(run_dir), "--port", str(port))
    try:
        line = read_line(proc, 180)
        assert line, f"no link printed; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        ui = f"http://127.0.0.1:{port}"
        link = run_url(ui, exp_id, tracker.run_id)
        assert line.split(": ", 1)[1].split()[0] == link, line
        with urllib.request.urlopen(link.split("#")[0], timeout=10) as page:  # the UI's page answers
            assert page.status == 200 and b"<html" in page.read().lower()
        with urllib.request.urlopen(f"{ui}/api/2.0/mlflow/runs/get?run_id={tracker.run_id}", timeout=10) as r:
            assert json.load(r)["run"]["info"]["run_name"] == "demo"  # the run's own store is served
        server = children(proc.pid)
        assert server, "no mlflow server process"

        assert main(["ui", str(run_dir), "--port", str(port)]) == 2  # the port is taken: one line naming it
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"port {port}" in err, err

        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in server), "the mlflow server outlived the command"
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))  # nothing listens there any more


def test_ui_on_a_tracking_server_prints_the_run_page_and_starts_nothing(mlflow_server, tmp_path, capsys):
    tracker, run_dir, _ = tracked_run(tmp_path, uri=mlflow_server)
    exp_id = client_for(mlflow_server).get_run(tracker.run_id).info.experiment_id
    assert tracker.describe() == f"run {tracker.run_id} | {experiment_url(mlflow_server, exp_id)}"
    capsys.readouterr()  # what closing the run printed
    assert main(["ui", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == run_url(mlflow_server, exp_id, tracker.run_id)
    os.remove(run_dir / "mlflow_run.json")  # no cursor: config.yaml's store, the experiment's runs table
    assert main(["ui", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == experiment_url(mlflow_server, exp_id)


@pytest.mark.parametrize("case", ["missing", "untracked", "not a run", "no store", "store gone"])
def test_ui_refuses_what_it_cannot_show_in_one_line_exit_2(case, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    if case == "not a run":
        run_dir.mkdir()
    if case in ("untracked", "store gone"):  # gone: a tracked run whose sqlite store was deleted
        run_dir.mkdir()
        cfg = load_config(None, [f"run.root={tmp_path / 'runs'}", "run.name=run",
                                 f"tracking.enabled={case == 'store gone'}"])
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    monkeypatch.chdir(tmp_path)  # "no store": no runs/mlflow.db here
    assert main(["ui"] + ([] if case == "no store" else [str(run_dir)])) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert {"missing": "no such run directory", "untracked": "tracking.enabled=false", "not a run": "no config.yaml",
            "no store": "runs/mlflow.db does not exist",
            "store gone": f"of {run_dir}: {tmp_path}/runs/mlflow.db does not exist"}[case] in err
    assert not (tmp_path / "runs").exists()  # nothing made


def test_the_readmes_tracking_commands_parse():
    from resnext_dist.tracking.__main__ import parser
    from tests.unit.test_readme_commands import readme_commands
    commands = readme_commands("-m resnext_dist.tracking")
    assert ["ui", "runs/quickstart-996f84c3"] in commands
    for argv in commands:
        parser().parse_args(argv)


def group_members(pgid):
    """Live processes whose process group is `pgid` (from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def test_a_sigkilled_ui_leaves_no_server_behind(tmp_path):
    """The server's guard (tracking/server_guard.py) ends its whole group, grandchildren included (mlflow runs
    uvicorn as its child), when the command that started it is SIGKILLed."""
    script = ("import sys, time; from resnext_dist.tracking.ui import spawn; "
              "p = spawn(['sh', '-c', 'sleep 300 & sleep 300'], sys.argv[1], {}); print(p.pid, flush=True); "
              "time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "log")], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE, text=True)
    try:
        guard = int(read_line(parent, 60))
        deadline = time.monotonic() + 30
        while len(group_members(guard)) < 4 and time.monotonic() < deadline:  # guard, sh, two sleeps
            time.sleep(0.1)
        assert len(group_members(guard)) == 4, group_members(guard)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 20
        while group_members(guard) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert group_members(guard) == []
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in group_members(guard) if "guard" in locals() else []:
            os.kill(pid, signal.SIGKILL)
