"""Hostile files, full disks, shared run directories and dead launchers, in real processes (issue 16).

Each test runs the real trainer (tests/tiny.py) or real ranks on gloo, a real tmpfs for the full disk, a real
crafted pickle, two real trainers started together, a real torchrun agent killed with SIGKILL."""
import json
import os
import signal
import subprocess
import time

import pytest

from resnext_dist.run import checkpoint as ckpt
from resnext_dist.weights import layout
from resnext_dist.runlog import read_log
from tests.mounts import small_tmpfs
from tests.tiny import REPO, TINY, env, free_port, run_train, train_cmd
from tests.unit.test_checkpoint import crafted, make_state

pytestmark = pytest.mark.slow


def ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


# ----------------------------------------------------------------------------------------------
# Nothing we load can run code


@pytest.mark.parametrize("where", ["resume-path", "auto-resume"])
def test_crafted_checkpoint_is_refused_naming_it_and_never_runs(tmp_path, where):
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    if where == "resume-path":
        evil = tmp_path / "evil.pt"
        overrides = [f"checkpoint.resume={evil}"]
    else:  # dropped into the run's checkpoints/ where auto-resume looks
        evil = run / "checkpoints" / "step_00000099.pt"
        overrides = []
    os.makedirs(evil.parent, exist_ok=True)
    crafted(evil, marker, legacy=False)
    r = run_train(run, overrides)
    assert r.returncode == 2, r.stderr[-3000:]
    line = r.stderr.strip()
    assert line.count("\n") == 0 and line.startswith(f"error: {evil}: refused: ") and "posix.system" in line
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# A checkpoint that cannot be written: CheckpointWriteError on every rank, whatever layer raised


def _rank(rank, body, *args):
    """Run one spawned rank's `body`, then end it as the trainer ends (commandline.exit_without_teardown): gloo's native
    destructors in the interpreter's teardown were seen to abort a finished rank with SIGABRT ("terminate called
    without an active exception", once in a CI session), which is not what these tests are about."""
    from resnext_dist.commandline import exit_without_teardown

    body(rank, *args)
    exit_without_teardown(0)


def _save_on_full_disk(rank, world, port, ckpt_dir, out_dir):
    import torch.distributed as tdist

    from resnext_dist.dist import DistInfo

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    state = make_state()  # ~0.4 MB of weights and optimizer state: more than the 64 KiB disk holds
    saver = ckpt.Checkpointer(state, ckpt_dir, keep=2, every_steps=3, dist=DistInfo(rank=rank, world_size=world))
    state.step = 3
    try:
        saver.after_step()
        outcome = {"raised": None}
    except Exception as e:  # what each rank raised, for the test to read
        outcome = {"raised": type(e).__name__, "message": str(e)}
    tdist.barrier()  # the ranks are still in step: the next collective works
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(outcome, f)
    tdist.destroy_process_group()


def test_full_disk_during_a_checkpoint_raises_checkpoint_write_error_on_every_rank(tmp_path):
    import torch.multiprocessing as tmp

    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        tmp.spawn(_rank, args=(_save_on_full_disk, 2, free_port(), disk, str(tmp_path)), nprocs=2, join=True)
        outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
        path = os.path.join(disk, "step_00000003.pt")
        for outcome in outcomes:
            assert outcome == {"raised": "CheckpointWriteError",
                               "message": f"could not save checkpoint {path}: no space left on device"}
        assert os.listdir(disk) == []  # no partial file, no temporary file


# ----------------------------------------------------------------------------------------------
# Resume: a torn newest checkpoint is skipped for the newest valid one


