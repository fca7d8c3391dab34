"""data/staging.py in one process and with real processes: a copy made once and reused, redone when stale, torn,
recordless or corrupt; a copier SIGKILLed mid-copy blocks nobody and its partial copy is redone; a full target
(a real small tmpfs) is refused naming the directory and sizes, with nothing left; the bar on a terminal."""
import hashlib
import json
import os
import pty
import signal
import subprocess
import sys
import time

import pytest

from resnext_dist.config import load_config
from resnext_dist.data.staging import record_path, stage_files
from resnext_dist.errors import InputError
from tests.data_helpers import data_cfg
from tests.mounts import small_tmpfs
from tests.tiny import REPO, env


def make_file(path, mb: float, seed=0) -> str:
    """A file of `mb` MB of pseudo-random bytes (staging copies bytes; what a .beton holds does not matter here)."""
    block = hashlib.sha256(str(seed).encode()).digest() * (2**20 // 32)
    with open(path, "wb") as f:
        for _ in range(int(mb)):
            f.write(block)
        f.write(block[: int((mb % 1) * 2**20)])
    return str(path)


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def stage(tmp_path, **fields):
    return stage_files(data_cfg(stage_dir=str(tmp_path / "stage"), **fields), ("train", "val"))


def test_copies_once_then_reuses_the_valid_copy(tmp_path, capsys):
    train, val = make_file(tmp_path / "train.beton", 3), make_file(tmp_path / "val.beton", 1, seed=1)
    got = stage(tmp_path, train=train, val=val)
    assert sorted(got) == ["train", "val"] and all(os.path.dirname(p) == str(tmp_path / "stage") for p in got.values())
    assert sha(got["train"]) == sha(train) and sha(got["val"]) == sha(val)
    record = json.load(open(record_path(got["train"])))
    assert (record["source"], record["size"], record["sha256"]) == (train, 3 * 2**20, sha(train))
    assert capsys.readouterr().out.count("resnext_dist: staging") == 2
    mtimes = {p: os.stat(p).st_mtime_ns for p in got.values()}
    assert stage(tmp_path, train=train, val=val) == got  # a resume: the same copies, not copied again
    assert {p: os.stat(p).st_mtime_ns for p in got.values()} == mtimes
    assert "staging" not in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "stage")) == sorted(
        [os.path.basename(p) for p in got.values()] + [os.path.basename(record_path(p)) for p in got.values()])


def test_two_sources_with_one_name_get_two_copies(tmp_path):
    os.makedirs(tmp_path / "a"), os.makedirs(tmp_path / "b")
    a = stage(tmp_path, train=make_file(tmp_path / "a" / "train.beton", 1), val="")["train"]
    b = stage(tmp_path, train=make_file(tmp_path / "b" / "train.beton", 1, seed=2), val="")["train"]
    assert a != b and sha(a) != sha(b)


@pytest.mark.parametrize("fault", ["source changed", "record missing", "copy truncated", "copy corrupted"])
def test_a_stale_or_broken_copy_is_redone(tmp_path, capsys, fault):
    train = make_file(tmp_path / "train.beton", 2)
    copy = stage(tmp_path, train=train, val="")["train"]
    capsys.readouterr()
    if fault == "source changed":
        make_file(train, 2, seed=5)
    elif fault == "record missing":  # a copier killed between the rename and the record
        os.remove(record_path(copy))
    elif fault == "copy truncated":
        os.truncate(copy, 2**20)
    else:  # same size, other bytes: found by the hash of a copy made before this start
        with open(copy, "r+b") as f:
            f.seek(12345)
            f.write(b"\xff\x00\xff")
    assert stage(tmp_path, train=train, val="")["train"] == copy
    assert sha(copy) == sha(train)
    out = capsys.readouterr().out
    assert "resnext_dist: staging" in out
    if fault == "copy corrupted":
        assert "does not match its record (SHA-256)" in out


def test_a_copy_made_before_this_start_is_hashed_again_once(tmp_path, capsys):
    train = make_file(tmp_path / "train.beton", 2)
    copy = stage(tmp_path, train=train, val="")["train"]
    before = json.load(open(record_path(copy)))["verified_at"]
    capsys.readouterr()
    time.sleep(0.01)
    stage(tmp_path, train=train, val="")
    assert json.load(open(record_path(copy)))["verified_at"] > before  # verified by this start, not copied
    assert "resnext_dist: staging" not in capsys.readouterr().out


