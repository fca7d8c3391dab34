"""Submitting one training job through submitit, the submitting host's side: config -> sbatch parameters, checks,
submit, follow (scontrol), describe. The command line is resnext_dist/submit.py; what runs inside the job is
job.py; what the cluster can run, checks.py (before anything is submitted); a sweep, sweep.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import sys
import time
from typing import Any, Dict, List

import submitit
from submitit.core.utils import JobPaths

from resnext_dist.config import TrainConfig, batch_split
from resnext_dist.slurm.checks import check_against_cluster, check_run_dir_free, run, tasks_per_node
from resnext_dist.slurm.job import TrainJob
from resnext_dist.tracking import experiment_link

# Job states after which nothing more happens (squeue/scontrol names); REQUEUED and PREEMPTED with
# PreemptMode=REQUEUE come back as PENDING, so they are not final.
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


def check_slurm_config(cfg: TrainConfig) -> None:
    """What the config checks could not know when it loaded: the job's world size (slurm.nodes x tasks per node)
    must be able to share the global batch. Caught here, not after the job starts; raises InputError."""
    batch_split(cfg, cfg.slurm.nodes * tasks_per_node(cfg.slurm))


def sbatch_parameters(s) -> Dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch names) for config.SlurmConfig `s`."""
    params: Dict[str, Any] = dict(
        job_name=s.job_name, time=s.timeout_min, nodes=s.nodes, ntasks_per_node=tasks_per_node(s),
        cpus_per_task=s.cpus_per_task, signal_delay_s=s.signal_delay_s,
        # submitit's srun lines carry no --cpus-per-task; Slurm >= 22.05 does not pass it on from sbatch.
        srun_args=[f"--cpus-per-task={s.cpus_per_task}"],
    )
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    if s.mem_gb:
        params["mem"] = f"{s.mem_gb}GB"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(s, key):
            params[key] = getattr(s, key)
    if s.exclusive:
        params["exclusive"] = True
    extra = dict(s.additional_parameters or {})
    extra.setdefault("requeue", True)  # the cluster's JobRequeue default may be 0
    params["additional_parameters"] = extra
    return params


def sbatch_script(cfg: TrainConfig, array: str = "") -> str:
    """The sbatch options we ask submitit for, as #SBATCH lines, and the job's command: what --dry-run prints
    and `sbatch --test-only` checks. Written from our own parameters (submitit's rendering is private); the
    script submitit writes (<slurm.folder>/<job id>_submission.sh) holds these options and its own bookkeeping.
    `array`: sbatch's --array value for a sweep ("0-3%2")."""
    params = sbatch_parameters(cfg.slurm)
    log = JobPaths(cfg.slurm.folder)  # submitit's log names: %j (%A_%a in an array) and task %t
    out, err = (str(p).replace("%j", "%A_%a") if array else str(p) for p in (log.stdout, log.stderr))
    own = {"signal_delay_s", "srun_args", "additional_parameters"}
    flags = {k.replace("_", "-"): v for k, v in params.items() if k not in own}
    flags.update({"signal": f"{submitit.JobEnvironment.USR_SIG}@{params['signal_delay_s']}",
                  "output": out.replace("%t", "0"), "error": err.replace("%t", "0"), "open-mode": "append"})
    if array:
        flags["array"] = array
    flags.update(params["additional_parameters"])
    lines = ["#!/bin/bash"] + [f"#SBATCH --{k}" if v is True else f"#SBATCH --{k}={shlex.quote(str(v))}"
                               for k, v in sorted(flags.items())]
    srun = ["srun", "--unbuffered", "--output", out, "--error", err, *params["srun_args"]]
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(cfg.slurm.folder)}"
    return "\n".join(lines + ["", " ".join(shlex.quote(a) for a in srun) + " " + command, ""])


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """run.dir and slurm.folder as absolute paths, so the job finds them whatever its working directory."""
    run_cfg = dataclasses.replace(cfg.run, dir=os.path.abspath(cfg.run.dir), root=os.path.abspath(cfg.run.root))
    folder = os.path.abspath(cfg.slurm.folder)
    return dataclasses.replace(cfg, run=run_cfg, slurm=dataclasses.replace(cfg.slurm, folder=folder))


def make_executor(cfg: TrainConfig) -> submitit.SlurmExecutor:
    executor = submitit.SlurmExecutor(folder=cfg.slurm.folder, max_num_timeout=cfg.slurm.max_num_timeout)
    executor.update_parameters(**sbatch_parameters(cfg.slurm))
    return executor


@contextlib.contextmanager
def clean_submit_env():
    """Variables of an enclosing job (SLURM_*, RANK, ...) would leak into the new one through --export=ALL;
    SLURM_CONF is not the job's but the cluster's address, and sbatch needs it."""
    conf = os.environ.get("SLURM_CONF")
    with submitit.helpers.clean_env():
        if conf:
            os.environ["SLURM_CONF"] = conf
        yield


