"""A run directory holds one run: its identity is refused to change, allowed changes are logged, a finished run
is extended on request, a smoke run is continued by the full run, and a resume never repeats an epoch."""
import pytest

from resnext_dist.runlog import read_log
from tests.tiny import run_train

pytestmark = pytest.mark.slow


def ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def epochs_logged(run):
    return [x["epoch"] for x in read_log(run / "log.jsonl") if x["kind"] == "epoch"]


def test_a_changed_identity_key_is_refused_with_the_diff_and_nothing_is_written(tmp_path):
    run = tmp_path / "run"
    ok(run_train(run, ["train.epochs=1", "train.max_steps=4"]))
    before = {p: (run / p).read_bytes() for p in ("config.yaml", "log.jsonl", "DONE")}
    r = run_train(run, ["train.epochs=1", "optim.lr=0.3", "optim.global_batch_size=32"])
    assert r.returncode == 2
    err = r.stderr.strip()
    # the global batch is the identity (config.yaml records the one a new run got: data.batch_size x world size)
    assert err.count("\n") == 0 and "optim.lr: 1.0 -> 0.3" in err and "optim.global_batch_size: 8 -> 32" in err
    assert "run.name" in err  # the way out
    assert {p: (run / p).read_bytes() for p in before} == before


def test_an_allowed_change_resumes_and_is_logged(tmp_path):
    """data.batch_size is memory: a smaller one continues the run at its global batch of 8, in 2 micro-steps."""
    run = tmp_path / "run"
    ok(run_train(run, ["train.epochs=1", "train.max_steps=4"]))
    ok(run_train(run, ["train.epochs=1", "train.log_every_steps=4", "data.batch_size=4"]))
    records = read_log(run / "log.jsonl")
    changed = [x for x in records if x["kind"] == "event" and x["event"] == "config_changed"]
    assert {(c["key"], c["old"], c["new"]) for c in changed} >= {("train.log_every_steps", 2, 4),
                                                                  ("train.max_steps", 4, 0), ("data.batch_size", 8, 4)}
    start = [x for x in records if x["kind"] == "start"][-1]
    assert (start["global_batch"], start["accum_steps"], start["steps_per_epoch"]) == (8, 2, 32)
    assert "log_every_steps: 4" in (run / "config.yaml").read_text()


def test_a_smoke_run_is_continued_by_the_full_run(tmp_path):
    run = tmp_path / "run"
    ok(run_train(run, ["train.epochs=2", "train.max_steps=5"]))
    assert (run / "DONE").exists() and epochs_logged(run) == []
    r = ok(run_train(run, ["train.epochs=2"]))
    assert "already finished" not in r.stdout
    assert epochs_logged(run) == [0, 1]
    steps = [x["step"] for x in read_log(run / "log.jsonl") if x["kind"] == "step"]
    assert steps[-1] == 64 and len(steps) == len(set(steps))


def test_a_finished_run_is_extended_by_more_epochs(tmp_path):
    run = tmp_path / "run"
    ok(run_train(run, ["train.epochs=1"]))
    r = ok(run_train(run, ["train.epochs=1"]))
    assert "already finished" in r.stdout and "train.epochs=N" in r.stdout
    ok(run_train(run, ["train.epochs=2"]))
    records = read_log(run / "log.jsonl")
    assert epochs_logged(run) == [0, 1]
    ext = [x for x in records if x["kind"] == "event" and x["event"] == "extended"]
    assert [(e["old_epochs"], e["new_epochs"]) for e in ext] == [(1, 2)]
    # the schedule was rebuilt for 2 epochs from step 32 on: it ends at 0 at step 64, and it did not restart
    lrs = [x["lr"] for x in records if x["kind"] == "step" and x["step"] > 32]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(0, abs=1e-9)


def test_a_kill_right_after_an_epoch_end_checkpoint_repeats_no_epoch(tmp_path):
    """every_steps=16 lands on the epoch's last step (32): the epoch-end save must still be written."""
    run = tmp_path / "run"
    r = run_train(run, ["train.epochs=2", "checkpoint.every_steps=16"], RESNEXT_DIST_FAULT="kill@0:33")
    assert r.returncode != 0
    assert epochs_logged(run) == [0]
    ok(run_train(run, ["train.epochs=2", "checkpoint.every_steps=16"]))
    assert epochs_logged(run) == [0, 1]


def test_a_fresh_run_starts_from_an_export_with_a_new_classifier(tmp_path):
    """model.init: the weights of another run's export; 7 classes instead of 10: the classifier starts afresh,
    every other tensor is the export's, and the start record says so."""
    import torch
    from safetensors.torch import load_file
    ok(run_train(tmp_path / "a", ["train.epochs=1", "train.max_steps=3"]))
    b = tmp_path / "b"
    r = ok(run_train(b, ["train.epochs=1", "train.max_steps=1", "optim.lr=1e-9", "model.num_classes=7",
                         f"model.init={tmp_path / 'a' / 'export'}", "data.val_synthetic_size=0"]))
    start = [x for x in read_log(b / "log.jsonl") if x["kind"] == "start"][0]
    assert "re-initialized" in start["init"] and "re-initialized" in r.stdout
    a_sd, b_sd = load_file(str(tmp_path / "a" / "export" / "model.safetensors")), \
        load_file(str(b / "export" / "model.safetensors"))
    assert b_sd["fc.weight"].shape[0] == 7
    same = [k for k in a_sd if k.endswith("conv1.weight")]
    assert same and all(torch.allclose(a_sd[k], b_sd[k], atol=1e-6) for k in same)


def test_sync_bn_on_cpu_ranks_is_refused_at_start(tmp_path):
    r = run_train(tmp_path / "run", ["model.sync_bn=true"], nproc=2)
    assert r.returncode != 0 and "model.sync_bn=true needs GPUs" in r.stderr
    assert not (tmp_path / "run").exists()
