"""The step queues without a host read: the ranks' agreement is read one step late from a host buffer, a
non-finite step is skipped on the device, and the run stops within a step of it with nothing non-finite applied.
One process, the tiny net, in-process (a host read is a Python call we can count)."""
import contextlib
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

from resnext_dist.config import load_config
from resnext_dist.run import faults
from resnext_dist.run import trainer as trainer_mod
from resnext_dist.run.agreement import GRAD, LOSS, LateAgreement
from resnext_dist.run.checkpoint import TrainState
from resnext_dist.run.step import NonFiniteLoss, StepContext, train_step
from tests.tiny import TINY

# What reads a tensor's value on the host: on a GPU each one waits for everything queued before it.
HOST_READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "__format__",
              "__repr__"}


class HostReads(TorchFunctionMode):
    """Records each host read of a tensor with whether LateAgreement.read made it (its host buffer: no wait)."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            late = any(f.name == "read" and f.filename.endswith("agreement.py") for f in traceback.extract_stack())
            self.reads.append((func.__name__, late))
        return func(*args, **(kwargs or {}))


def run_in_process(tmp_path, monkeypatch, overrides, watch=None):
    """Train the tiny config in this process; `watch(trainer, step_in_epoch)` wraps each Trainer.step. Returns
    the Trainer and the exception the run ended with (or None)."""
    seen = {}
    real = trainer_mod.Trainer.step

    def step(self, batches, step_in_epoch, res):
        seen["trainer"] = self
        with (watch(self, step_in_epoch) if watch else contextlib.nullcontext()):
            return real(self, batches, step_in_epoch, res)

    monkeypatch.setattr(trainer_mod.Trainer, "step", step)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = load_config(None, [*TINY, f"run.dir={tmp_path / 'run'}", "train.epochs=1", *overrides])
    try:
        trainer_mod.train(cfg)
        return seen["trainer"], None
    except Exception as e:  # noqa: BLE001 - the test looks at it
        return seen.get("trainer"), e


def test_a_step_between_log_lines_reads_nothing_from_the_device(tmp_path, monkeypatch):
    """train.nan_check on (the default): between two log lines the only host read of a step is the previous
    step's agreement, from its host buffer (on CUDA: pinned, behind an event that has fired); with the EMA on."""
    counts = {}

    @contextlib.contextmanager
    def watch(trainer, step_in_epoch):
        mode = HostReads()
        with mode:
            yield
        counts[step_in_epoch] = mode.reads

    # train.ema_decay on: the EMA's update is in the step too (optim/ema.py)
    run_in_process(tmp_path, monkeypatch, ["train.max_steps=7", "train.log_every_steps=100", "train.ema_decay=0.9"],
                   watch)
    # step 0 logs (the first) and step 6 is the last: both settle (read their own flags at once), so step 1 has
    # nothing in flight; steps 2-5 read their predecessor's, late
    assert [counts[i] for i in range(1, 6)] == [[]] + [[("tolist", True)]] * 4, counts


def test_a_nan_is_never_applied_and_stops_the_run_one_step_later(tmp_path, monkeypatch):
    """No checkpoint or line at step 3: its NaN is skipped on the device and heard of at step 4, named as step 3;
    the weights stay finite and no checkpoint is written."""
    monkeypatch.setattr(faults, "_FAULTS", [("nan", 0, 3, -1)])
    trainer, err = run_in_process(tmp_path, monkeypatch, ["train.max_steps=10", "train.log_every_steps=100"])
    assert isinstance(err, NonFiniteLoss) and "non-finite loss at step 3 " in str(err), err
    assert trainer.state.step == 4  # within a step of it
    assert all(torch.isfinite(p).all() for p in trainer.state.model.parameters())
    assert not (tmp_path / "run" / "checkpoints").exists() or not list((tmp_path / "run" / "checkpoints").iterdir())


def tiny_state(fused: bool):
    from resnext_dist.models import build_model

    torch.manual_seed(0)
    model = build_model(load_config(None, [*TINY, "run.name=t"]).model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=fused)
    return TrainState(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))


def batches(n=2):
    gen = torch.Generator().manual_seed(1)
    return iter([(torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen))
                 for _ in range(n)])


@pytest.mark.parametrize("fused", [True, False], ids=["fused-found-inf", "plain-restored"])
def test_a_non_finite_gradient_is_agreed_and_not_applied(fused):
    """A NaN gradient with a finite loss: flagged as such; the whole update is skipped (weights and momentum as
    before: a fused optimizer through found_inf, a plain one restored); later steps stay skipped."""
    from resnext_dist.dist import DistInfo

    state = tiny_state(fused)
    ctx = StepContext(state.model, DistInfo(0, 0, 1, 1, torch.device("cpu")), contextlib.nullcontext, 1, 8,
                      0.0, 0.0)
    data = batches(3)
    train_step(state, data, ctx, wishes=(0, False))  # a clean first step (momentum buffers exist)
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    hook = next(state.model.parameters()).register_hook(lambda g: g * float("nan"))
    _, _, _, flags = train_step(state, data, ctx, wishes=(0, False))
    hook.remove()
    assert flags.tolist()[LOSS] == 0 and flags.tolist()[GRAD] == 1
    train_step(state, data, ctx, wishes=(0, False))  # clean, but queued before the host heard: skipped too
    for p in state.model.parameters():
        assert torch.isfinite(p).all()
    for k, _ in state.model.named_parameters():
        assert torch.equal(state.model.state_dict()[k], before[k]), k
    agreement = LateAgreement(torch.device("cpu"))
    assert agreement.exchange(flags, 2) is None
    heard = agreement.exchange(None, 3)
    assert heard.step == 2 and heard.bad_grad and not heard.bad_loss and heard.nonfinite