def submit(cfg: TrainConfig, check_cluster: bool = True) -> submitit.Job:
    """Check the job's world size (and the cluster), then submit one TrainJob; returns submitit's Job (job_id,
    paths). `cfg` comes from load_config, which checked every value."""
    cfg = absolute_paths(cfg)
    check_slurm_config(cfg)
    if check_cluster:
        check_against_cluster(cfg, sbatch_script(cfg))
        check_run_dir_free(cfg)
    executor = make_executor(cfg)
    with clean_submit_env():
        return executor.submit(TrainJob(cfg))


def job_states(job_id: str) -> List[Dict[str, str]]:
    """scontrol's records of a job (JobState, Reason, ExitCode, Restarts, NodeList, ...), one per element for a job
    array ([] once purged)."""
    out = run(["scontrol", "-o", "show", "job", job_id])
    if out.returncode != 0:
        return []
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.stdout.splitlines() if line.strip()]


def wait(job: submitit.Job, out=sys.stdout, poll_s: float = 2.0) -> int:
    """Follow the job (requeues included) until it ends; its exit status (0 = trained to the end).

    Polls scontrol rather than submitit's sacct watcher: sacct needs an accounting database, which small
    clusters (and the dev cluster) lack, and a job that dies without a result file would be waited on forever.
    """
    job_id = str(job.job_id)
    last, info, misses, start = None, {}, 0, time.time()
    while True:
        now = (job_states(job_id) or [{}])[0]
        if not now:  # purged from slurmctld's memory (MinJobAge) or a transient failure: a few tries
            misses += 1
            if misses > 3:
                break
        else:
            misses, info = 0, now
            seen = (info.get("JobState"), info.get("Restarts", "0"), info.get("Reason"))
            if seen != last:
                print(f"job {job_id}: {state_line(info)}", file=out, flush=True)
                last = seen
            if info.get("JobState") in FINAL_STATES:
                break
        time.sleep(poll_interval(start, poll_s))
    return _outcome(job, info, out)


def poll_interval(start: float, poll_s: float) -> float:
    """Often at first (short jobs, tests), then at most every 10 s (scontrol talks to slurmctld)."""
    return poll_s if time.time() - start < 120 else max(poll_s, 10.0)


def state_line(info: Dict[str, str]) -> str:
    state = info.get("JobState", "?")
    where = f" on {info.get('NodeList')}" if state == "RUNNING" else ""
    reason = f" ({info['Reason']})" if info.get("Reason") not in (None, "", "None") else ""
    restarts = int(info.get("Restarts", "0") or 0)
    return f"{state}{where}{reason}" + (f", restart {restarts}" if restarts else "")


def _outcome(job: submitit.Job, info: Dict[str, str], out) -> int:
    state = info.get("JobState", "UNKNOWN")
    code = int((info.get("ExitCode") or "0:0").split(":")[0] or 0)
    failed = []
    for i in range(job.num_tasks):
        path = job.task(i).paths.result_pickle
        if path.exists():
            outcome, payload = submitit.core.utils.pickle_load(path)
            if outcome != "success":
                failed.append((i, payload))
    if state == "COMPLETED" and not failed:
        result = job.task(0).paths.result_pickle
        run_dir = submitit.core.utils.pickle_load(result)[1] if result.exists() else "(no result file)"
        print(f"job {job.job_id}: done: {run_dir}", file=out)
        return 0
    if failed:
        task, trace = failed[0]
        last_line = [ln.strip() for ln in str(trace).splitlines() if ln.strip()][-1:] or ["?"]
        print(f"job {job.job_id}: {state}: task {task} failed: {last_line[0]}", file=out)
    else:
        print(f"job {job.job_id}: {state} (exit code {info.get('ExitCode', '?')})", file=out)
    print(f"  logs: {job.paths.stderr}  {job.paths.stdout}", file=out)
    return code or 1


def describe(job: submitit.Job, cfg: TrainConfig) -> str:
    """What the user needs after submitting: ids, paths, and how to follow the job."""
    stdout = str(job.paths.stdout)
    stderr = str(job.paths.stderr)
    pattern = str(JobPaths(cfg.slurm.folder, job_id=str(job.job_id), task_id=0).stdout)
    return "\n".join([
        f"submitted job {job.job_id} ({job.num_tasks} task(s) on {cfg.slurm.nodes} node(s))",
        f"  run dir:  {cfg.run.dir}",
        f"  logs:     {stdout}",
        f"            {stderr}",
        f"            (task k: {pattern.replace('_0_log', '_<k>_log')})",
        f"  follow:   squeue -j {job.job_id}    tail -f {stdout}    tail -f {os.path.join(cfg.run.dir, 'log.jsonl')}",
        f"  details:  scontrol show job {job.job_id}",
        f"  cancel:   scancel {job.job_id}      (checkpoints and stops; submit again to resume)",
    ] + ([f"  MLflow:   {experiment_link(cfg)}  (run {cfg.run.name})"] if cfg.tracking.enabled else []))


def sbatch_failed(e: Exception) -> str:
    """One line for a refused sbatch: submitit's error holds sbatch's whole output; its last line says why."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"error: sbatch failed: {lines[-1] if lines else e}"