@pytest.mark.parametrize("damage", ["torn", "zeroed mid-file"])
def test_torn_newest_checkpoint_is_skipped_with_a_warning_event(tmp_path, damage):
    run = tmp_path / "run"
    ok(run_train(run, ["train.epochs=1", "checkpoint.every_steps=10", "checkpoint.keep=5"]))
    os.remove(run / "DONE")
    files = ckpt.list_checkpoints(str(run / "checkpoints"))
    newest, previous = files[-1], files[-2]
    data = open(newest, "rb").read()
    if damage == "torn":
        open(newest, "wb").write(data[: len(data) // 2])
    else:  # a lost block: same length, and torch.load alone reads it without a word
        mid = len(data) // 2
        open(newest, "wb").write(data[:mid] + b"\0" * 4096 + data[mid + 4096:])
    ok(run_train(run, ["train.epochs=2", "checkpoint.every_steps=10", "checkpoint.keep=5"]))
    events = [r for r in read_log(run / "log.jsonl") if r["kind"] == "event"]
    resumed = [e for e in events if e["event"] == "resumed"]
    assert resumed and resumed[-1]["checkpoint"] == previous
    assert any(newest in json.dumps(e) for e in events if e["event"] != "resumed")  # the warning names it


# ----------------------------------------------------------------------------------------------
# One live trainer per run directory


def _start_trainer(run_dir, overrides):
    return subprocess.Popen(train_cmd(1, [*TINY, f"run.dir={run_dir}", *overrides]), cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_two_trainers_on_one_run_directory_one_trains_the_other_exits_2_naming_it(tmp_path):
    run = tmp_path / "run"
    overrides = ["train.epochs=6", "data.synthetic_size=512", "checkpoint.every_steps=8"]
    trainers = [_start_trainer(run, overrides) for _ in range(2)]
    try:
        results = [(p, *p.communicate(timeout=600)) for p in trainers]
    finally:
        for p in trainers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err[-1500:]) for p, _, err in results]
    winner = next(p for p, _, _ in results if p.returncode == 0)
    loser_err = next(err for p, _, err in results if p.returncode == 2).strip()
    assert loser_err.count("\n") == 0
    assert loser_err.startswith(f"error: run directory {run} is in use by pid {winner.pid} on host "), loser_err
    steps = [r["step"] for r in read_log(run / "log.jsonl") if r["kind"] == "step"]
    assert steps == sorted(set(steps))  # one writer: no step logged twice


def _hold_on_two_ranks(rank, world, port, run_dir, out_dir):
    import torch.distributed as tdist

    from resnext_dist.dist import DistInfo
    from resnext_dist.run.lock import hold_run_dir

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        hold_run_dir(run_dir, DistInfo(rank=rank, world_size=world))
        outcome = {"raised": None}
    except Exception as e:
        outcome = {"raised": type(e).__name__, "message": str(e)}
    with open(os.path.join(out_dir, f"hold{rank}.json"), "w") as f:
        json.dump(outcome, f)
    tdist.destroy_process_group()


def test_every_rank_of_a_second_trainer_learns_the_directory_is_held(tmp_path):
    import torch.multiprocessing as tmp

    from resnext_dist.run.lock import RunLock

    with RunLock(str(tmp_path / "run")):  # the first trainer
        tmp.spawn(_rank, args=(_hold_on_two_ranks, 2, free_port(), str(tmp_path / "run"), str(tmp_path)), nprocs=2)
    outcomes = [json.loads((tmp_path / f"hold{r}.json").read_text()) for r in range(2)]
    assert outcomes[0] == outcomes[1] and outcomes[0]["raised"] == "RunDirInUse"
    assert outcomes[0]["message"].startswith(f"run directory {tmp_path / 'run'} is in use by pid {os.getpid()} ")


# ----------------------------------------------------------------------------------------------
# A worker whose torchrun agent died stops at the next step boundary with a checkpoint


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_worker_of_a_killed_torchrun_agent_stops_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    agent = subprocess.Popen(  # torchrun, even for one process: the agent is what dies here
        train_cmd(1, [*TINY, f"run.dir={run}", "train.epochs=500", "train.log_every_steps=2"],
                  extra_torchrun=["--max-restarts=0"]),
        cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    worker = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # training: steps logged, the worker's pid in the lease
            logged = [r for r in read_log(run / "log.jsonl") if r["kind"] == "step"] \
                if (run / "log.jsonl").exists() else []
            if len(logged) >= 2:
                break
            time.sleep(0.2)
        from resnext_dist.run.lock import read_lease
        worker = read_lease(str(run)).get("pid")
        assert worker and worker != agent.pid, "the trainer did not take the run directory's lock"
        agent.kill()  # SIGKILL: the agent cannot pass anything on; its worker lives in its own session
        agent.wait()
        killed_at = max(r["step"] for r in read_log(run / "log.jsonl") if r["kind"] == "step")
        deadline = time.monotonic() + 60
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), "the orphaned worker trained on"
        saved = ckpt.load_file(layout.find_latest(str(run / "checkpoints")))
        assert saved["step"] >= killed_at
    finally:
        if worker and _alive(worker):
            os.kill(worker, signal.SIGKILL)
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------
# Nothing read back from the run directory is trusted (issue 25)


def events_of(run, name):
    return [r for r in read_log(run / "log.jsonl") if r["kind"] == "event" and r["event"] == name]


def test_bad_lines_in_the_log_never_make_the_run_unfinishable(tmp_path):
    """Lines of every hostile class appended to log.jsonl mid-run: the epoch end (curves) and the summary read the
    log; the run finishes, each line is said once (a later attempt does not say it again)."""
    from tests.unit.test_readback import HOSTILE
    run, common = tmp_path / "run", ["train.epochs=2", "checkpoint.every_steps=8"]
    assert run_train(run, common, RESNEXT_DIST_FAULT="kill@0:40").returncode != 0
    first_bad = sum(1 for _ in open(run / "log.jsonl", "rb")) + 1
    with open(run / "log.jsonl", "ab") as f:
        for line in HOSTILE.values():
            f.write((line.encode() if isinstance(line, str) else line) + b"\n")
    ok(run_train(run, common))
    assert (run / "DONE").exists()
    summary = [r for r in read_log(run / "log.jsonl") if r["kind"] == "summary"]
    assert len(summary) == 1 and summary[0]["epochs_done"] == 2 and summary[0]["best_epoch"] in (1, 2)
    said = events_of(run, "log_line_skipped")
    assert [e["line"] for e in said] == list(range(first_bad, first_bad + len(HOSTILE)))
    assert all(e["reason"] for e in said)
    ok(run_train(run, ["train.epochs=3", "checkpoint.every_steps=8"]))  # an extension reads the log again
    assert len(events_of(run, "log_line_skipped")) == len(HOSTILE)


def test_a_done_marker_of_another_shape_is_said_and_the_run_finished_again(tmp_path):
    run = tmp_path / "run"
    ok(run_train(run, ["train.epochs=1"]))
    steps = len([r for r in read_log(run / "log.jsonl") if r["kind"] == "step"])
    (run / "DONE").write_text('{"epochs_done": "1"}')  # crashed every start
    r = ok(run_train(run, ["train.epochs=1"]))
    assert "DONE: epochs_done is '1', not an integer" in r.stdout
    (ignored,) = events_of(run, "run_file_ignored")
    assert ignored["reason"].startswith(f"{run / 'DONE'}: epochs_done is '1'")
    assert json.loads((run / "DONE").read_text()) == {"step": 32, "epochs_done": 1}
    assert len([r for r in read_log(run / "log.jsonl") if r["kind"] == "step"]) == steps  # nothing trained again


def test_a_recorded_config_that_is_not_a_run_config_is_refused_and_kept(tmp_path):
    run = tmp_path / "run"
    ok(run_train(run, ["train.epochs=1", "train.max_steps=4"]))
    (run / "config.yaml").write_text("model: 3\n")  # bypassed the identity check and was overwritten
    before = {p: (run / p).read_bytes() for p in ("config.yaml", "log.jsonl", "DONE")}
    r = run_train(run, ["train.epochs=1", "model.num_classes=7"])
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {run / 'config.yaml'}: not a run config (its 'model' ")
    assert {p: (run / p).read_bytes() for p in before} == before


def test_a_link_to_another_run_checkpoint_is_skipped_and_an_explicit_one_refused_naming_the_difference(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ok(run_train(a, ["train.epochs=1", "train.max_steps=8", "checkpoint.every_steps=4"]))
    ok(run_train(b, ["train.epochs=1", "train.max_steps=12", "checkpoint.every_steps=4", "optim.lr=0.5"]))
    theirs = b / "checkpoints" / "step_00000012.pt"
    link = a / "checkpoints" / "step_00000150.pt"
    os.symlink(theirs, link)
    (a / "checkpoints" / "latest").write_text("step_00000150.pt\n")  # latest names it: resumed silently before
    ok(run_train(a, ["train.epochs=1", "train.max_steps=16", "checkpoint.every_steps=4"]))
    (skipped,) = events_of(a, "checkpoint_skipped")
    assert skipped["checkpoint"] == str(link) and "a link out of" in skipped["reason"]
    assert events_of(a, "resumed")[-1]["checkpoint"] == str(a / "checkpoints" / "step_00000008.pt")
    log_before = (a / "log.jsonl").read_bytes()
    r = run_train(a, ["train.epochs=1", "train.max_steps=20", f"checkpoint.resume={theirs}"])
    assert r.returncode == 2
    err = r.stderr.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {theirs}: a checkpoint of another run (optim.lr: 0.5 "
                                                     f"there, 1.0 here)"), err
    assert (a / "log.jsonl").read_bytes() == log_before


def test_a_rollback_is_followed_after_a_crash_and_the_abandoned_trajectory_is_kept(tmp_path):
    """checkpoint.resume=PATH to an earlier step (saving every 6 steps, keeping 2, now), a crash, then the plain
    command: it resumes the branch's own newest save (step 36), not the abandoned trajectory's higher-numbered
    ones (40, 48), which pruning kept over it before, deleting the branch's save at once; those are kept, moved
    aside."""
    import hashlib
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert run_train(run, ["train.epochs=2", "checkpoint.every_steps=8", "checkpoint.keep=3"],
                     RESNEXT_DIST_FAULT="kill@0:50").returncode != 0
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(ckpts))] == \
        ["step_00000032.pt", "step_00000040.pt", "step_00000048.pt"]
    abandoned = {n: hashlib.sha256((ckpts / n).read_bytes()).hexdigest() for n in ("step_00000040.pt",
                                                                                  "step_00000048.pt")}
    back, now = str(ckpts / "step_00000032.pt"), ["train.epochs=2", "checkpoint.every_steps=6", "checkpoint.keep=2"]
    assert run_train(run, now + [f"checkpoint.resume={back}"], RESNEXT_DIST_FAULT="kill@0:39").returncode != 0
    (branched,) = events_of(run, "branched")
    assert branched["checkpoint"] == back and branched["moved"] == sorted(abandoned)
    assert {n: hashlib.sha256(open(os.path.join(branched["to"], n), "rb").read()).hexdigest()
            for n in os.listdir(branched["to"])} == abandoned  # kept as they were
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(ckpts))] == ["step_00000032.pt",
                                                                               "step_00000036.pt"]
    assert ckpt.load_file(str(ckpts / "step_00000036.pt"))["lineage"]["parent"] == \
        {"name": "step_00000032.pt", "step": 32}  # the branch's own save
    ok(run_train(run, now))
    assert events_of(run, "resumed")[-1]["checkpoint"] == str(ckpts / "step_00000036.pt")
    assert json.loads((run / "DONE").read_text()) == {"step": 64, "epochs_done": 2}
    assert sorted(os.listdir(branched["to"])) == sorted(abandoned)


