"""Submit training to Slurm through submitit: `python launch/submit.py --config FILE [key=value ...]`.

    python launch/submit.py --config configs/resnext50_imagenet.yaml slurm.nodes=4 slurm.gpus_per_node=8
    python launch/submit.py --config ... --dry-run      # print the sbatch options and command, submit nothing
    python launch/submit.py --config ... --wait         # follow the job; exit with its status
    python launch/submit.py --config ... --sweep optim.lr=0.05,0.1   # a sweep: one job array

The command line only (also the `resnext-submit` console script); one job is resnext_dist/slurm/submit.py, a sweep
resnext_dist/slurm/sweep.py. Bad input exits 2 with one line before anything is submitted.
"""
from __future__ import annotations

import argparse
import sys

import submitit

from resnext_dist.config import find_config, load_config, to_yaml
from resnext_dist.config.arguments import all_sections, arg_parser
from resnext_dist.errors import InputError
from resnext_dist.slurm.submit import (absolute_paths, check_slurm_config, describe, sbatch_failed, sbatch_script,
                                       submit, wait)
from resnext_dist.slurm.sweep import main_sweep


def parse_args(argv=None) -> argparse.Namespace:
    parser = arg_parser("resnext_dist.submit", "Submit resnext_dist training to Slurm (submitit; one task "
                        "per GPU; requeue on timeout or preemption).",
                        "slurm.nodes=2 slurm.gpus_per_node=8 slurm.partition=gpu", sections=all_sections())
    parser.add_argument("--wait", action="store_true", help="follow the job to its end and exit with its status")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the sbatch options and the job's command (with --sweep: the runs and their "
                             "run directories too), and exit; submit nothing")
    parser.add_argument("--sweep", action="append", metavar="KEY=V1,V2|KEY=A:B", default=[],
                        help="sweep KEY over values, or over the integers A, A+1, ..., B-1 (the end B is excluded, as "
                             "in Python's range); several --sweep make a grid, submitted as one job array in "
                             "<run.root>/<sweep name>/ (run.name, or a name from the recipe and the grid); runs "
                             "already DONE are not submitted again. --wait ends with the table of the runs")
    parser.add_argument("--max-runs", type=int, default=64, metavar="N",
                        help="refuse a sweep of more than N runs (default 64)")
    args, unknown = parser.parse_known_intermixed_args(argv)  # key=value after --sweep too
    if unknown:
        parser.parse_args(argv)  # says what is wrong (an unknown option: the config key it likely meant) and exits 2
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.sweep:
        return main_sweep(args)
    try:
        cfg = absolute_paths(load_config(find_config(args.config) if args.config else None, args.overrides,
                                          data_required=True))
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        if args.dry_run:
            check_slurm_config(cfg)
            print(sbatch_script(cfg))
            return 0
        job = submit(cfg)  # its checks first
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except submitit.core.utils.FailedJobError as e:  # sbatch refused after the checks passed
        print(sbatch_failed(e), file=sys.stderr)
        return 1
    print(describe(job, cfg), flush=True)
    if args.wait:
        try:
            return wait(job)
        except KeyboardInterrupt:
            print(f"\nstopped following job {job.job_id}; it keeps running (scancel {job.job_id} stops it)",
                  file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
