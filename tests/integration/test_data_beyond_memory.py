"""Datasets larger than memory, on 2 real ranks (torchrun, gloo) and through the trainer.

- data.os_cache=false (data.order=auto: the page-friendly order) with data.stage_dir: the two ranks race to stage
  train and val, one copies each file and the other waits for it; both read the same copies; each epoch the ranks'
  shards are disjoint and are sharding.train_shard's page-friendly order of the file's pages; a mid-epoch start
  continues the same sequence; exact evaluation still counts every validation image once.
- The trainer says where it reads from (banner and start record), reuses the staged copies on a resume, and
  refuses a stage directory too small for the data (a real small tmpfs) with exit 2 naming it, leaving nothing.

301 training images of 128 px, raw (48 KiB each, 42 per 2 MiB page: 8 pages), label = index; 101 validation images.
"""
import json
import os
import subprocess

import numpy as np
import pytest

from resnext_dist.data.sharding import train_shard
from resnext_dist.data.sources import SyntheticSource
from resnext_dist.runlog import read_log
from tests.data_helpers import SKIP, write
from tests.mounts import small_tmpfs
from tests.tiny import PYTHON, REPO, env, free_port, run_train

pytestmark = pytest.mark.slow
N, NV, BATCH, WINDOW = 301, 101, 10, 2


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    root = tmp_path_factory.mktemp("beyond")
    write(SyntheticSource(N, N, size=128), root / "train.beton", write_mode="raw")
    write(SyntheticSource(NV, NV, size=128, seed=1), root / "val.beton", write_mode="raw")
    return str(root / "train.beton"), str(root / "val.beton")


def pages_of(path):
    """The page each image starts on, read from the file's allocation table (independently of the loader)."""
    from ffcv.reader import Reader

    reader = Reader(path)
    table = reader.alloc_table
    first = {}
    for sample, ptr in zip(table["sample_id"].tolist(), table["ptr"].tolist()):
        first[sample] = min(first.get(sample, ptr), ptr)
    return np.array([first[i] // int(reader.page_size) for i in range(reader.num_samples)])


def test_two_ranks_stage_once_read_the_page_order_and_evaluate_every_image_once(betons, tmp_path):
    train, val = betons
    stage, out = tmp_path / "stage", tmp_path / "out"
    os.makedirs(out)
    fields = dict(loader="ffcv", train=train, val=val, batch_size=BATCH, random_crop=False, num_classes=N,
                  os_cache=False, shuffle_window=WINDOW, stage_dir=str(stage))
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "tests.data_helpers", json.dumps(fields), str(out)]
    r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=420)
    assert r.returncode == 0, r.stderr[-4000:]
    records = [json.load(open(out / f"rank{rank}.json")) for rank in range(2)]

    # staged once per file by one of the racing ranks; both read the same copies
    assert r.stdout.count("resnext_dist: staging") == 2, r.stdout
    readings = [rec["reading"] for rec in records]
    assert readings[0] == readings[1]
    assert readings[0]["staged"] and readings[0]["order"] == "pages" and readings[0]["window"] == WINDOW
    assert os.path.dirname(readings[0]["train"]) == str(stage) and records[0]["val_path"] == readings[0]["val"]
    assert sorted(os.listdir(stage)) == sorted(os.path.basename(readings[0][s]) + ext for s in ("train", "val")
                                               for ext in ("", ".json"))

    pages = pages_of(readings[0]["train"])
    assert len(set(pages.tolist())) == 8
    flat = lambda batches: [y for batch in batches for y in batch]
    for epoch in (0, 1):
        shards = [flat(rec[f"epoch{epoch}"]) for rec in records]
        assert [len(s) for s in shards] == [150, 150] and not set(shards[0]) & set(shards[1])
        for rank, shard in enumerate(shards):
            assert shard == train_shard(N, seed=7, epoch=epoch, rank=rank, world_size=2, batch_size=BATCH,
                                        pages=pages, window=WINDOW).tolist()
    for rec in records:
        assert rec["epoch1_skip"] == rec["epoch1"][SKIP:]  # resuming mid-epoch on every rank
    seen = sorted(flat(records[0]["val"]) + flat(records[1]["val"]))
    assert seen == list(range(NV)) and all(rec["val_count_all_ranks"] == NV for rec in records)


def test_the_trainer_says_where_it_reads_from_and_reuses_the_staged_copies_on_resume(betons, tmp_path):
    train, val = betons
    run, stage = tmp_path / "run", tmp_path / "stage"
    args = ["data.loader=ffcv", f"data.train={train}", f"data.val={val}", "data.num_workers=1",
            "data.random_crop=false", f"data.stage_dir={stage}", "data.os_cache=false", "model.num_classes=301",
            "data.batch_size=50", "train.epochs=1"]
    first = run_train(run, args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("resnext_dist: staging") == 2
    start = next(r for r in read_log(run / "log.jsonl") if r["kind"] == "start")
    copies = start["reading"]
    assert copies["staged"] and os.path.dirname(copies["train"]) == str(stage) and copies["order"] == "pages"
    assert (f"  reading   {copies['train']}, {copies['val']} (copies staged on this node) | pages, 128-page window "
            "order") in first.stdout
    mtime = os.stat(copies["train"]).st_mtime_ns
    again = run_train(run, [*args[:-1], "train.epochs=2"])  # continues the run: the copies are reused
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resnext_dist: staging" not in again.stdout and os.stat(copies["train"]).st_mtime_ns == mtime
    assert [r["reading"] for r in read_log(run / "log.jsonl") if r["kind"] == "start"] == [copies, copies]


def test_a_stage_dir_too_small_exits_2_naming_it_and_leaves_nothing(betons, tmp_path):
    train, val = betons
    run = tmp_path / "run"
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        r = run_train(run, ["data.loader=ffcv", f"data.train={train}", f"data.val={val}", "model.num_classes=301",
                            f"data.stage_dir={disk}/stage"])
        assert r.returncode == 2, r.stderr[-3000:]
        errors = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("error: ")]
        assert errors == [f"error: data.stage_dir: not enough space in {disk}/stage for train.beton, val.beton: "
                          f"needs {(os.path.getsize(train) + os.path.getsize(val)) / 1e6:.1f} MB, 4.2 MB available"]
        assert os.listdir(disk) == [] and not run.exists()
