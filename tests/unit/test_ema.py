"""train.ema_decay (optim/ema.py): torch's AveragedModel EMA, the same values, without a host read per update, and
a checkpoint of it resumes exactly."""
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from resnext_dist.config import load_config
from resnext_dist.models import build_model
from resnext_dist.optim.ema import Ema
from tests.tiny import TINY
from tests.unit.test_step_sync import HostReads


def model_and_steps(n):
    """The tiny net and n training steps of it (weights and BN buffers move, num_batches_tracked included)."""
    torch.manual_seed(0)
    model = build_model(load_config(None, [*TINY, "run.name=t"]).model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    gen = torch.Generator().manual_seed(1)

    def step():
        x, y = torch.randn(4, 3, 16, 16, generator=gen), torch.randint(0, 10, (4,), generator=gen)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, [step] * n


def test_the_ema_equals_torchs_averaged_model_and_resumes_exactly():
    model, steps = model_and_steps(6)
    ours, torchs = Ema(model, 0.9), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for k, step in enumerate(steps):
        step()
        ours.update_parameters(model)
        torchs.update_parameters(model)
        if k == 2:  # a checkpoint of ours mid-way, loaded into a new one (a resume)
            saved = {k: v.clone() for k, v in ours.state_dict().items()}
            resumed = Ema(model, 0.9)
            resumed.load_state_dict(saved)
            assert resumed.count == 3
        if k > 2:
            resumed.update_parameters(model)
    a, b, c = ours.state_dict(), torchs.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() == c.keys()  # its checkpoints are AveragedModel's, key for key
    assert all(torch.allclose(a[k].double(), b[k].double(), rtol=1e-6, atol=1e-7) for k in a)  # to rounding
    assert all(torch.equal(a[k], c[k]) for k in a)  # resumed: bit for bit
    assert int(a["n_averaged"]) == 6 and not torch.equal(a["module.fc.weight"], model.fc.weight)


def test_an_update_reads_nothing_from_the_device():
    model, (step, *_) = model_and_steps(1)
    reads = {}
    for name, ema in (("torch", AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)),
                      ("ours", Ema(model, 0.9))):
        ema.update_parameters(model)  # the first update copies
        step()
        with HostReads() as mode:
            ema.update_parameters(model)
        reads[name] = mode.reads
    assert reads["torch"] and reads["ours"] == []  # the check would catch AveragedModel's own reads
