"""What runs inside a Slurm job submitted by slurm/submit.py: `TrainJob`, the callable submitit pickles.

Every task of the job runs `TrainJob()`: it takes its rank, world size, local rank and master address from the
Slurm environment through submitit's `TorchDistributedEnvironment` (`export_dist_env`) and runs
`run.trainer.train(cfg)` in-process: no torchrun inside the job (submitit's maintainers advise against
mixing the two). One Slurm task per GPU.

Requeue: Slurm signals the tasks with USR2 `slurm.signal_delay_s` before the time limit (or at preemption).
The trainer's own handler turns the signal into a flag, all ranks agree at the next step boundary, save a
checkpoint, and `train()` raises StopRequested(USR2). `TrainJob` then hands the signal to submitit's
handler, which on global rank 0 tells a timeout from a preemption by elapsed time, counts timeouts
against `slurm.max_num_timeout`, pickles `TrainJob.checkpoint()` (the same config with
checkpoint.resume=auto) and runs `scontrol requeue`. The requeued job resumes from that checkpoint and
continues the same MLflow run (the run id is in the checkpoint). An element of a sweep's job array is such a
job too, requeued alone.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import pickle
import signal
import sys
from typing import Any

import submitit
from submitit.core.utils import UncompletedJobError

from resnext_dist.commandline import exit_without_teardown
from resnext_dist.config import TrainConfig
from resnext_dist.run.signals import StopRequested


class TrainJob(submitit.helpers.Checkpointable):
    """The callable submitit pickles; one instance per job, run by every task of the job."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def __call__(self) -> str:
        env = submitit.JobEnvironment()
        try:
            run_dir = self._train(env)
        except UncompletedJobError as e:  # submitit's verdict on rank 0: timed out too many times
            raise self._out_of_timeouts(env, e) from None
        atexit.register(end_once_result_saved, str(env.paths.result_pickle))
        return run_dir

    def _train(self, env) -> str:
        from resnext_dist.run.trainer import train  # torch: imported in the job only, submitting needs none of it

        export_dist_env(env, gpus=self.cfg.slurm.gpus_per_node > 0)
        # A USR2 that arrives before the trainer installs its handler (startup) goes to submitit's handler
        # directly: it requeues (or raises UncompletedJobError) from wherever this thread is, and the job
        # resumes from the last periodic checkpoint, if any.
        try:
            train(self.cfg)
        except StopRequested as stop:
            print(f"resnext_dist: {stop}", file=sys.stderr, flush=True)
            if stop.signum != signal.SIGUSR2:
                # SIGTERM/SIGINT: cancelled, checkpoint saved, no requeue (exit 143 like the trainer's CLI).
                raise SystemExit(stop.exit_code) from None
            self._requeue(stop)
        return self.cfg.run.dir

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """What submitit requeues: the same job resuming from the newest checkpoint of its run dir."""
        cfg = dataclasses.replace(self.cfg, checkpoint=dataclasses.replace(self.cfg.checkpoint, resume="auto"))
        return submitit.helpers.DelayedSubmission(TrainJob(cfg), *args, **kwargs)

    def _requeue(self, stop: StopRequested) -> None:
        """The trainer saved at a step boundary on every rank; now let submitit requeue (rank 0 only)."""
        handler = submitit_signal_handler()
        if handler is None:
            raise RuntimeError("SIGUSR2 reached the job but submitit's requeue handler is not installed")
        handler(signal.SIGUSR2, None)  # rank 0 requeues and exits in it; on the others it logs and returns
        raise SystemExit(stop.exit_code)  # 140 = "checkpointed, requeue me", no result file: the job is not over

    def _out_of_timeouts(self, env, e: UncompletedJobError) -> UncompletedJobError:
        s = self.cfg.slurm
        return UncompletedJobError(
            f"job {env.job_id} not requeued ({e}): slurm.max_num_timeout={s.max_num_timeout} timeouts of "
            f"slurm.timeout_min={s.timeout_min} used up. The last checkpoint is in "
            f"{os.path.join(self.cfg.run.dir, 'checkpoints')}; submit the same command again to continue "
            f"(checkpoint.resume=auto), with a larger slurm.timeout_min or slurm.max_num_timeout")


def end_once_result_saved(result_pickle: str) -> None:
    """At the exit of a task whose run finished: once submitit has saved the task's success result, end as the
    trainer's CLI ends (commandline.exit_without_teardown), because gloo's native destructors in the interpreter's
    teardown were seen to abort finished ranks with SIGABRT, which Slurm would report as a failed job. Without a
    success result (submitit failed to save it), the interpreter exits as usual, with its error status."""
    try:
        with open(result_pickle, "rb") as f:
            saved = pickle.load(f)[0] == "success"
    except Exception:
        return
    if saved:
        exit_without_teardown(0)


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
        import torch  # only inside the job, like the trainer: the submitting host needs no torch
        torch.set_num_threads(int(cpus))  # not the whole node's cores in each of its tasks
