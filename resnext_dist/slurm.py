"""Submit training to Slurm through submitit: `python launch/submit.py --config FILE [key=value ...]`.

    python launch/submit.py --config configs/resnext50_imagenet.yaml slurm.nodes=4 slurm.gpus_per_node=8
    python launch/submit.py --config ... --dry-run      # print the sbatch script, submit nothing
    python launch/submit.py --config ... --wait         # follow the job; exit with its status

One Slurm task per GPU (`slurm.tasks_per_node`, default `slurm.gpus_per_node`, or 1 for a CPU job). Each
task takes its rank, world size, local rank and master address from the Slurm environment through
submitit's `TorchDistributedEnvironment` and runs `resnext_dist.train.run(cfg)` in-process: no torchrun
inside the job (submitit's maintainers advise against mixing the two).

Requeue: Slurm signals the tasks with USR2 `slurm.signal_delay_s` before the time limit (or at preemption).
The trainer's own handler turns the signal into a flag, all ranks agree at the next step boundary, save a
checkpoint, and `run()` raises StopRequested(USR2). `TrainJob` then hands the signal to submitit's
handler on global rank 0, which tells a timeout from a preemption by elapsed time, counts timeouts
against `slurm.max_num_timeout`, pickles `TrainJob.checkpoint()` (the same config with
checkpoint.resume=auto) and runs `scontrol requeue`. The requeued job resumes from that checkpoint and
continues the same MLflow run (the run id is in the checkpoint).

Bad input exits 2 with one line before anything is submitted: config errors, and Slurm options the
cluster cannot satisfy (unknown partition, more nodes, CPUs, GPUs or memory than it has), checked with
`sinfo` and `sbatch --test-only` rather than leaving a job pending forever.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import signal
import sys
import time
from typing import Any, Dict

import submitit
from submitit.core.utils import UncompletedJobError

from resnext_dist.cli import all_sections, arg_parser
from resnext_dist.errors import InputError
from resnext_dist.config import TrainConfig, find_config, load_config, to_yaml, validate
from resnext_dist.signals import StopRequested
from resnext_dist.tracking import experiment_link
from resnext_dist.slurm_checks import SlurmOptionError, check_against_cluster, check_run_dir_free, run, \
    tasks_per_node


# Job states after which nothing more happens (squeue/scontrol names); REQUEUED and PREEMPTED with
# PreemptMode=REQUEUE come back as PENDING, so they are not final.
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


# ----------------------------------------------------------------------------------------------
# The job: what every Slurm task runs


class TrainJob(submitit.helpers.Checkpointable):
    """The callable submitit pickles; one instance per job, run by every task of the job."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def __call__(self) -> str:
        env = submitit.JobEnvironment()
        try:
            return self._train(env)
        except UncompletedJobError as e:  # submitit's verdict on rank 0: timed out too many times
            raise self._out_of_timeouts(env, e) from None

    def _train(self, env) -> str:
        from resnext_dist import train  # imported in the job only: submitting needs none of it

        export_dist_env(env, gpus=self.cfg.slurm.gpus_per_node > 0)
        # A USR2 that arrives before the trainer installs its handler (startup) goes to submitit's handler
        # directly: it requeues (or raises UncompletedJobError) from wherever this thread is, and the job
        # resumes from the last periodic checkpoint, if any.
        try:
            train.run(self.cfg)
        except StopRequested as stop:
            print(f"resnext_dist: {stop}", file=sys.stderr, flush=True)
            if stop.signum != signal.SIGUSR2:
                # SIGTERM/SIGINT: cancelled, checkpoint saved, no requeue (exit 143 like the trainer's CLI).
                raise SystemExit(stop.exit_code) from None
            self._requeue(env, stop)
        return self.cfg.run.dir

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """What submitit requeues: the same job resuming from the newest checkpoint of its run dir."""
        cfg = dataclasses.replace(self.cfg, checkpoint=dataclasses.replace(self.cfg.checkpoint, resume="auto"))
        return submitit.helpers.DelayedSubmission(TrainJob(cfg), *args, **kwargs)

    def _requeue(self, env, stop: StopRequested) -> None:
        """The trainer saved at a step boundary on every rank; now let submitit requeue (rank 0 only)."""
        handler = submitit_signal_handler()
        if handler is None:
            raise RuntimeError("SIGUSR2 reached the job but submitit's requeue handler is not installed")
        if env.global_rank != 0:
            handler(signal.SIGUSR2, None)  # logs and returns: only rank 0 requeues
            # No result file from this task: the job is not over. 140 = "checkpointed, requeue me".
            raise SystemExit(stop.exit_code)
        handler(signal.SIGUSR2, None)  # rank 0: checkpoint() -> pickle -> scontrol requeue -> sys.exit
        raise SystemExit(stop.exit_code)  # not reached with submitit's handler; never report success

    def _out_of_timeouts(self, env, e: UncompletedJobError) -> UncompletedJobError:
        s = self.cfg.slurm
        return UncompletedJobError(
            f"job {env.job_id} not requeued ({e}): slurm.max_num_timeout={s.max_num_timeout} timeouts of "
            f"slurm.timeout_min={s.timeout_min} used up. The last checkpoint is in "
            f"{os.path.join(self.cfg.run.dir, 'checkpoints')}; submit the same command again to continue "
            f"(checkpoint.resume=auto), with a larger slurm.timeout_min or slurm.max_num_timeout")


