"""Checkpoint files: atomic writes, what `latest` finds, pruning, strict loads with errors that name things."""
import os
import shutil

import pytest
import torch

from resnext_dist.run import checkpoint as ckpt
from resnext_dist.weights import layout
from resnext_dist.dist import DistInfo
from resnext_dist.models import resnext
from resnext_dist.optim import build_optimizer, build_scheduler
from resnext_dist.config import load_config, to_yaml
from resnext_dist.config.identity import identity_hash
from resnext_dist.weights.safe_load import MESSAGE_LIMIT


def run_cfg(*overrides, num_classes=10):
    """The config of the run whose checkpoints make_state writes (checkpoint.resume and others on top)."""
    return load_config(None, [f"model.num_classes={num_classes}", "model.stem=cifar", *overrides])


def make_state(num_classes=10, layers=(1, 1, 1, 1), cfg=None):
    cfg = cfg or run_cfg(num_classes=num_classes)
    model = resnext("resnext50_32x4d", num_classes=num_classes, stem="cifar", layers=list(layers), cardinality=2,
                    group_width=4, base_channels=8)
    opt = build_optimizer(model, cfg.optim, 256)
    sched = build_scheduler(opt, cfg.optim, 10, 2)
    return ckpt.TrainState(model, opt, sched, config_yaml=to_yaml(cfg), identity=identity_hash(cfg))


def choose(resume, ckpt_dir, skipped=None, cfg=None):
    cfg = cfg or run_cfg()
    cfg.checkpoint.resume = str(resume)  # set past the config's own check (which wants an existing file)
    return ckpt.choose_resume(cfg, str(ckpt_dir), DistInfo(), skipped)


def test_save_is_atomic_and_latest_points_at_newest(tmp_path):
    state, dist = make_state(), DistInfo()
    for step in (1, 2, 3, 4):
        state.step = step
        ckpt.save(state, str(tmp_path), keep=2, dist=dist)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_00000003.pt", "step_00000004.pt"]
    assert layout.find_latest(str(tmp_path)).endswith("step_00000004.pt")
    assert ckpt.load_file(layout.find_latest(str(tmp_path)))["step"] == 4


def test_torn_save_is_invisible_and_previous_checkpoint_loads(tmp_path):
    state, dist = make_state(), DistInfo()
    state.step = 5
    ckpt.save(state, str(tmp_path), keep=3, dist=dist)
    # a save killed half-way leaves only its temporary file (and `latest` still names the old one)
    (tmp_path / ".tmp-step_00000006.pt").write_bytes(b"\x80\x02half a pickle")
    assert layout.find_latest(str(tmp_path)).endswith("step_00000005.pt")
    # a `latest` naming a file that is gone falls back to the newest complete file
    (tmp_path / "latest").write_text("step_00000009.pt\n")
    assert layout.find_latest(str(tmp_path)).endswith("step_00000005.pt")
    # and the next save simply replaces the leftover
    state.step = 6
    ckpt.save(state, str(tmp_path), keep=3, dist=dist)
    assert ckpt.load_file(str(tmp_path / "step_00000006.pt"))["step"] == 6
    assert not (tmp_path / ".tmp-step_00000006.pt").exists()


def test_empty_dir_has_no_latest(tmp_path):
    assert layout.find_latest(str(tmp_path)) is None
    assert layout.find_latest(str(tmp_path / "missing")) is None


