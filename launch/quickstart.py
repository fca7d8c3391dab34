"""The quickstart: train a small ResNeXt on scikit-learn's handwritten digits, then show where the run is.

    python launch/quickstart.py [key=value ...]

Makes the embedded digits data once per machine (FFCV .beton, 16x16 RGB, in ~/.cache/resnext_dist or
$RESNEXT_DIST_CACHE: resnext_dist/data/embedded.py), then runs
`torchrun --standalone --nproc_per_node=N -m resnext_dist.train --config configs/quickstart.yaml` with N = the
number of GPUs, or 2 CPU processes without one, and prints the run directory, the command that opens
the MLflow UI on it and the page to open there (the experiment's runs table). Runs are named as the bare command names them (quickstart-<hash of the identity keys>: the
same call continues or finds its finished run) and go to runs/ in the current directory, as the bare command's do.
"""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quickstart.yaml")  # found from any directory; runs/ go to the current one
sys.path.insert(0, REPO)  # the package of this checkout, from any directory


def load(overrides):
    """The run's config, as the trainer will load it (fail fast, before any process starts); InputError."""
    from resnext_dist.config import load_config
    return load_config(CONFIG, overrides)


def main(argv=None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    from resnext_dist.data.embedded import ensure_digits
    ensure_digits()  # here, once, before the processes start (the trainer would otherwise make it on first use)

    import torch
    from resnext_dist.errors import InputError
    from resnext_dist.tracking import browse_hint, runs_table

    try:
        cfg = load(overrides)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    nproc = torch.cuda.device_count() or 2
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (REPO, env.get("PYTHONPATH"))))  # the trainers import this checkout
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // nproc)))  # no oversubscription
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "resnext_dist.train", "--config", CONFIG, *overrides]
    print("+ " + " ".join(cmd[1:]), flush=True)
    code = subprocess.call(cmd, env=env)
    print(f"\nrun directory: {os.path.abspath(cfg.run.dir)}  (config.yaml, log.jsonl, checkpoints/)")
    if cfg.tracking.enabled:
        print(f"browse the runs: {browse_hint(cfg, os.path.abspath(sys.executable), runs_table(cfg))}")
    return code


if __name__ == "__main__":
    sys.exit(main())