def submitit_signal_handler():
    """submitit's SIGUSR2 handler, whether or not the trainer's StopFlag still sits in front of it."""
    handler = signal.getsignal(signal.SIGUSR2)
    owner = getattr(handler, "__self__", None)
    if owner is not None and hasattr(owner, "previous_handler"):  # a StopFlag that was not restored
        handler = owner.previous_handler(signal.SIGUSR2)
    return handler if callable(handler) else None


def export_dist_env(env, gpus: bool) -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT for env:// from Slurm's variables; one GPU per task."""
    from resnext_dist.dist import slurm_master_port  # torch: only inside the job, not on the submitting host
    os.environ["MASTER_PORT"] = str(slurm_master_port({**os.environ, "SLURM_JOB_ID": str(env.job_id)}))
    # overwrite: RANK, MASTER_ADDR, ... may come from the submitting shell through sbatch's --export=ALL.
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    if gpus:
        # Slurm lists the node's GPUs given to this job (e.g. "4,5,6,7" on a shared node); task k takes the
        # k-th, so each process sees exactly one GPU as cuda:0 (submitit would pick "k", the wrong one here).
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
        local = env.local_rank
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[local] if local < len(visible) else str(local)
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus:
        import torch
        torch.set_num_threads(int(cpus))  # not the whole node's cores in each of its tasks


# ----------------------------------------------------------------------------------------------
# From config to sbatch parameters


def check_slurm_config(cfg: TrainConfig) -> None:
    """Slurm settings that are wrong whatever the cluster; raises SlurmOptionError."""
    s = cfg.slurm
    for key in ("nodes", "cpus_per_task", "timeout_min"):
        if getattr(s, key) < 1:
            raise SlurmOptionError(f"slurm.{key}={getattr(s, key)}: must be >= 1")
    for key in ("mem_gb", "signal_delay_s", "max_num_timeout"):
        if getattr(s, key) < 0:
            raise SlurmOptionError(f"slurm.{key}={getattr(s, key)}: must be >= 0")
    if s.gpus_per_node and s.tasks_per_node and s.tasks_per_node != s.gpus_per_node:
        raise SlurmOptionError(
            f"slurm.tasks_per_node={s.tasks_per_node} with slurm.gpus_per_node={s.gpus_per_node}: jobs run one task "
            "per GPU; leave slurm.tasks_per_node at 0")
    if s.signal_delay_s >= s.timeout_min * 60:
        raise SlurmOptionError(
            f"slurm.signal_delay_s={s.signal_delay_s} is not shorter than slurm.timeout_min={s.timeout_min} minutes")
    if not s.job_name or any(c.isspace() for c in s.job_name):
        raise SlurmOptionError(f"slurm.job_name={s.job_name!r}: must be a non-empty name without spaces")
    if not isinstance(s.additional_parameters, dict):
        raise SlurmOptionError("slurm.additional_parameters: must be a mapping of sbatch option -> value")
    # The global batch must divide over the job's processes: caught here, not after the job starts.
    validate(cfg, world_size=s.nodes * tasks_per_node(s))


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


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """run.dir and slurm.folder as absolute paths, so the job finds them whatever its working directory."""
    run = dataclasses.replace(cfg.run, dir=os.path.abspath(cfg.run.dir), root=os.path.abspath(cfg.run.root))
    folder = os.path.abspath(cfg.slurm.folder)
    return dataclasses.replace(cfg, run=run, slurm=dataclasses.replace(cfg.slurm, folder=folder))


