"""The trainer under every launcher: DDP equals one process, multi-node torchrun, srun-style env, NaN agreement."""
import os
import subprocess

import pytest
import torch

from resnext_dist.runlog import read_log
from tests.tiny import PYTHON, REPO, TINY, env, free_port, params, run_train

pytestmark = pytest.mark.slow


def ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_ddp_equals_single_process(tmp_path):
    """2 ranks x batch 8 == 1 process with global batch 16 on the same samples, to 1e-5 relative.

    The single process takes the 16 images as 2 micro-batches of 8 (optim.global_batch_size=16): BatchNorm
    normalizes over each micro-batch, exactly as it does over each rank's batch under DDP, so the gradients
    agree; one batch of 16 would normalize over 16 and differ by design.
    """
    common = ["train.epochs=1", "train.max_steps=6", "train.deterministic=true"]
    ok(run_train(tmp_path / "ddp", common, nproc=2))
    ok(run_train(tmp_path / "single", common + ["optim.global_batch_size=16"], nproc=1))
    a, b = params(tmp_path / "ddp"), params(tmp_path / "single")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    logs = [r for r in read_log(tmp_path / "ddp" / "log.jsonl") if r["kind"] == "step"]
    assert logs[-1]["step"] == 6
    # the logged loss is the mean over both ranks' batches: the single process's mean over its two micro-batches
    single = [r for r in read_log(tmp_path / "single" / "log.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in logs] == [r["step"] for r in single]
    for x, y in zip(logs, single):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)


def test_uneven_micro_batches_on_3_ranks_equal_one_process_with_the_global_batch(tmp_path):
    """The whole trainer: a global batch of 16 on 3 ranks of at most 3 images (2 micro-steps, groups
    [3, 3, 3, 3, 2, 2]: rank 0 takes 3 + 3 images, ranks 1 and 2 take 3 + 2) trains to the weights of one process
    reading the same 6 groups (data.batch_size=3 there too: BatchNorm normalizes over the same images), to float
    rounding, with the same logged losses. (That each micro-batch is weighed by its images: the next test.)"""
    common = ["train.epochs=1", "train.max_steps=6", "train.deterministic=true", "data.batch_size=3",
              "optim.global_batch_size=16"]
    ok(run_train(tmp_path / "ddp", common, nproc=3))
    ok(run_train(tmp_path / "single", common, nproc=1))
    a, b = params(tmp_path / "ddp"), params(tmp_path / "single")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    starts = [r for r in read_log(tmp_path / "ddp" / "log.jsonl") if r["kind"] == "start"]
    assert (starts[0]["global_batch"], starts[0]["accum_steps"], starts[0]["micro_batch"]) == (16, 2, "2-3")
    ddp, single = ([r["loss"] for r in read_log(tmp_path / run / "log.jsonl") if r["kind"] == "step"]
                   for run in ("ddp", "single"))
    assert ddp == pytest.approx(single, rel=1e-5)  # the mean over the global batch's images


@pytest.mark.parametrize("world, max_micro", [(3, 3), (3, 16), (1, 3)])
def test_a_step_with_uneven_micro_batches_is_one_process_with_the_global_batch(tmp_path, world, max_micro):
    """The real train_step on 3 ranks (DDP, gloo) with a global batch of 16: micro-batches of at most 3 (groups
    [3, 3, 3, 3, 2, 2], ranks taking 6, 5 and 5 images) or at most 16 (one micro-batch each of 6, 5, 5), and on one
    process (6 micro-steps): the update is the hand-written one of one process, the mean loss over the 16 images
    with BatchNorm over the same groups, to float rounding. Weighing the micro-batches or the ranks equally
    (loss / accum_steps, DDP's plain average) would not be."""
    from tests.step_probe import reference_step

    out = tmp_path / "weights.pt"
    cmd = [PYTHON, "-m", "torch.distributed.run", f"--nproc_per_node={world}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "tests.step_probe", "16", str(max_micro), str(out)]
    r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = torch.load(out, weights_only=True), reference_step(16, max_micro, world)
    for k in want:
        if "running_" not in k and "num_batches_tracked" not in k:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


def test_run_directory_contract_and_done_means_done(tmp_path):
    run = tmp_path / "run"
    r = ok(run_train(run, ["train.epochs=2"], nproc=2))
    assert sorted(p for p in os.listdir(run) if not p.startswith(".")) == [
        "DONE", "checkpoints", "config.yaml", "curves.png", "export", "log.jsonl"]
    records = read_log(run / "log.jsonl")
    epochs = [x for x in records if x["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    for e in epochs:  # exact evaluation: 50 images over 2 ranks, each counted once
        assert e["val_images"] == 50 and 0 <= e["val_top1"] <= e["val_top5"] <= 1
    steps = [x for x in records if x["kind"] == "step"]
    assert {"loss", "lr", "img_per_s", "data_wait", "peak_mem_mb", "epoch"} <= steps[0].keys()
    assert "done" in r.stdout
    # started again: exits 0 at once, trains nothing
    before = (run / "log.jsonl").read_text()
    r = ok(run_train(run, ["train.epochs=2"], nproc=1))
    assert "already finished" in r.stdout and (run / "log.jsonl").read_text() == before


def test_two_torchrun_nodes_with_c10d_rendezvous(tmp_path):
    port = free_port()
    cmd = lambda node: [PYTHON, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
                        "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                        "--rdzv-id=test", "-m", "resnext_dist.train", *TINY, f"run.dir={tmp_path / 'run'}",
                        "train.epochs=1"]
    procs = [subprocess.Popen(cmd(n), cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for n in (0, 1)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert (tmp_path / "run" / "DONE").exists()
    assert torch.load(_latest(tmp_path / "run"), weights_only=False)["world_size"] == 2


def _latest(run):
    from resnext_dist.weights.layout import find_latest
    return find_latest(str(run / "checkpoints"))


def test_srun_style_environment_without_torchrun(tmp_path):
    """Two tasks with only SLURM_* variables (as srun sets them) join one process group."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        e = env(SLURM_PROCID=rank, SLURM_LOCALID=rank, SLURM_NTASKS=2, SLURM_NNODES=1, SLURM_JOB_ID=77,
                MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            e.pop(k, None)
        procs.append(subprocess.Popen([PYTHON, "-m", "resnext_dist.train", *TINY, f"run.dir={tmp_path / 'run'}",
                                       "train.epochs=1"], cwd=REPO, env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert torch.load(_latest(tmp_path / "run"), weights_only=False)["world_size"] == 2


@pytest.mark.parametrize("extra", [
    ["train.precision=bf16", "train.channels_last=true"],
    ["train.precision=fp16"],
    ["train.compile=true", "train.compile_mode=reduce-overhead"],  # CUDA graphs where there is a GPU
    ["train.ema_decay=0.9", "train.tta_flip=true", "model.blurpool=true", "optim.global_batch_size=16",
     "data.min_train_res=8", "data.ramp_start_epoch=0", "data.ramp_end_epoch=1", "optim.schedule=step",
     "optim.milestones=[1]", "train.grad_clip_norm=1.0"],
], ids=["bf16-channels_last", "fp16-gradscaler", "compile", "ema-tta-blurpool-accum-progressive"])
def test_precision_and_features_run_on_cpu(tmp_path, extra):
    r = ok(run_train(tmp_path / "run", ["train.epochs=2", "train.max_steps=4", *extra], nproc=1, timeout=600))
    records = read_log(tmp_path / "run" / "log.jsonl")
    losses = [x["loss"] for x in records if x["kind"] == "step"]
    assert losses and all(l == l and l < 100 for l in losses), r.stdout
    if "train.compile=true" in extra:  # the mode reaches the banner (and torch.compile: build.runner)
        assert "compile on (reduce-overhead)" in r.stdout, r.stdout


def test_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    r = run_train(tmp_path / "run", ["train.epochs=5", "checkpoint.every_steps=1"], nproc=2, timeout=180,
                  RESNEXT_DIST_FAULT="nan@1:3")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    for rank in (0, 1):  # both ranks raised, naming the step
        assert f"[rank{rank}]: resnext_dist.run.step.NonFiniteLoss: non-finite loss at step 3" in out, out[-3000:]
    from resnext_dist.run.checkpoint import list_checkpoints
    names = [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "run" / "checkpoints"))]
    assert names[-1] == "step_00000002.pt"  # nothing from the poisoned step was saved
    assert not (tmp_path / "run" / "DONE").exists()


def test_learning_rate_schedule_is_per_iteration_with_warmup(tmp_path):
    ok(run_train(tmp_path / "run", ["train.epochs=2", "optim.warmup_epochs=1", "train.log_every_steps=1",
                                    "optim.lr=0.256", "optim.scale_lr=true"], nproc=1))
    lrs = [x["lr"] for x in read_log(tmp_path / "run" / "log.jsonl") if x["kind"] == "step"]
    peak = 0.256 * 8 / 256
    steps_per_epoch = 256 // 8
    assert lrs[:steps_per_epoch] == sorted(lrs[:steps_per_epoch])  # warm-up rises
    assert max(lrs) == pytest.approx(peak, rel=1e-6)
    assert lrs[steps_per_epoch:] == sorted(lrs[steps_per_epoch:], reverse=True)  # cosine falls
    assert lrs[-1] == pytest.approx(0, abs=1e-9)


def test_the_bare_command_trains_the_embedded_default_above_95_percent(tmp_path):
    """`torchrun --nproc_per_node=2 -m resnext_dist.train` with no --config, from an empty folder and an empty
    data cache: it says what it trains, makes the digits once, and reaches DONE at >= 95% val top-1."""
    work = tmp_path / "work"
    work.mkdir()
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "resnext_dist.train",
           "tracking.enabled=false"]
    r = ok(subprocess.run(cmd, cwd=work, env=env(RESNEXT_DIST_CACHE=tmp_path / "cache"), capture_output=True,
                          text=True, timeout=600))
    assert r.stdout.startswith("no --config: training the embedded default (digits quickstart)")
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.beton")) == ["digits16_raw_train.beton",
                                                                          "digits16_raw_val.beton"]
    (run,) = (work / "runs").iterdir()
    assert run.name.startswith("quickstart-") and (run / "DONE").exists()
    records = read_log(run / "log.jsonl")
    losses = [x["loss"] for x in records if x["kind"] == "step"]
    epochs = [x for x in records if x["kind"] == "epoch"]
    assert losses[-1] < losses[0] / 2
    assert len(epochs) == 8 and epochs[-1]["val_images"] == 360 and epochs[-1]["val_top1"] >= 0.95