def test_a_restart_after_a_rollback_goes_on_along_the_branch(tmp_path):
    """checkpoint.resume=PATH is the first attempt's: torchrun's restart after a crash resumes the branch's newest
    save, not PATH again (which would branch once more and throw the restarted attempt's work aside)."""
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert run_train(run, ["train.epochs=2", "checkpoint.every_steps=8", "checkpoint.keep=3"],
                     RESNEXT_DIST_FAULT="kill@0:50").returncode != 0
    back = str(ckpts / "step_00000032.pt")
    ok(run_train(run, ["train.epochs=2", "checkpoint.every_steps=6", "checkpoint.keep=2",
                       f"checkpoint.resume={back}"], extra_torchrun=["--max-restarts=1"],
                 RESNEXT_DIST_FAULT="kill@0:39:0"))
    resumed = [(e["checkpoint"], e["restart"]) for e in events_of(run, "resumed")]
    assert resumed == [(back, 0), (str(ckpts / "step_00000036.pt"), 1)], resumed
    assert len(events_of(run, "branched")) == 1
    assert json.loads((run / "DONE").read_text()) == {"step": 64, "epochs_done": 2}


def test_a_full_disk_at_the_final_export_is_one_line_and_the_same_command_finishes(tmp_path):
    import shutil
    src = tmp_path / "src"
    ok(run_train(src, ["train.epochs=1"]))
    os.remove(src / "DONE")
    shutil.rmtree(src / "export")  # as if the run had stopped right after its last checkpoint
    used = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs)
    with small_tmpfs(tmp_path / "disk", str(used + 96 * 1024)) as disk:
        run = os.path.join(disk, "run")
        shutil.copytree(src, run)
        r = run_train(run, ["train.epochs=1"])
        assert r.returncode == 2, r.stderr[-3000:]
        err = r.stderr.strip()
        assert err.count("\n") == 0 and "Traceback" not in r.stderr, err
        assert err == (f"error: could not write the final weights in {run}: no space left on device; the "
                       f"checkpoint of step 32 is kept: make room and run the same command again to finish the run")
        assert not os.path.exists(os.path.join(run, "DONE"))
        # the export is written under a temporary name and renamed: nothing partial under its name, no leftover
        export = os.path.join(run, "export")
        assert not os.path.exists(os.path.join(export, "model.safetensors"))
        assert not os.path.isdir(export) or os.listdir(export) == []
        assert ckpt.load_file(os.path.join(run, "checkpoints", "step_00000032.pt"))["step"] == 32
        subprocess.run(["mount", "-o", "remount,size=16m", disk], check=True)
        ok(run_train(run, ["train.epochs=1"]))
        assert json.loads(open(os.path.join(run, "DONE")).read()) == {"step": 32, "epochs_done": 1}
        assert os.path.exists(os.path.join(run, "export", "model.safetensors"))


