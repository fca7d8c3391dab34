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


def test_torn_newest_checkpoint_is_skipped_with_a_warning_event(tmp_path):
    run = tmp_path / "run"
    ok(run_train(run, ["train.epochs=1", "checkpoint.every_steps=10", "checkpoint.keep=5"]))
    os.remove(run / "DONE")
    files = ckpt.list_checkpoints(str(run / "checkpoints"))
    newest, previous = files[-1], files[-2]
    data = open(newest, "rb").read()
    open(newest, "wb").write(data[: len(data) // 2])
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
