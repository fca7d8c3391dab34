"""Slurm through submitit: what runs inside a job (job.py), submitting and following one (submit.py), what the
cluster can run (checks.py), and sweeps as one job array (grid.py: the grid; sweep.py: submit and follow;
report.py: the sweep directory and its table)."""