def test_truncated_file_is_a_clear_error(tmp_path):
    state = make_state()
    path = tmp_path / "step_00000001.pt"
    ckpt.atomic_save(state.state_dict(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match=r"step_00000001.pt: unreadable checkpoint"):
        ckpt.load_file(str(path))
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(ckpt.CheckpointError, match="not a resnext_dist checkpoint"):
        ckpt.load_file(str(other))


def test_mismatched_model_names_the_keys_and_loads_nothing(tmp_path):
    saved = make_state(num_classes=10)
    path = str(tmp_path / "c.pt")
    ckpt.atomic_save(saved.state_dict(), path)
    target = make_state(num_classes=7)
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    with pytest.raises(ckpt.CheckpointError, match=r"c.pt: model does not match.*shape mismatch: fc.weight \(10, \d+\) vs \(7, \d+\)"):
        target.load_state_dict(ckpt.load_file(path), path)
    assert all(torch.equal(before[k], v) for k, v in target.model.state_dict().items())  # nothing partial
    deeper = make_state(layers=(1, 2, 1, 1))
    with pytest.raises(ckpt.CheckpointError, match=r"missing: layer2.1"):
        deeper.load_state_dict(ckpt.load_file(path), path)


def test_round_trip_restores_everything(tmp_path):
    a = make_state()
    x = torch.randn(4, 3, 16, 16)
    a.model(x).sum().backward()
    a.optimizer.step()
    a.scheduler.step()
    a.step, a.epoch, a.samples_in_epoch, a.tracker = 7, 1, 48, {"mlflow_run_id": "abc"}
    torch.manual_seed(123)
    path = str(tmp_path / "c.pt")
    ckpt.atomic_save(a.state_dict(), path)
    expected_draw = torch.rand(3)
    b = make_state()
    b.load_state_dict(ckpt.load_file(path), path)
    assert (b.step, b.epoch, b.samples_in_epoch, b.tracker) == (7, 1, 48, {"mlflow_run_id": "abc"})
    assert torch.equal(torch.rand(3), expected_draw)  # RNG state restored
    assert b.scheduler.state_dict()["last_epoch"] == a.scheduler.state_dict()["last_epoch"]
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sa)


def test_failed_delete_during_pruning_does_not_stop_saving(tmp_path, monkeypatch):
    state, dist = make_state(), DistInfo()
    real_remove = os.remove

    def flaky_remove(path):
        if os.path.basename(path).startswith("step_"):
            raise PermissionError("simulated")
        return real_remove(path)

    monkeypatch.setattr(os, "remove", flaky_remove)
    for step in (1, 2, 3):
        state.step = step
        ckpt.save(state, str(tmp_path), keep=1, dist=dist)
    assert layout.find_latest(str(tmp_path)).endswith("step_00000003.pt")


# ----------------------------------------------------------------------------------------------
# Nothing loaded can run code