def submitit_command(folder: str) -> str:
    """The job's command line, as submitit writes it (SlurmExecutor._submitit_command_str)."""
    return f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(folder)}"


def sbatch_script(cfg: TrainConfig) -> str:
    """The sbatch script submitit would submit for this config (for --dry-run and --test-only)."""
    from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor writes; pinned submitit

    return _make_sbatch_string(command=submitit_command(cfg.slurm.folder), folder=cfg.slurm.folder,
                               **sbatch_parameters(cfg.slurm))


# ----------------------------------------------------------------------------------------------
# Submitting and following


def make_executor(cfg: TrainConfig) -> submitit.SlurmExecutor:
    executor = submitit.SlurmExecutor(folder=cfg.slurm.folder, max_num_timeout=cfg.slurm.max_num_timeout)
    executor.update_parameters(**sbatch_parameters(cfg.slurm))
    return executor


def submit(cfg: TrainConfig, check_cluster: bool = True) -> submitit.Job:
    """Validate, then submit one TrainJob; returns submitit's Job (job_id, paths)."""
    cfg = absolute_paths(cfg)
    check_slurm_config(cfg)
    if check_cluster:
        check_against_cluster(cfg, sbatch_script(cfg))
        check_run_dir_free(cfg)
    executor = make_executor(cfg)
    # Variables of an enclosing job (SLURM_*, RANK, ...) would leak into the new one through --export=ALL;
    # SLURM_CONF is not the job's but the cluster's address, and sbatch needs it.
    conf = os.environ.get("SLURM_CONF")
    with submitit.helpers.clean_env():
        if conf:
            os.environ["SLURM_CONF"] = conf
        return executor.submit(TrainJob(cfg))


def job_state(job_id: str) -> Dict[str, str]:
    """scontrol's view of the job: JobState, Reason, ExitCode, Restarts, NodeList ({} once purged)."""
    out = run(["scontrol", "-o", "show", "job", job_id])
    if out.returncode != 0:
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def wait(job: submitit.Job, out=sys.stdout, poll_s: float = 2.0) -> int:
    """Follow the job (requeues included) until it ends; its exit status (0 = trained to the end).

    Polls scontrol rather than submitit's sacct watcher: sacct needs an accounting database, which small
    clusters (and the dev cluster) lack, and a job that dies without a result file would be waited on forever.
    """
    job_id = str(job.job_id)
    last, info, misses, start = None, {}, 0, time.time()
    while True:
        now = job_state(job_id)
        if not now:  # purged from slurmctld's memory (MinJobAge) or a transient failure: a few tries
            misses += 1
            if misses > 3:
                break
        else:
            misses, info = 0, now
            seen = (info.get("JobState"), info.get("Restarts", "0"), info.get("Reason"))
            if seen != last:
                print(f"job {job_id}: {_state_line(info)}", file=out, flush=True)
                last = seen
            if info.get("JobState") in FINAL_STATES:
                break
        time.sleep(poll_s if time.time() - start < 120 else max(poll_s, 10.0))
    return _outcome(job, info, out)


def _state_line(info: Dict[str, str]) -> str:
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
    pattern = str(submitit.core.utils.JobPaths(cfg.slurm.folder, job_id=str(job.job_id), task_id=0).stdout)
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


# ----------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None) -> argparse.Namespace:
    parser = arg_parser("resnext_dist.slurm", "Submit resnext_dist training to Slurm (submitit; one task per "
                        "GPU; requeue on timeout or preemption).",
                        "slurm.nodes=2 slurm.gpus_per_node=8 slurm.partition=gpu", sections=all_sections())
    parser.add_argument("--wait", action="store_true", help="follow the job to its end and exit with its status")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script and exit; submit nothing")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = absolute_paths(load_config(find_config(args.config) if args.config else None, args.overrides))
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        check_slurm_config(cfg)
        if args.dry_run:
            print(sbatch_script(cfg))
            return 0
        job = submit(cfg)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except submitit.core.utils.FailedJobError as e:  # sbatch refused after the checks passed
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        print(f"error: sbatch failed: {lines[-1] if lines else e}", file=sys.stderr)
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
