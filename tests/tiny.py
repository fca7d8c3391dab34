"""Shared by the trainer tests: a tiny net on synthetic data, and ways to launch the trainer for real."""
import os
import socket
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable

# A ResNeXt with every stage but ~0.1 M parameters, 16 px synthetic images: a step takes milliseconds on a CPU.
TINY = [
    "model.layers=[1,1,1,1]", "model.cardinality=2", "model.group_width=4", "model.base_channels=8",
    "model.stem=cifar", "model.num_classes=10",
    "data.loader=synthetic", "data.train_res=16", "data.val_res=16", "data.batch_size=8",
    "data.synthetic_size=256", "data.val_synthetic_size=50", "data.num_workers=0",
    "train.precision=fp32", "train.channels_last=false", "train.epochs=2", "train.log_every_steps=2",
    "train.progress_bar=false", "tracking.enabled=false", "checkpoint.every_steps=0",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict:
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    e.pop("RESNEXT_DIST_FAULT", None)
    e.update({k: str(v) for k, v in extra.items()})
    return e


def train_cmd(nproc: int, overrides, extra_torchrun=()) -> list:
    """`python -m resnext_dist.train` for one process, torchrun for several."""
    args = ["-m", "resnext_dist.train", *overrides]
    if nproc == 1 and not extra_torchrun:
        return [PYTHON, *args]
    # --standalone: a c10d rendezvous on a free local port, fresh for every restart attempt
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra_torchrun, *args]


def run_train(run_dir, overrides=(), nproc=1, timeout=300, extra_torchrun=(), **env_extra):
    cmd = train_cmd(nproc, [*TINY, f"run.dir={run_dir}", *overrides], extra_torchrun)
    return subprocess.run(cmd, cwd=REPO, env=env(**env_extra), capture_output=True, text=True, timeout=timeout)


def params(run_dir) -> dict:
    """Learned parameters of a finished run (BN running statistics left out)."""
    from safetensors.torch import load_file
    sd = load_file(os.path.join(run_dir, "export", "model.safetensors"))  # the run's one final-weights file
    return {k: v for k, v in sd.items() if "running_" not in k and "num_batches_tracked" not in k}


def last_checkpoint(run_dir) -> dict:
    from resnext_dist.run.checkpoint import load_file
    from resnext_dist.weights.layout import find_latest
    return load_file(find_latest(os.path.join(run_dir, "checkpoints")))