class RunsCode:
    """A pickle that runs a command when unpickled (what an attacker drops into a run directory)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted(path, marker, legacy):
    import pickle

    payload = {"model": RunsCode(marker), "step": 1}
    if legacy:  # a bare pickle, as `pickle.dump` writes it
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:  # the zip container torch.save writes
        torch.save(payload, path)


def test_checkpoint_holds_only_plain_values_and_loads_weights_only(tmp_path):
    state = make_state()
    state.extra = {"global_batch_size": 8, "world_size": 1}
    path = str(tmp_path / "c.pt")
    ckpt.atomic_save(state.state_dict(), path)
    sd = torch.load(path, map_location="cpu", weights_only=True)  # raises if anything needs a full unpickle
    assert sd["format"] == ckpt.FORMAT and sd["global_batch_size"] == 8
    assert isinstance(sd["rng"]["python"]["state"], list) and torch.is_tensor(sd["rng"]["numpy"]["keys"])


@pytest.mark.parametrize("legacy", [True, False], ids=["pickle", "torch.save"])
def test_crafted_pickle_is_refused_and_never_run(tmp_path, legacy):
    marker = tmp_path / "PWNED"
    path = tmp_path / "step_00000009.pt"
    crafted(path, marker, legacy)
    with pytest.raises(ckpt.UnsafeCheckpoint, match=rf"^{path}: refused: .*can run code"):
        ckpt.load_file(str(path))
    # auto-resume does not skip past it as if it were merely torn: it names it, on every rank
    with pytest.raises(ckpt.UnsafeCheckpoint, match=str(path)):
        choose("auto", tmp_path)
    with pytest.raises(ckpt.UnsafeCheckpoint, match=str(path)):
        choose(str(path), tmp_path / "elsewhere")
    assert not marker.exists()


def test_older_checkpoint_format_is_named(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"model": {}, "step": 3}, path)
    with pytest.raises(ckpt.CheckpointError, match=r"old.pt: checkpoint format 1"):
        ckpt.load_file(str(path))


# ----------------------------------------------------------------------------------------------
# Which checkpoint to resume


def save_at(state, folder, step, keep=10):
    os.makedirs(folder, exist_ok=True)
    state.step = step
    return ckpt.save(state, str(folder), keep=keep, dist=DistInfo())


def test_choose_resume_skips_a_torn_newest_file_for_the_newest_valid_one(tmp_path):
    state = make_state()
    save_at(state, tmp_path, 3)
    good = save_at(state, tmp_path, 4)
    torn = save_at(state, tmp_path, 5)
    data = open(torn, "rb").read()
    open(torn, "wb").write(data[: len(data) // 2])  # `latest` names it: a disk that lost the tail
    garbage = tmp_path / "step_00000006.pt"
    garbage.write_bytes(b"PK\x03\x04" + b"\x00" * 50)  # a zip header, then nothing
    skipped = []
    assert choose("auto", tmp_path, skipped) == good
    # `latest`'s first, then newest first; above `latest`'s step (no save of this trajectory wrote it): last
    assert [p for p, _ in skipped] == [torn]
    reason = skipped[0][1]
    assert reason.startswith(f"{torn}: unreadable checkpoint (RuntimeError: ") and reason.endswith(".)"), reason
    assert choose("never", tmp_path) is None
    assert choose("auto", tmp_path / "none") is None
    for path in ckpt.list_checkpoints(str(tmp_path)):  # checkpoints, none readable: not a fresh start
        open(path, "wb").write(b"PK\x03\x04" + b"\x00" * 50)
    with pytest.raises(ckpt.CheckpointError, match=rf"{torn}: unreadable .*; nor are 3 older ones in {tmp_path}$"):
        choose("auto", tmp_path)


def test_choose_resume_of_an_explicit_path_must_read(tmp_path):
    state = make_state()
    path = save_at(state, tmp_path, 2)
    assert choose(path, tmp_path / "other") == path
    with pytest.raises(ckpt.CheckpointError, match=r"missing.pt: no such checkpoint file"):
        choose(str(tmp_path / "missing.pt"), tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:100])  # torn: an explicit path is not replaced by another file
    with pytest.raises(ckpt.CheckpointError, match=r"unreadable checkpoint"):
        choose(path, tmp_path)


def test_long_foreign_errors_end_at_a_sentence(tmp_path):
    path = tmp_path / "step_00000001.pt"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)  # looks like a zip, is not one
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_file(str(path))
    message = str(info.value)
    assert "\n" not in message and message.endswith(".)"), message
    assert len(message) < len(str(path)) + MESSAGE_LIMIT + 60


# ----------------------------------------------------------------------------------------------
# When to save


def test_checkpointer_saves_on_the_step_count_and_never_twice_for_one_state(tmp_path):
    state = make_state()
    saver = ckpt.Checkpointer(state, str(tmp_path), keep=10, every_steps=2, dist=DistInfo())
    assert saver.save() is None and saver.last_saved_step == 0  # the starting state needs no file
    written = []
    for step in range(1, 6):
        state.step, state.samples_in_epoch = step, step * 8
        written.append(saver.after_step())
    assert [w is not None for w in written] == [False, True, False, True, False]
    assert saver.last_saved_step == 4
    assert saver.save().endswith("step_00000005.pt")  # a stop at step 5
    assert saver.save() is None  # ... and the final save right after it writes nothing more
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path))] == \
        ["step_00000002.pt", "step_00000004.pt", "step_00000005.pt"]


def test_epoch_end_save_is_written_even_when_the_step_count_saved_that_step(tmp_path):
    state = make_state()
    saver = ckpt.Checkpointer(state, str(tmp_path), keep=10, every_steps=4, dist=DistInfo())
    state.step, state.samples_in_epoch = 4, 32  # the epoch's last step, also a step-count save
    assert saver.after_step()
    assert ckpt.load_file(saver.last_saved_path)["epoch"] == 0
    state.epoch, state.samples_in_epoch = 1, 0  # the epoch ends: evaluated, counter advanced
    path = saver.save()
    assert path is not None and path == saver.last_saved_path
    sd = ckpt.load_file(path)
    assert (sd["step"], sd["epoch"], sd["samples_in_epoch"]) == (4, 1, 0)  # a resume starts epoch 1


def test_a_format_1_checkpoint_with_numpy_rng_state_is_refused_and_explained(tmp_path):
    import numpy as np

    path = tmp_path / "step_00000004.pt"
    torch.save({"model": {}, "step": 4, "rng": {"numpy": np.random.get_state()}}, path)  # what format 1 held
    with pytest.raises(ckpt.UnsafeCheckpoint, match=r"it names numpy.*before checkpoint format 2$"):
        ckpt.load_file(str(path))


# ----------------------------------------------------------------------------------------------
# Lineage: only this run's own checkpoints are resumed (issue 25)


def test_a_checkpoint_records_the_run_identity_its_step_and_the_one_it_continued_from(tmp_path):
    cfg = run_cfg()
    state = make_state(cfg=cfg)
    first, second = save_at(state, tmp_path, 2), save_at(state, tmp_path, 4)
    assert ckpt.load_file(first)["lineage"] == {"identity": identity_hash(cfg), "step": 2, "parent": None}
    assert ckpt.load_file(second)["lineage"] == {"identity": identity_hash(cfg), "step": 4,
                                                 "parent": {"name": "step_00000002.pt", "step": 2}}


def test_a_link_out_of_the_checkpoints_folder_is_skipped_even_when_latest_names_it(tmp_path):
    own, other = tmp_path / "run" / "checkpoints", tmp_path / "other" / "checkpoints"
    good = save_at(make_state(), own, 4)
    foreign = save_at(make_state(), other, 8)  # same identity even: a file of another run directory
    os.symlink(foreign, own / "step_00000008.pt")
    (own / "latest").write_text("step_00000008.pt\n")
    skipped = []
    assert choose("auto", own, skipped) == good
    assert skipped == [(str(own / "step_00000008.pt"), f"{own / 'step_00000008.pt'}: a link out of {own} "
                                                       f"(to {foreign})")]


def test_a_step_that_disagrees_with_the_file_name_is_skipped_or_refused(tmp_path):
    state = make_state()
    good = save_at(state, tmp_path, 4)
    renamed = tmp_path / "step_00000150.pt"
    shutil.copy(save_at(state, tmp_path / "x", 89), renamed)  # step 89, named 150
    (tmp_path / "latest").write_text("step_00000150.pt\n")
    skipped = []
    assert choose("auto", tmp_path, skipped) == good
    assert skipped == [(str(renamed), f"{renamed}: holds step 89, its name says 150: not the file this run saved "
                                      f"under that name")]
    with pytest.raises(ckpt.CheckpointError, match=r"holds step 89, its name says 150"):
        choose(str(renamed), tmp_path)


@pytest.mark.parametrize("change", ["optim.lr=0.5", "data.train_res=160"], ids=["lr", "train_res"])
def test_a_checkpoint_of_another_run_is_skipped_or_refused_naming_the_difference(tmp_path, change):
    good = save_at(make_state(), tmp_path, 4)
    theirs = save_at(make_state(cfg=run_cfg(change)), tmp_path / "theirs", 12)
    planted = tmp_path / "step_00000012.pt"
    shutil.copy(theirs, planted)
    (tmp_path / "latest").write_text("step_00000012.pt\n")
    key, value = change.split("=")
    default = str(ckpt.load_file(good)["config"]).split(key.split(".")[1] + ": ")[1].split("\n")[0]
    skipped = []
    assert choose("auto", tmp_path, skipped) == good
    assert [p for p, _ in skipped] == [str(planted)]
    assert skipped[0][1].startswith(f"{planted}: a checkpoint of another run ({key}: {value} there, {default} here)")
    with pytest.raises(ckpt.CheckpointError, match=rf"another run \({key}: .* model.init={theirs} with "
                                                       rf"checkpoint.resume=never$"):
        choose(theirs, tmp_path)


@pytest.mark.parametrize("where", [0.02, 0.3, 0.5, 0.9, 0.999], ids=["head", "30%", "middle", "90%", "tail"])
def test_corruption_anywhere_in_the_newest_checkpoint_falls_back_to_the_previous_valid_one(tmp_path, where):
    state = make_state()
    previous = save_at(state, tmp_path, 4)
    newest = save_at(state, tmp_path, 8)
    size = os.path.getsize(newest)
    with open(newest, "r+b") as f:  # a disk that lost a block: zeros, the file's length unchanged
        f.seek(min(int(size * where), size - 512))
        f.write(b"\0" * 512)
    skipped = []
    assert choose("auto", tmp_path, skipped) == previous
    assert [p for p, _ in skipped] == [newest] and skipped[0][1].startswith(f"{newest}: ")
    with pytest.raises(ckpt.CheckpointError, match=rf"^{newest}: (corrupt|unreadable)"):
        choose(newest, tmp_path)


def test_a_fifo_in_the_checkpoints_folder_is_skipped_without_being_opened(tmp_path):
    good = save_at(make_state(), tmp_path, 4)
    os.mkfifo(tmp_path / "step_00000009.pt")  # nobody writes to it: an open for reading would block forever
    (tmp_path / "latest").write_text("step_00000009.pt\n")
    skipped = []
    assert choose("auto", tmp_path, skipped) == good
    assert skipped == [(str(tmp_path / "step_00000009.pt"), f"{tmp_path / 'step_00000009.pt'}: a FIFO, not a regular "
                                                            f"file; expected a checkpoint")]


def test_a_branch_moves_the_abandoned_later_checkpoints_aside_and_latest_names_its_start(tmp_path):
    state = make_state()
    for step in (10, 20, 30, 40):
        save_at(state, tmp_path, step)
    start = str(tmp_path / "step_00000020.pt")
    moved, folder = ckpt.branch(start, 20, str(tmp_path))
    assert moved == ["step_00000030.pt", "step_00000040.pt"]
    assert sorted(os.listdir(folder)) == moved and os.path.dirname(folder) == str(tmp_path)
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path))] == ["step_00000010.pt",
                                                                                   "step_00000020.pt"]
    assert (tmp_path / "latest").read_text() == "step_00000020.pt\n"
    # the branch saves, crashes, and a plain resume follows it: its own newest, not the abandoned step 40
    state.step = 20
    save_at(state, tmp_path, 25)
    assert choose("auto", tmp_path) == str(tmp_path / "step_00000025.pt")
    # a fresh start over the run directory (resume=never) leaves every checkpoint behind
    moved, folder = ckpt.branch(None, 0, str(tmp_path))
    assert moved == ["step_00000010.pt", "step_00000020.pt", "step_00000025.pt"] and not (tmp_path / "latest").exists()
    assert ckpt.list_checkpoints(str(tmp_path)) == [] and choose("auto", tmp_path) is None
    assert ckpt.branch(None, 0, str(tmp_path)) == ([], "")


def test_pruning_keeps_the_branch_saves_whatever_higher_numbered_files_lie_beside_them(tmp_path):
    state = make_state()
    stray = save_at(state, tmp_path / "elsewhere", 99)
    os.makedirs(tmp_path / "ckpts")
    shutil.copy(stray, tmp_path / "ckpts" / "step_00000099.pt")
    for step in (1, 2, 3):
        save_at(state, tmp_path / "ckpts", step, keep=1)
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path / "ckpts"))] == \
        ["step_00000003.pt", "step_00000099.pt"]
    assert (tmp_path / "ckpts" / "latest").read_text() == "step_00000003.pt\n"
    assert choose("auto", tmp_path / "ckpts") == str(tmp_path / "ckpts" / "step_00000003.pt")


def test_latest_is_a_name_of_ours_or_nothing(tmp_path):
    state = make_state()
    save_at(state, tmp_path, 3)
    newest = save_at(state, tmp_path, 5)
    for content in ("../../etc/passwd\n", "/abs/step_00000003.pt\n", "step_3.pt\n", "\0" * 300):
        (tmp_path / "latest").write_text(content)
        assert layout.find_latest(str(tmp_path)) == newest, content
