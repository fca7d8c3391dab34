"""One optimizer step of the real `train_step` on this rank's share of a fixed global batch, for the test that it
equals one process with the global batch (tests/integration/test_trainer.py).

    python -m torch.distributed.run --nproc_per_node=3 ... -m tests.step_probe GLOBAL MAX_MICRO OUT_FILE

Every rank builds the tiny net from the same seed and the same 16 random images; rank r takes the micro-batches
data/batches.py gives it, runs one step under DDP (gloo), and rank 0 writes the updated weights to OUT_FILE.
`reference_step` is the same update written out by hand for one process: the mean of the cross-entropy over the
global batch's images, BatchNorm over the same groups.
"""
import contextlib
import sys

import torch
import torch.nn.functional as F

from resnext_dist.config import load_config
from resnext_dist.data.batches import BatchSplit
from resnext_dist.models import build_model

LR = 0.5


def tiny_model():
    from tests.tiny import TINY

    torch.manual_seed(0)
    return build_model(load_config(None, [*TINY, "run.name=probe"]).model)


def global_batch_data(n: int):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 16, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def groups(split: BatchSplit, images, labels):
    """The step's groups in order (group j: micro-step j // world_size of rank j % world_size)."""
    out, at = [], 0
    for size in split.group_sizes:
        out.append((images[at:at + size], labels[at:at + size]))
        at += size
    return out


def reference_step(global_batch: int, max_micro: int, world_size: int) -> dict:
    """One process, by hand, over the groups `world_size` ranks read: the sum of every image's loss / the global
    batch, one backward, one SGD step."""
    model = tiny_model()
    images, labels = global_batch_data(global_batch)
    split = BatchSplit(global_batch, world_size, max_micro)
    loss = sum(F.cross_entropy(model(x), y, reduction="sum") for x, y in groups(split, images, labels)) / global_batch
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    return model.state_dict()


def probe(global_batch: int, max_micro: int, out_file: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from resnext_dist.config import DistConfig
    from resnext_dist.dist import close_distributed, init_distributed
    from resnext_dist.run.checkpoint import TrainState
    from resnext_dist.run.step import StepContext, train_step

    dist = init_distributed(DistConfig(backend="gloo"))
    split = BatchSplit(global_batch, dist.world_size, max_micro)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    state = TrainState(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    mine = groups(split, *global_batch_data(global_batch))[dist.rank::dist.world_size]
    ctx = StepContext(DDP(model) if dist.is_distributed else model, dist, contextlib.nullcontext,
                      split.accum_steps, global_batch, label_smoothing=0.0, grad_clip_norm=0.0)
    train_step(state, iter(mine), ctx, wishes=(0, False))
    if dist.is_main:
        torch.save(model.state_dict(), out_file)
    close_distributed()


if __name__ == "__main__":
    from resnext_dist.commandline import exit_without_teardown

    probe(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
    exit_without_teardown(0)
