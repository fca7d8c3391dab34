"""What a person sees: the banner before the first step, a line at least every train.log_every_s, the summary,
and a bad input said once under torchrun, leaving nothing behind."""
import subprocess

import pytest

from resnext_dist.runlog import read_log
from tests.tiny import PYTHON, REPO, TINY, env, run_train

pytestmark = pytest.mark.slow


def test_banner_comes_before_the_first_step_and_the_summary_says_where_things_are(tmp_path):
    run = tmp_path / "run"
    r = run_train(run, ["train.epochs=1", "train.log_every_steps=8"], nproc=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    banner = out.index("| fresh start")
    first_step = out.index("| step 1/")
    assert banner < first_step
    for fact in ("2 processes on 1 node | gloo | cpu", "0.1", "M parameters", "10 classes",
                 "256 train / 50 val images", "8 per process x 2 x 1 accumulation = 16 global",
                 "16 steps/epoch x 1 epochs = 16 steps", "fp32 | channels-last off | compile off", str(run)):
        assert fact in out[banner:first_step], fact
    assert out.count("| fresh start") == 1  # rank 0 only
    # one aligned line per interval, in words and units
    assert "epoch 1/1 | step 8/16 | loss " in out and " img/s | data wait " in out
    assert "val top-1 " in out and "% | top-5 " in out and "(50 images)" in out
    tail = out[out.rindex("\ndone in "):]
    assert "best val top-1" in tail and str(run / "export" / "model.safetensors") in tail
    assert str(run / "log.jsonl") in tail
    start = [x for x in read_log(run / "log.jsonl") if x["kind"] == "start"]
    assert start and start[0]["world_size"] == 2 and start[0]["nodes"] == 1 and start[0]["global_batch"] == 16
    summary = [x for x in read_log(run / "log.jsonl") if x["kind"] == "summary"]
    assert summary and summary[0]["epochs_done"] == 1 and 0 <= summary[0]["best_val_top1"] <= 1


def test_a_line_at_least_every_log_every_s_when_steps_are_slow(tmp_path):
    run = tmp_path / "run"
    # 0.3 s per step from step 2 on, a line every 1000 steps or 1 s: the timed lines must come
    r = run_train(run, ["train.epochs=1", "train.max_steps=12", "train.log_every_steps=1000",
                        "train.log_every_s=1"], nproc=1, RESNEXT_DIST_FAULT="slow@0:2")
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [x["step"] for x in read_log(run / "log.jsonl") if x["kind"] == "step"]
    assert steps[0] == 1  # the first optimizer step is logged when it finishes
    assert steps[-1] == 12
    assert len(steps) >= 4, steps  # 1, then about every 3-4 slow steps, then 12


def test_bad_input_under_torchrun_is_said_once_and_leaves_no_files(tmp_path):
    run = tmp_path / "run"
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "resnext_dist.train",
           *TINY, f"run.dir={run}", "data.loader=ffcv", f"data.train={tmp_path / 'missing.beton'}"]
    r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    errors = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "missing.beton" in errors[0], r.stderr[-3000:]
    assert not run.exists()


def test_a_stop_during_start_up_exits_cleanly(tmp_path):
    """SIGTERM before the first step: exit 143, no checkpoint, no traceback."""
    import signal
    import time
    run = tmp_path / "run"
    cmd = [PYTHON, "-m", "resnext_dist.train", *TINY, f"run.dir={run}", "train.epochs=50",
           "data.synthetic_size=4096"]
    p = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = ""
    deadline = time.time() + 60
    while "building data and model" not in out and time.time() < deadline:
        out += p.stdout.readline()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err[-2000:]
    assert "Traceback" not in err
