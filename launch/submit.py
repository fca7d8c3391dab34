"""Submit training to Slurm: `python launch/submit.py --config FILE [key=value ...] [--wait] [--dry-run]`.

A thin CLI over resnext_dist.submit (also installed as the `resnext-submit` console script).
"""
import sys

from resnext_dist.submit import main

if __name__ == "__main__":
    sys.exit(main())
