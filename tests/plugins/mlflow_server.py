"""pytest plugin: a real `mlflow server` on 127.0.0.1 (sqlite store, artifacts proxied over HTTP).

Fixtures
  mlflow_server          (session)  the URI (http://127.0.0.1:PORT) of one server shared by the whole session.
  mlflow_server_handle   (session)  the `MlflowServer` behind it (its db path, log, ...).
  mlflow_server_factory  (function) `start()` -> a fresh `MlflowServer` of the test's own, which the test may
                                    `stop()` and `start()` again, or `pause()` and `resume()` (outage tests);
                                    stopped at teardown.

A fresh sqlite store needs ~30 s of schema migrations on 2 cores before /health answers, so the session
server is started once; right after it is healthy its still-empty database is copied (sqlite backup API)
to a template, and servers from the factory start from a copy of that template in a few seconds.

Each server runs in a new session (process group) that this plugin creates, and `stop()` signals exactly
that group: the server and the worker processes it forked, nothing else on the machine.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional

import pytest

START_TIMEOUT_S = 180.0  # fresh db on a busy 2-core machine: ~30 s typical, leave room


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """One `mlflow server` process on 127.0.0.1; `start()` / `stop()` may alternate (same port, same db)."""

    def __init__(self, workdir: Path, port: Optional[int] = None, db_template: Optional[Path] = None,
                 command: Optional[List[str]] = None):
        """`command`: the mlflow CLI words to run instead of `server` on our db (e.g. a user's `ui ...` line);
        --host/--port are added."""
        self.command = command
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.db_path = self.workdir / "mlflow.db"
        self.artifacts_dir = self.workdir / "mlartifacts"
        self.log_path = self.workdir / "server.log"
        self.proc: Optional[subprocess.Popen] = None
        self._started_once = False
        if db_template is not None and not self.db_path.exists():
            shutil.copyfile(db_template, self.db_path)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> "MlflowServer":
        try:
            return self._start(timeout)
        except RuntimeError:
            # free_port() cannot reserve the port: someone may have taken it meanwhile. Only a first start
            # may move to another port (a restart must keep the address the clients know).
            if self._started_once or "already in use" not in self.log_tail():
                raise
            self.port = free_port()
            return self._start(timeout)

    def _start(self, timeout: float) -> "MlflowServer":
        assert self.proc is None, "already started"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # The GenAI job runner (a scheduler + 7 huey consumers) is not needed to track training runs and
        # doubles start-up time on 2 cores.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        words = self.command or ["server", "--backend-store-uri", f"sqlite:///{self.db_path}",
                                 "--artifacts-destination", str(self.artifacts_dir)]
        cmd = [sys.executable, "-m", "mlflow", *words, "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1"]  # one worker: 2-core machine, and one process group to stop
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.workdir, start_new_session=True)
        self._wait_healthy(timeout)
        self._started_once = True
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"mlflow server exited during start-up; log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s; log tail:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group (which we created), SIGKILL it if it lingers."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session=True: the group id is our child's pid
        try:
            os.killpg(pgid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        # The group may outlive its leader by a moment (forked workers); make sure none keeps the port.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel but never answered."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def snapshot_db(self, dest: Path) -> Path:
        """Copy the live database consistently (sqlite's online backup), e.g. as a migrated template."""
        src = sqlite3.connect(self.db_path)
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        return Path(dest)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def mlflow_server_handle(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    server = MlflowServer(root / "session").start()
    server.template = server.snapshot_db(root / "template.db")  # migrated, still empty
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_handle) -> str:
    return mlflow_server_handle.uri


@pytest.fixture
def mlflow_server_factory(mlflow_server_handle, tmp_path):
    started = []

    def start(port: Optional[int] = None) -> MlflowServer:
        server = MlflowServer(tmp_path / f"mlflow_server_{len(started)}", port=port,
                              db_template=mlflow_server_handle.template)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


# Reading back what a test logged (shared by the tracking tests)


def client_for(uri):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=uri)


def runs_in(client, experiment):
    from mlflow.entities import ViewType
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
