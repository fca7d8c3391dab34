"""`python -m resnext_dist.tracking ui [RUN_DIR] [--port N]`: the MLflow UI on a run's store, and its link.

The store is the run's (its cursor, else its config.yaml's tracking.uri; with no RUN_DIR the default store of the
current directory, <run.root>/mlflow.db). A local store gets `mlflow server` on 127.0.0.1:N (in a process group of
its own, so a Ctrl-C or SIGTERM here ends it and every worker it forked, and nothing else; server_guard.py ends it
if this command is SIGKILLed); once it answers, the link is printed: the run's own page with RUN_DIR, else its
experiment's runs table. A tracking server is its own UI: its link is printed and nothing is started. Bad input (no
such run directory, a run without tracking, no store, a port in use) is one line and exit 2.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Optional, Tuple

from resnext_dist.config import load_config
from resnext_dist.errors import InputError, one_line
from resnext_dist.tracking.mirror import cursor_file, read_cursor
from resnext_dist.tracking.mlflow_store import (experiment_url, local_artifacts, page_link, resolve_uri, run_url,
                                                ui_address)

START_TIMEOUT_S = 180.0  # a busy 2-core machine: the server's first start imports for tens of seconds


def store_of(run_dir: Optional[str]) -> Tuple[str, Optional[str], str]:
    """(tracking URI, run id or None, experiment name) of `run_dir`, or of the current directory's default store;
    InputError for a directory that is no tracked run, or a local store that does not exist (a server would make
    an empty one)."""
    uri, run_id, experiment = _store_of(run_dir)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        where = "here" if run_dir is None else f"of {run_dir}"
        raise InputError(f"no MLflow store {where}: {uri[len('sqlite:///'):]} does not exist"
                         + (" (give a RUN_DIR)" if run_dir is None else ""))
    return uri, run_id, experiment


def _store_of(run_dir: Optional[str]) -> Tuple[str, Optional[str], str]:
    if run_dir is None:
        cfg = load_config(None)
        return resolve_uri(cfg), None, cfg.tracking.experiment
    if not os.path.isdir(run_dir):
        raise InputError(f"{run_dir}: no such run directory")
    rec, problem = read_cursor(run_dir)
    if rec is not None:
        return rec["tracking_uri"], rec.get("run_id"), rec["experiment"]
    config = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config):
        raise InputError(f"{run_dir}: not a run directory (no config.yaml{', ' + problem if problem else ''})")
    cfg = load_config(config)
    if not cfg.tracking.enabled:
        raise InputError(f"{run_dir}: the run was not tracked (tracking.enabled=false; no {cursor_file(run_dir)})")
    return resolve_uri(cfg), None, cfg.tracking.experiment


def port_problem(port: int) -> Optional[str]:
    """Whether 127.0.0.1:port can be served on (the server's own failure would be a traceback in its log)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a port just left is free
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return f"port {port} is in use or not available ({e.strerror or e}); choose another with --port"
    return None


def local_link(ui: str, run_id: Optional[str], experiment: str) -> str:
    """page_link for the server started here, asked of its REST API: it is ours and needs no credentials, and the
    MLflow client's import would take seconds more."""
    try:
        if run_id:
            got = _get(f"{ui}/api/2.0/mlflow/runs/get?" + urllib.parse.urlencode({"run_id": run_id}))
            return run_url(ui, got["run"]["info"]["experiment_id"], run_id)
        got = _get(f"{ui}/api/2.0/mlflow/experiments/get-by-name?"
                   + urllib.parse.urlencode({"experiment_name": experiment}))
        return experiment_url(ui, got["experiment"]["experiment_id"])
    except (OSError, ValueError, KeyError):  # a run deleted, no experiment yet (404): the address still helps
        return ui


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def serve(uri: str, port: int, log_path: str) -> subprocess.Popen:
    """`mlflow server` on the local store `uri` at 127.0.0.1:port, in its own process group, output to log_path."""
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # GenAI jobs: not needed to browse runs
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--default-artifact-root", local_artifacts(uri) or "./mlruns"]
    return spawn(cmd, log_path, env)


def spawn(cmd: list, log_path: str, env: dict) -> subprocess.Popen:
    """`cmd` under server_guard.py, in a session of its own: ended with all it started when this process stops it
    (stop()) or dies, a SIGKILL included."""
    guard = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server_guard.py")  # run as a file: no imports
    guarded = [sys.executable, guard, str(os.getpid()), *cmd]
    with open(log_path, "ab") as log:
        return subprocess.Popen(guarded, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def wait_ready(proc: subprocess.Popen, ui: str, log_path: str, stopping: list,
               timeout_s: float = START_TIMEOUT_S) -> bool:
    """True once the server answers; False when a signal asked to stop meanwhile; RuntimeError if it exits or
    does not answer in time."""
    deadline = time.monotonic() + timeout_s
    while not stopping:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited at start ({last_line(log_path)})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not answer within {timeout_s:.0f} s ({last_line(log_path)})")
        try:
            with urllib.request.urlopen(f"{ui}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:  # not listening yet
            pass
        time.sleep(0.3)
    return False


def last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else "no output"
    except OSError:
        return "no output"


def stop(proc: subprocess.Popen) -> None:
    """End the server's process group (ours: start_new_session): SIGTERM, then SIGKILL for what lingers (the
    workers it forked may outlive it by a moment)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def ui(run_dir: Optional[str], port: int) -> int:
    """See the module docstring; returns the exit status."""
    try:
        uri, run_id, experiment = store_of(run_dir)
        remote = uri.startswith(("http://", "https://"))
        problem = None if remote else port_problem(port)
        if problem:
            raise InputError(problem)
    except InputError as e:
        print(f"ui: {e}", file=sys.stderr)
        return 2
    address = ui_address(uri, port)
    if remote:
        print(page_link(address, run_id, experiment), flush=True)
        return 0
    stopping = []
    # A signal only marks the stop: the server is ended below, from the main flow, whatever it was doing.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.append(1))
    fd, log_path = tempfile.mkstemp(prefix="mlflow-ui-", suffix=".log")
    os.close(fd)
    proc = serve(uri, port, log_path)
    try:
        if not wait_ready(proc, address, log_path, stopping):
            return 0  # stopped during the start
        print(f"MLflow UI on {uri}: {local_link(address, run_id, experiment)}  (Ctrl-C stops it)", flush=True)
        while not stopping and proc.poll() is None:
            time.sleep(0.2)
        if not stopping:
            print(f"ui: mlflow server ended by itself ({last_line(log_path)})", file=sys.stderr)
            return 1
        return 0
    except RuntimeError as e:
        print(f"ui: {one_line(e)}", file=sys.stderr)
        return 1
    finally:
        stop(proc)
        os.remove(log_path)
