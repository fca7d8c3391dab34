"""Throughput benchmarks: `python -m resnext_dist.bench {model,loader,train,scaling,report} ...`.

    model     the ceiling: a bare training step (forward, loss, backward, SGD) on input already on the device
    loader    FFCV vs the torchvision loader vs synthetic on the same images, crop and workers
    train     the real trainer end to end (synthetic, and FFCV input) against the ceiling, in one process
    scaling   1 process vs N (torchrun; gloo on CPU, NCCL on GPUs) at the same per-process batch
    report    several JSON results (--out) as one table

Each bench prints a short table, writes JSON with --out FILE and logs to MLflow with --mlflow URI.
Bad input exits 2 with one line naming it.
"""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "model": "the ceiling: a bare training step on synthetic input on the device",
    "loader": "FFCV vs torchvision vs synthetic loaders on the same images",
    "train": "the trainer end to end against the ceiling measured in the same run",
    "scaling": "1 rank vs N ranks at the same per-rank batch: weak-scaling efficiency",
    "report": "print several JSON results as one table",
}


class BenchError(ValueError):
    """Bad bench input (an option, a file): the message is one line naming it; exit status 2."""


def usage() -> str:
    lines = ["usage: python -m resnext_dist.bench {" + ",".join(SUBCOMMANDS) + "} [options]", ""]
    lines += [f"  {name:<8} {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "`python -m resnext_dist.bench NAME --help` lists a bench's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Dispatch to resnext_dist.bench.<name>.run(rest of argv); the console script `resnext-bench` too."""
    from resnext_dist.errors import InputError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown bench {name!r}; choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"resnext_dist.bench.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"resnext_dist.bench.{name}":
            raise  # a missing dependency of the bench (e.g. ffcv), not a missing bench: show it
        print(f"error: bench {name!r} is not installed in this checkout", file=sys.stderr)
        return 2
    try:
        return int(module.run(rest) or 0)
    except (BenchError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