def test_a_signal_ends_a_hung_tracker_close_at_once(tmp_path):
    """MLflow at an address that accepts and never answers; tracking.close_timeout_s=300: the run finishes, its
    close waits on MLflow; a Ctrl-C there ends it at once (the rest stays in the cursor for `sync`). The summary
    says the MLflow run was not created, never "run None"."""
    import socket
    run, out = tmp_path / "run", tmp_path / "out.txt"
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(128)
        overrides = ["train.epochs=1", "tracking.enabled=true", "tracking.timeout_s=1", "tracking.close_timeout_s=300",
                     f"tracking.uri=http://127.0.0.1:{hole.getsockname()[1]}"]
        with open(out, "w") as f:
            p = subprocess.Popen(train_cmd(1, [*TINY, f"run.dir={run}", *overrides]), cwd=REPO, env=env(), stdout=f,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while "  log " not in out.read_text() and time.monotonic() < deadline and p.poll() is None:
                time.sleep(0.2)  # the summary is printed: the close comes next
            time.sleep(1.0)
            assert p.poll() is None, out.read_text()[-3000:]
            t0 = time.monotonic()
            p.send_signal(signal.SIGINT)
            p.wait(timeout=20)
            assert time.monotonic() - t0 < 5, "the close went on waiting after a Ctrl-C"
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    text = out.read_text()
    assert p.returncode == 0 and (run / "DONE").exists(), text[-3000:]
    assert "run None" not in text and "not created yet" in text and "stopped waiting on a signal" in text
    cursor = json.loads((run / "mlflow_run.json").read_text())
    assert cursor["status"] == "FINISHED" and cursor["model"] and cursor["artifacts"]  # for sync, later
