"""Train a ResNeXt: `python -m resnext_dist.train [--config X] [key=value ...]`.

The same command runs as one process (CPU or one GPU), under `torchrun --nproc_per_node=N` (one node or
several), and under `srun` / submitit (one task per GPU). With no --config it trains the embedded default (the
digits quickstart). This module is the command line only and imports nothing heavy until the config is good,
so `--help` and a bad key answer at once; the run itself is `run.trainer.train`.

Exit status: 0 done (also at once when the run is already finished); 2 bad input (config, data, checkpoint,
run directory) with one line naming it, printed once (by rank 0); 128+N after signal N was answered with a
checkpoint (140 = SIGUSR2 "requeue me", 143 = SIGTERM); anything else is a crash with a traceback.
"""
from __future__ import annotations

import sys

from resnext_dist.commandline import exit_without_teardown, launcher_rank
from resnext_dist.config.arguments import arg_parser, load_train_config
from resnext_dist.config import to_yaml
from resnext_dist.errors import EXIT_BAD_INPUT, InputError
from resnext_dist.run.signals import StopRequested


def parse_args(argv=None):
    return arg_parser("resnext_dist.train",
                      "Train a ResNeXt image classifier (single process, torchrun, srun or submitit).",
                      "data.batch_size=128 optim.lr=0.2").parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg, note = load_train_config(args)  # no --config: the embedded default, and a note saying so
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        from resnext_dist.run.trainer import train  # torch comes with the trainer: only once the config is good
        train(cfg, note or "")
    except InputError as e:
        if launcher_rank() == 0:  # every rank meets the same bad input: say it once
            print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except StopRequested as e:
        if launcher_rank() == 0:
            print(f"resnext_dist: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
