"""Submit training to Slurm: `python launch/submit.py --config FILE [key=value ...] [--wait] [--dry-run]`.

A thin CLI over resnext_dist.slurm_submit (also installed as the `resnext-submit` console script).
"""
import sys

from resnext_dist.slurm_submit import main

if __name__ == "__main__":
    sys.exit(main())
