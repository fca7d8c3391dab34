"""`python -m resnext_dist.sweep report SWEEP_DIR`: the runs of a sweep (launch/submit.py --sweep), best val top-1
first, from the run directories alone (no MLflow, no Slurm); refreshes the sweep's summary.json and summary.csv.
The sweep itself: resnext_dist/slurm/ (grid.py, sweep.py, report.py).
"""
from __future__ import annotations

import argparse
import sys

from resnext_dist.errors import InputError
from resnext_dist.slurm.report import report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnext_dist.sweep",
                                     description="The runs of a sweep (launch/submit.py --sweep), best val top-1 "
                                                 "first; refreshes the sweep's summary.json and summary.csv")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("report", help="print the table of a sweep's runs").add_argument("sweep_dir")
    args = parser.parse_args(argv)
    try:
        text, _ = report(args.sweep_dir)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
