"""Process-group setup and teardown, and the few collectives the trainer needs.

`init_distributed(cfg.dist)` works in every way the trainer is launched:
  - plain `python -m resnext_dist.train`: one process, no process group (collectives are no-ops);
  - torchrun (single or multi-node): RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
  - srun without torchrun (slurm/train.sbatch, submitit): SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID,
    master = the first node of the job, port derived from the job id (so a requeued job gets a fresh
    rendezvous only if Slurm gives it a new id; MASTER_PORT overrides).
NCCL with cuda:LOCAL_RANK on GPUs, gloo on CPU. Code asks `dist.is_main`, never `rank == 0`.
"""
from __future__ import annotations

import datetime
import os
import random
import subprocess
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as tdist
from torch.distributed.rendezvous import rendezvous


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def read_launcher_env(environ=None) -> dict:
    """rank, world_size, local_rank, local_world_size from torchrun's or Slurm's variables."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, or submitit's TorchDistributedEnvironment
        world = int(env["WORLD_SIZE"])
        return dict(rank=int(env["RANK"]), world_size=world, local_rank=int(env.get("LOCAL_RANK", 0)),
                    local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:  # srun, one task per process
        world = int(env["SLURM_NTASKS"])
        nodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
        return dict(rank=int(env["SLURM_PROCID"]), world_size=world, local_rank=int(env.get("SLURM_LOCALID", 0)),
                    local_world_size=max(1, world // nodes))
    return dict(rank=0, world_size=1, local_rank=0, local_world_size=1)


def _slurm_master(env) -> tuple:
    """(first node of the job, a port derived from the job id) for srun-launched tasks."""
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
    host = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True,
                          text=True).stdout.split()[0]
    return host, str(slurm_master_port(env))


def slurm_master_port(env) -> int:
    """The rendezvous port of a Slurm job, the same on every task: derived from the job id and the restart
    count, so a requeued job never meets the old rendezvous (or its port in TIME_WAIT)."""
    job, restarts = env.get("SLURM_JOB_ID", "0"), env.get("SLURM_RESTART_COUNT", "0")
    return random.Random(f"{job}/{restarts}").randint(20000, 60000)


def init_distributed(cfg) -> DistInfo:
    """Join the process group described by the environment; `cfg` is config.DistConfig."""
    info = read_launcher_env()
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", info["local_rank"] % max(1, torch.cuda.device_count())) if use_cuda \
        else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if info["world_size"] > 1 and not tdist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            os.environ["MASTER_ADDR"], port = _slurm_master(os.environ)
            os.environ.setdefault("MASTER_PORT", port)
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if use_cuda else "gloo")
        # A hung peer must end the job, not stall it forever: every collective times out after timeout_s,
        # and NCCL's watchdog tears the process down (3 = the default "tear down" error handling).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
        timeout = datetime.timedelta(seconds=cfg.timeout_s)
        # torchrun keeps one store across restarts; keys left by the previous attempt (a dead rank's address)
        # would be read by the new one, so each attempt gets its own key prefix.
        store, _, _ = next(rendezvous("env://", info["rank"], info["world_size"], timeout=timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = tdist.PrefixStore(f"resnext_dist/attempt_{attempt}", store)
        tdist.init_process_group(backend, store=store, rank=info["rank"], world_size=info["world_size"],
                                 timeout=timeout)
    return DistInfo(info["rank"], info["local_rank"], info["world_size"], info["local_world_size"], device)


def close_distributed() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum | max | min); returns the tensor. A sync point on GPU if read after."""
    if tdist.is_initialized() and tdist.get_world_size() > 1:
        tdist.all_reduce(tensor, op={"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX,
                                     "min": tdist.ReduceOp.MIN}[op])
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """rank `src`'s object on every rank (pickled; for small things like a run id or a path)."""
    if not (tdist.is_initialized() and tdist.get_world_size() > 1):
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool, device: Optional[torch.device] = None) -> bool:
    """True on every rank if it is True on any rank (one tiny all-reduce: a sync point)."""
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    return bool(all_reduce(t, "max").item())
