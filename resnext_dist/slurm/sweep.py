"""Submit a sweep as one Slurm job array and follow it: `launch/submit.py --config X --sweep KEY=V1,V2 ...`.

    python launch/submit.py --config tiny.yaml --sweep optim.lr=0.05,0.1 --sweep train.seed=0:3 --wait

Every point of the grid (grid.py) is a normal run: its own config (the command's, with the point's values), its
own run directory <run.root>/<sweep name>/<values>, its own element of the job array, requeued alone on a timeout
or a preemption (job.TrainJob), resumable like any run. `slurm.array_parallelism` caps how many run at once.

Order, so that bad input submits nothing: every run's config is loaded and checked (a bad value exits 2 naming the
run), the grid's size against --max-runs, the cluster (checks.py), then the sweep's MLflow parent run is created
(or found: its id is kept in the sweep directory), then one array of the runs that are not DONE is submitted.
--wait follows the elements through requeues (scontrol) and ends with the table; exit 0 only when every run is DONE.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Dict, List, Optional

import submitit

from resnext_dist import tracking
from resnext_dist.config import TrainConfig, find_config, load_config, to_yaml
from resnext_dist.errors import InputError, one_line
from resnext_dist.config.identity import identity_hash
from resnext_dist.run.rundir import check_identity, finished_for, read_config, read_done
from resnext_dist.slurm.checks import check_against_cluster, check_run_dir_free
from resnext_dist.slurm.job import TrainJob
from resnext_dist.slurm.submit import (FINAL_STATES, absolute_paths, check_slurm_config, clean_submit_env,
                                       job_states, make_executor, poll_interval, sbatch_failed, sbatch_script,
                                       state_line)
from resnext_dist.slurm.grid import describe_grid, expand, parse_grid, run_names
from resnext_dist.slurm.report import read_sweep, report, write_sweep


@dataclasses.dataclass
class Sweep:
    name: str
    dir: str
    grid: list
    runs: List[dict]              # {"name", "values", "dir"} in grid order (sweep.json's "runs")
    configs: List[TrainConfig]    # the runs' configs, same order

    def record(self, config: Optional[str], overrides: List[str]) -> dict:
        return {"name": self.name, "grid": self.grid, "config": config, "overrides": overrides, "runs": self.runs}


def plan(config: Optional[str], overrides: List[str], specs: List[str], max_runs: int) -> Sweep:
    """The sweep the command describes; InputError (naming the run, key and value) if any run is bad."""
    base = load_config(config, overrides)
    grid = parse_grid(specs, max_runs)  # too many runs: refused before any is listed
    points = expand(grid)
    name = sweep_name(config, overrides, base, grid)
    sweep_dir = os.path.abspath(os.path.join(base.run.root, name))
    old = read_sweep(sweep_dir)
    if old is not None and [list(g) for g in old.get("grid", [])] != [[k, v] for k, v in grid]:
        raise InputError(f"{sweep_dir} holds a sweep over another grid ({old.get('grid')}); give this one "
                         f"another run.name")
    runs, configs = [], []
    for i, (values, run) in enumerate(zip(points, run_names(points))):
        run_dir = os.path.join(sweep_dir, run)
        extra = [f"{k}={v}" for k, v in values.items()] + [
            f"run.name={run}", f"run.dir={run_dir}", f"slurm.folder={os.path.join(sweep_dir, 'slurm')}"]
        try:
            cfg = absolute_paths(load_config(config, list(overrides) + extra))
            check_slurm_config(cfg)
            # an unfinished run of another config in this directory: refused here, not in the job
            check_identity(cfg, read_config(run_dir))
        except InputError as e:
            raise InputError(f"sweep run {i + 1}/{len(points)} ({run}): {e}") from None
        runs.append({"name": run, "values": values, "dir": run_dir})
        configs.append(cfg)
    return Sweep(name, sweep_dir, grid, runs, configs)


def sweep_name(config: Optional[str], overrides: List[str], base: TrainConfig, grid) -> str:
    """run.name when the command gives one; else <recipe>-sweep-<hash of the base config's identity and the grid>,
    so the same command always finds its sweep again and another grid gets another directory."""
    if any(o.split("=", 1)[0].strip() == "run.name" for o in overrides):
        return base.run.name
    stem = os.path.splitext(os.path.basename(config))[0] if config else "run"
    digest = hashlib.sha256(json.dumps([identity_hash(base), grid]).encode()).hexdigest()[:8]
    return f"{stem}-sweep-{digest}"


def is_done(cfg: TrainConfig) -> bool:
    old = read_config(cfg.run.dir)
    return finished_for(read_done(cfg.run.dir), cfg, old.get("train.epochs") if old else None)


def finish_parent(sweep_dir: str) -> None:
    """Every run DONE: the parent run is FINISHED too (best effort; the children hold the results)."""
    try:
        tracking.finish_sweep(sweep_dir)
    except Exception as e:
        print(f"warning: MLflow parent run not marked FINISHED: {one_line(e, 200)}", file=sys.stderr)


def element_states(records: List[Dict[str, str]]) -> Dict[str, Dict[str, str]]:
    """scontrol's records of an array -> {"<array id>_<index>": record}; a pending remainder ("2-3%2") stands for
    each index it names; a job that is not an array (a sweep of one run to train) is keyed by its own id."""
    out = {}
    for r in records:
        task = r.get("ArrayTaskId")
        if not task:
            out[r.get("JobId", "")] = r
            continue
        for part in task.split("%")[0].split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                out[f"{r.get('ArrayJobId')}_{i}"] = r
    return out


def follow(sweep_dir: str, jobs: Dict[str, str], out=None, poll_s: float = 2.0) -> Dict[str, str]:
    """Follow the elements {run name: job id} through requeues until every one has ended; each run's last Slurm
    state. summary.json/csv are refreshed whenever an element changes state."""
    out, array_id = out or sys.stdout, next(iter(jobs.values())).split("_")[0]
    last: Dict[str, tuple] = {}
    states: Dict[str, str] = {}
    misses, start = 0, time.time()
    while True:
        found = element_states(job_states(array_id))
        misses = 0 if found else misses + 1
        changed = False
        for run, job_id in jobs.items():
            info = found.get(job_id)
            if info is None:
                continue
            seen = (info.get("JobState"), info.get("Restarts", "0"), info.get("Reason"))
            if seen != last.get(run):
                print(f"{run} (job {job_id}): {state_line(info)}", file=out, flush=True)
                last[run], states[run], changed = seen, info.get("JobState", "?"), True
        if changed:
            report(sweep_dir, states)
        if misses > 3 or (found and all(states.get(r) in FINAL_STATES for r in jobs)):
            return states
        time.sleep(poll_interval(start, poll_s))


def main_sweep(args: argparse.Namespace, out=None) -> int:
    """launch/submit.py with --sweep (see resnext_dist/submit.py parse_args)."""
    out = out or sys.stdout
    try:
        config = find_config(args.config) if args.config else None
        if args.print_config:
            print(to_yaml(load_config(config, args.overrides)), end="")
            return 0
        sweep = plan(config, args.overrides, args.sweep, args.max_runs)
        done = [is_done(c) for c in sweep.configs]
        print(f"sweep {sweep.name}: {describe_grid(sweep.grid)} in {sweep.dir}", file=out)
        for i, (run, finished) in enumerate(zip(sweep.runs, done)):
            print(f"  {i + 1:>3}  {run['dir']}" + ("  (DONE: not submitted)" if finished else ""), file=out)
        todo = [i for i, finished in enumerate(done) if not finished]
        first = sweep.configs[todo[0]] if todo else sweep.configs[0]
        array = f"0-{len(todo) - 1}%{min(len(todo), first.slurm.array_parallelism)}" if len(todo) > 1 else ""
        if args.dry_run:
            print(f"\n# one job array of {len(todo)} run(s):\n{sbatch_script(first, array=array)}", file=out)
            return 0
        if todo:
            check_against_cluster(first, sbatch_script(first, array=array))
            check_run_dir_free(first)  # the sweep's folder: a second array of the same sweep would fight the first
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    record = sweep.record(config, args.overrides)
    if not todo:
        write_sweep(sweep.dir, record)
        print(f"every run is DONE; nothing submitted\n\n{report(sweep.dir)[0]}", file=out)
        finish_parent(sweep.dir)
        return 0
    return submit_array(sweep, record, todo, args.wait, out)


def submit_array(sweep: Sweep, record: dict, todo: List[int], wait: bool, out) -> int:
    """Submit the runs `todo` (indices into sweep.runs) as one job array; with `wait`, follow it to the table."""
    first, configs = sweep.configs[todo[0]], sweep.configs
    if first.tracking.enabled:
        try:
            parent = tracking.open_sweep(first, sweep.name, sweep.dir, {k: ",".join(v) for k, v in sweep.grid})
        except Exception as e:
            print(f"error: MLflow parent run: {one_line(e, 300)}; nothing submitted (tracking.enabled=false sweeps "
                  f"without MLflow)", file=sys.stderr)
            return 1
        configs = [dataclasses.replace(c, tracking=dataclasses.replace(c.tracking, parent_run_id=parent))
                   for c in configs]
        print(f"MLflow: parent run {parent} ({first.tracking.experiment})", file=out)
    write_sweep(sweep.dir, record)
    executor = make_executor(first)
    executor.update_parameters(array_parallelism=first.slurm.array_parallelism)
    try:
        with clean_submit_env(), executor.batch():  # one sbatch --array at the end of the block
            jobs = [executor.submit(TrainJob(configs[i])) for i in todo]
    except submitit.core.utils.FailedJobError as e:  # sbatch refused after the checks passed
        print(sbatch_failed(e), file=sys.stderr)
        return 1
    ids = {sweep.runs[i]["name"]: str(job.job_id) for i, job in zip(todo, jobs)}
    array_id = str(jobs[0].job_id).split("_")[0]
    report(sweep.dir)
    # submitit submits a single run as a plain job: logs <id>_0_log.out rather than <id>_<i>_0_log.out
    what, logs = ("job array", f"{array_id}_<i>_0_log.out") if len(todo) > 1 else ("job", f"{array_id}_0_log.out")
    print(f"submitted {what} {array_id}: {len(todo)} run(s), at most {first.slurm.array_parallelism} at once\n"
          f"  logs:     {os.path.join(sweep.dir, 'slurm', logs)}\n"
          f"  follow:   squeue -j {array_id}    python -m resnext_dist.sweep report {sweep.dir}\n"
          f"  cancel:   scancel {array_id}      (checkpoints and stops; submit again to resume)", file=out, flush=True)
    if not wait:
        return 0
    try:
        states = follow(sweep.dir, ids, out)
    except KeyboardInterrupt:
        print(f"\nstopped following job {array_id}; it keeps running (scancel {array_id} stops it)", file=sys.stderr)
        return 130
    text, rows = report(sweep.dir, states)
    print(f"\n{text}", file=out)
    if all(r["state"] == "DONE" for r in rows):
        finish_parent(sweep.dir)
        return 0
    return 1
