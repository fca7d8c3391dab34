"""Checkpoint files: atomic writes, what `latest` finds, pruning, strict loads with errors that name things."""
import os

import pytest
import torch

from resnext_dist import checkpoint as ckpt
from resnext_dist.dist import DistInfo
from resnext_dist.models import resnext
from resnext_dist.optim import build_optimizer, build_scheduler
from resnext_dist.config import load_config


def make_state(num_classes=10, layers=(1, 1, 1, 1)):
    cfg = load_config(None, [])
    model = resnext("resnext50_32x4d", num_classes=num_classes, stem="cifar", layers=list(layers), cardinality=2,
                    group_width=4, base_channels=8)
    opt = build_optimizer(model, cfg.optim, 256)
    sched = build_scheduler(opt, cfg.optim, 10, 2)
    return ckpt.TrainState(model, opt, sched, config_yaml="x: 1\n")


def test_save_is_atomic_and_latest_points_at_newest(tmp_path):
    state, dist = make_state(), DistInfo()
    for step in (1, 2, 3, 4):
        state.step = step
        ckpt.save(state, str(tmp_path), keep=2, dist=dist)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_00000003.pt", "step_00000004.pt"]
    assert ckpt.find_latest(str(tmp_path)).endswith("step_00000004.pt")
    assert ckpt.load_file(ckpt.find_latest(str(tmp_path)))["step"] == 4


def test_torn_save_is_invisible_and_previous_checkpoint_loads(tmp_path):
    state, dist = make_state(), DistInfo()
    state.step = 5
    ckpt.save(state, str(tmp_path), keep=3, dist=dist)
    # a save killed half-way leaves only its temporary file (and `latest` still names the old one)
    (tmp_path / ".tmp-step_00000006.pt").write_bytes(b"\x80\x02half a pickle")
    assert ckpt.find_latest(str(tmp_path)).endswith("step_00000005.pt")
    # a `latest` naming a file that is gone falls back to the newest complete file
    (tmp_path / "latest").write_text("step_00000009.pt\n")
    assert ckpt.find_latest(str(tmp_path)).endswith("step_00000005.pt")
    # and the next save simply replaces the leftover
    state.step = 6
    ckpt.save(state, str(tmp_path), keep=3, dist=dist)
    assert ckpt.load_file(str(tmp_path / "step_00000006.pt"))["step"] == 6
    assert not (tmp_path / ".tmp-step_00000006.pt").exists()


def test_empty_dir_has_no_latest(tmp_path):
    assert ckpt.find_latest(str(tmp_path)) is None
    assert ckpt.find_latest(str(tmp_path / "missing")) is None


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
    a.step, a.epoch, a.samples_in_epoch, a.mlflow_run_id = 7, 1, 48, "abc"
    torch.manual_seed(123)
    path = str(tmp_path / "c.pt")
    ckpt.atomic_save(a.state_dict(), path)
    expected_draw = torch.rand(3)
    b = make_state()
    b.load_state_dict(ckpt.load_file(path), path)
    assert (b.step, b.epoch, b.samples_in_epoch, b.mlflow_run_id) == (7, 1, 48, "abc")
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
    assert ckpt.find_latest(str(tmp_path)).endswith("step_00000003.pt")
