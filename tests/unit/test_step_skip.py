"""A non-finite step is skipped exactly (run/step.py's _step_unless, with the optimizers optim/optimizers.py builds):
the parameters, the momentum buffers, the Adam moments and the step counts stay bit for bit as they were; a skipped
first step leaves the optimizer where a fresh one starts. Also for an optimizer without found_inf (the fallback)."""
import copy

import pytest
import torch

from resnext_dist.config import load_config
from resnext_dist.models import build_model
from resnext_dist.optim.optimizers import build_optimizer
from resnext_dist.run.step import _step_unless
from tests.tiny import TINY

OPTIMIZERS = {"sgd": ["optim.optimizer=sgd", "optim.momentum=0.9", "optim.nesterov=true", "optim.weight_decay=0.05"],
              "adamw": ["optim.optimizer=adamw", "optim.weight_decay=0.05"]}


def setup(name):
    cfg = load_config(None, [*TINY, "run.name=t", *OPTIMIZERS.get(name, OPTIMIZERS["sgd"])])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()  # BN's running statistics move in a forward: not the optimizer's
    if name == "plain-sgd":  # no found_inf: the copy-and-restore fallback
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    return model, build_optimizer(model, cfg.optim, 8)


def backward(model, seed, poison=False):
    gen = torch.Generator().manual_seed(seed)
    model.zero_grad(set_to_none=True)
    x, y = torch.randn(4, 3, 16, 16, generator=gen), torch.randint(0, 10, (4,), generator=gen)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    if poison:
        next(model.parameters()).grad[0] = float("nan")


def snapshot(model, optimizer):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


def same(a, b):
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", ["sgd", "adamw", "plain-sgd"])
def test_a_skipped_step_leaves_weights_and_optimizer_state_bit_for_bit(name):
    model, optimizer = setup(name)
    assert getattr(optimizer, "_step_supports_amp_scaling", False) == (name != "plain-sgd")  # fused: found_inf
    for seed in (1, 2):  # two clean steps: momentum buffers, moments and step counts exist and are not trivial
        backward(model, seed)
        _step_unless(optimizer, torch.zeros((), dtype=torch.int32))
    before = snapshot(model, optimizer)
    backward(model, 3, poison=True)
    _step_unless(optimizer, torch.ones((), dtype=torch.int32))
    assert same(snapshot(model, optimizer), before)
    backward(model, 4)  # and a clean step after it moves the weights again
    _step_unless(optimizer, torch.zeros((), dtype=torch.int32))
    assert not same(snapshot(model, optimizer)[0], before[0])


@pytest.mark.parametrize("name", ["sgd", "adamw", "plain-sgd"])
def test_a_skipped_first_step_leaves_the_optimizer_as_a_fresh_one(name):
    """Skipped, then a clean step, equals that clean step alone from the same weights (fused SGD makes its
    momentum buffers uninitialized on a first step and leaves them so when it skips)."""
    skipped, fresh = setup(name), setup(name)
    backward(skipped[0], 3, poison=True)
    _step_unless(skipped[1], torch.ones((), dtype=torch.int32))
    assert same(skipped[0].state_dict(), fresh[0].state_dict())
    for model, optimizer in (skipped, fresh):
        backward(model, 4)
        _step_unless(optimizer, torch.zeros((), dtype=torch.int32))
        backward(model, 5)
        _step_unless(optimizer, torch.zeros((), dtype=torch.int32))
    assert same(snapshot(*skipped), snapshot(*fresh))
