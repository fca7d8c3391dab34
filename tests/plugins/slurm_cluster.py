"""pytest plugin: a real local Slurm cluster (munge, slurmctld, two slurmd "nodes") for the test session.

Fixture
  slurm_cluster  (session)  starts slurm/dev-cluster/start.sh in a scratch dir of this session, on free ports,
                            sets SLURM_CONF in os.environ (so sbatch, srun, submitit and the jobs find it),
                            yields a `SlurmCluster` (partition, nodes, cpus_per_node, env, dir, log paths),
                            and runs stop.sh at the end (which cancels leftover jobs first).

The cluster needs root and the Debian packages munge, slurmctld, slurmd, slurm-client (`bash launch/setup.sh
--dev`). Where they are missing the tests that use the fixture are skipped, unless RESNEXT_REQUIRE_SLURM=1
(set it in CI) turns that into a failure.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[2]
DEV = REPO / "slurm" / "dev-cluster"
NEEDED = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel")


@dataclass
class SlurmCluster:
    dir: Path
    partition: str = "debug"
    preempting_partition: str = "urgent"
    nodes: List[str] = field(default_factory=lambda: ["n1", "n2"])
    cpus_per_node: int = 4
    env: Dict[str, str] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.dir / "log"

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        return subprocess.run(list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True,
                              check=check, timeout=timeout)


def _free_port_run(count: int) -> int:
    """The first of `count` consecutive free TCP ports on 127.0.0.1 (slurmctld, then one per slurmd)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count >= 65535:
            continue
        ok = True
        for p in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no run of free ports for the Slurm dev cluster")


def _unavailable() -> str:
    if os.geteuid() != 0:
        return "the Slurm dev cluster needs root"
    missing = [b for b in NEEDED if shutil.which(b) is None]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)}); run: bash launch/setup.sh --dev"
    return ""


@pytest.fixture(scope="session")
def slurm_cluster(request):
    why = _unavailable()
    if why:
        if os.environ.get("RESNEXT_REQUIRE_SLURM") == "1":
            pytest.fail(f"RESNEXT_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    # Not under pytest's tmp dir: munged wants every directory above its socket searchable by all, and
    # /tmp/pytest-of-root is 0700. Short, too: a unix socket path has a 108-byte limit.
    scratch = Path(tempfile.mkdtemp(prefix="resnext-slurm-", dir="/tmp"))
    cluster = SlurmCluster(dir=scratch)
    env = {**os.environ, "RESNEXT_SLURM_DIR": str(scratch), "RESNEXT_SLURM_PORT": str(_free_port_run(3)),
           "RESNEXT_SLURM_CPUS": str(cluster.cpus_per_node)}
    failed_start = False
    started = subprocess.run(["bash", str(DEV / "start.sh")], env=env, capture_output=True, text=True, timeout=180)
    try:
        if started.returncode != 0:
            failed_start = True
            pytest.fail(f"slurm/dev-cluster/start.sh failed:\n{started.stderr}", pytrace=False)
        # stdout is `export SLURM_CONF=...`
        conf = started.stdout.strip().split("=", 1)[1]
        cluster.env = {"SLURM_CONF": conf}
        previous = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = conf
        try:
            yield cluster
        finally:
            if previous is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = previous
    finally:
        # Keep the daemons' logs when something failed; otherwise leave nothing behind.
        keep = failed_start or request.session.testsfailed or os.environ.get("RESNEXT_KEEP_SLURM_DIR") == "1"
        stopped = subprocess.run(["bash", str(DEV / "stop.sh")] + ([] if keep else ["--purge"]), env=env,
                                 capture_output=True, text=True, timeout=180)
        if stopped.returncode != 0:
            print(f"slurm/dev-cluster/stop.sh failed:\n{stopped.stderr}")
        elif keep:
            print(f"Slurm dev cluster logs kept in {scratch / 'log'}")