def test_bad_stage_dirs_exit_2_naming_the_key(tmp_path, monkeypatch):
    train = make_file(tmp_path / "train.beton", 1)
    monkeypatch.delenv("RESNEXT_TEST_UNSET", raising=False)
    with pytest.raises(InputError, match=r"data.stage_dir='\$RESNEXT_TEST_UNSET/x': \$RESNEXT_TEST_UNSET is not set on"):
        stage_files(data_cfg(train=train, stage_dir="$RESNEXT_TEST_UNSET/x"), ("train",))
    monkeypatch.setenv("RESNEXT_TEST_SET", str(tmp_path / "local"))
    got = stage_files(data_cfg(train=train, stage_dir="$RESNEXT_TEST_SET/stage"), ("train",))
    assert got["train"].startswith(str(tmp_path / "local" / "stage") + os.sep)  # expanded on the node
    open(tmp_path / "file", "w").close()
    with pytest.raises(InputError, match=r"data.stage_dir='.*file/x': cannot use"):
        stage_files(data_cfg(train=train, stage_dir=str(tmp_path / "file" / "x")), ("train",))
    with pytest.raises(InputError, match=r"missing.beton: no such file \(data.train; to stage"):
        stage_files(data_cfg(train=str(tmp_path / "missing.beton"), stage_dir=str(tmp_path / "s")), ("train",))
    with pytest.raises(InputError, match=r"data.stage_dir='/x' needs data.loader=ffcv"):
        load_config(None, ["data.loader=torchvision", "data.train=/d", "data.stage_dir=/x"])


def test_a_full_target_is_refused_naming_the_directory_and_sizes_and_nothing_is_left(tmp_path):
    train, val = make_file(tmp_path / "train.beton", 0.75), make_file(tmp_path / "val.beton", 0.5, seed=1)
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        target = os.path.join(disk, "stage")
        with pytest.raises(InputError) as e:  # each fits alone; together they do not: refused before any copy
            stage_files(data_cfg(train=train, val=val, stage_dir=target), ("train", "val"))
        assert str(e.value) == (f"data.stage_dir: not enough space in {target} for train.beton, val.beton: needs "
                                f"1.3 MB, 1.0 MB available")
        assert os.listdir(disk) == []  # the directory it made is gone too
        # A disk that fills during the copy (another writer took the space): the partial copy is removed.
        os.makedirs(target)
        filler = make_file(os.path.join(disk, "filler"), 0.5)
        from resnext_dist.data import staging
        with pytest.raises(InputError, match=r"data.stage_dir: not enough space in .* for train.beton: needs 0.8 MB "
                                             r"\(the disk filled while copying\)"):
            staging._copy(train, os.path.join(target, "train-x.beton"), 3.0, None)
        assert os.listdir(target) == [] and sorted(os.listdir(disk)) == ["filler", "stage"]


COPIER = """
import sys
from resnext_dist.data.staging import stage_files
from tests.data_helpers import data_cfg
print(stage_files(data_cfg(train=sys.argv[1], stage_dir=sys.argv[2]), ("train",))["train"], flush=True)
"""


@pytest.mark.slow
def test_a_copier_killed_mid_copy_blocks_nobody_and_its_partial_copy_is_redone(tmp_path):
    """A copies a 300 MB file, B waits for the lock; A is SIGKILLed mid-copy; B then finds A's partial copy,
    removes it and copies; a later start reuses B's copy."""
    train, stage_dir = make_file(tmp_path / "train.beton", 300), str(tmp_path / "stage")
    cmd = [sys.executable, "-c", COPIER, train, stage_dir]
    a = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    partial = []
    while not partial and time.monotonic() < deadline and a.poll() is None:
        partial = [f for f in os.listdir(stage_dir) if f.endswith(".partial")] if os.path.isdir(stage_dir) else []
        partial = [f for f in partial if os.path.getsize(os.path.join(stage_dir, f)) > 0]
    assert partial, "the copier never started copying"
    b = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # B is blocked on A's lock
    a.send_signal(signal.SIGKILL)
    a.wait()
    assert a.returncode == -signal.SIGKILL
    assert os.path.exists(os.path.join(stage_dir, partial[0]))  # what A left
    out, err = b.communicate(timeout=120)
    assert b.returncode == 0, err
    copy = out.strip().splitlines()[-1]
    assert "resnext_dist: staging" in out and sha(copy) == sha(train)
    assert sorted(os.listdir(stage_dir)) == sorted([os.path.basename(copy), os.path.basename(record_path(copy))])
    again = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "resnext_dist: staging" not in again.stdout


def test_a_bar_shows_on_a_terminal_for_a_slow_copy_only(tmp_path):
    """tqdm on a real terminal (a pty): a copy that outlasts the delay shows a bar; a quick one under the default
    delay (a few seconds) does not."""
    train = make_file(tmp_path / "train.beton", 8)
    for delay, expect_bar in ((0.0, True), (3.0, False)):
        master, slave = pty.openpty()
        with open(slave, "w") as term:
            stage_files(data_cfg(train=train, stage_dir=str(tmp_path / f"stage{delay}")), ("train",),
                        bar_delay_s=delay, bar_file=term)
        os.set_blocking(master, False)
        try:
            shown = os.read(master, 65536).decode(errors="replace")
        except OSError:  # nothing was written to the terminal
            shown = ""
        os.close(master)
        assert ("staging train.beton" in shown and "B/s" in shown) == expect_bar, shown
