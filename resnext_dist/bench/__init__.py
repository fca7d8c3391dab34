"""Throughput benchmarks: `python -m resnext_dist.bench {model,loader,decode,decode_check,train,scaling,augment,
report} ...`.

Each takes the trainer's own command line for what it measures (`--config RECIPE`, `key=value` overrides:
bench/workload.py) and flags only for what is its own (steps, repeats, loaders, worker counts, device); each
prints a short table, writes JSON with --out FILE and logs to MLflow with --mlflow URI (bench/report.py).
Bad input exits 2 with one line naming it. What each measures: docs/performance.md.
"""
from __future__ import annotations

import importlib
import sys

from resnext_dist.errors import EXIT_BAD_INPUT, InputError

SUBCOMMANDS = {
    "model": "the ceiling: a bare training step on synthetic input on the device",
    "loader": "FFCV vs torchvision vs synthetic loaders on the same images",
    "decode": "host ms per batch of data.decode=gpu's preparation (boxes, decode, crop, resize, normalize)",
    "decode_check": "data.decode=gpu's output while a model trains: equal to itself and to the CPU decode",
    "train": "the trainer end to end against the ceiling measured in the same run",
    "scaling": "1 rank vs N ranks at the same per-rank batch: weak-scaling efficiency",
    "augment": "the training augmentations' cost per batch on the device, each and the V2 set",
    "report": "print several JSON results as one table",
}


def usage() -> str:
    lines = ["usage: python -m resnext_dist.bench {" + ",".join(SUBCOMMANDS) + "} [options] [key=value ...]", ""]
    lines += [f"  {name:<8} {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "`python -m resnext_dist.bench NAME --help` lists a bench's options and the config keys."]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Dispatch to resnext_dist.bench.<name>.run(rest of argv); the console script `resnext-bench` too."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else EXIT_BAD_INPUT
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown bench {name!r}; choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    module = importlib.import_module(f"resnext_dist.bench.{name}")
    try:
        return int(module.run(rest) or 0)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
