"""`python -m resnext_dist.tracking sync RUN_DIR [--uri URI]` | `plot RUN_DIR [RUN_DIR ...] [-o out.png]` |
`ui [RUN_DIR] [--port N]`.

sync: the Tracker's reader run once to the end of log.jsonl (for a run whose server was away), then the artifacts and
the model not sent yet and the final status (FINISHED with a DONE marker, else the one close() recorded, else
KILLED). A cursor that is broken or lost is made anew from log.jsonl (mirror.py). `--uri` sends the run to another
store: a run of its own there, with the whole log, every artifact the run directory holds and, for a finished run,
the model; a second sync to the same URI goes on from where the first stopped.
plot: learning curves (plot.py). Exit 0, or 1 with a one-line error.
ui: the MLflow UI on a run's store and the link to the run (ui.py); exit 2 for bad input.
"""
import argparse
import contextlib
import io
import os
import sys
from typing import Optional

from resnext_dist.config import load_config
from resnext_dist.config.credentials import move_uri_credentials
from resnext_dist.errors import one_line
from resnext_dist.tracking.mirror import (Mirror, cursor_file, new_cursor, read_cursor, run_artifacts, run_start)
from resnext_dist.tracking.mlflow_model import model_request
from resnext_dist.tracking.mlflow_store import config_params, configure_http, local_artifacts, resolve_uri
from resnext_dist.tracking.plot import draw
from resnext_dist.tracking.ui import ui


def sync(run_dir: str, timeout_s: float = 30.0, uri: Optional[str] = None) -> str:
    from mlflow import MlflowClient  # seconds: only for a sync
    run_dir, config = os.path.abspath(run_dir), os.path.join(os.path.abspath(run_dir), "config.yaml")
    cfg = load_config(config) if os.path.isfile(config) else None
    home, problem = read_cursor(run_dir)
    if problem:
        print(f"MLflow cursor {problem}; made anew from log.jsonl", file=sys.stderr)
    elif home is None and uri is None and not (cfg and cfg.tracking.enabled):
        return f"nothing to send: no {cursor_file(run_dir)} (the run was not tracked); --uri URI sends it to a store"
    home_uri = home["tracking_uri"] if home else resolve_uri(cfg) if cfg else None
    target = uri or home_uri
    if target is None:
        return f"nothing to send: no {cursor_file(run_dir)} and no {config}"
    path = cursor_file(run_dir) if target == home_uri else cursor_file(run_dir, target)
    rec, problem = (home, "") if path == cursor_file(run_dir) else read_cursor(run_dir, path)
    if problem:
        print(f"MLflow cursor {problem}; made anew from log.jsonl", file=sys.stderr)
    finished = os.path.exists(os.path.join(run_dir, "DONE"))
    if rec is None:  # none yet for this store, or a broken one: the whole run from its start in log.jsonl
        rec = _anew(run_dir, target, cfg, home, finished)
    configure_http(timeout_s)
    mirror = Mirror(MlflowClient(tracking_uri=target), run_dir, rec, config_params(cfg) if cfg else {}, path)
    mirror.save()
    mirror.setup(reopen=False)
    sent = mirror.send_new()
    status = "FINISHED" if finished else rec.get("status") or "KILLED"
    with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints "View run" links; the answer is ours
        mirror.finish(status)
    return f"sent {sent} metric points to MLflow run {mirror.run_id} ({target}); status {status}"


def _anew(run_dir: str, uri: str, cfg, home: Optional[dict], finished: bool) -> dict:
    """A cursor for the store at `uri` that sends the whole run: its records, every artifact the run directory
    holds and, for a finished run, the model (as the trainer asks for them)."""
    from resnext_dist.weights.layout import EXPORT_DIR, META_FILE  # names only: no torch
    run_id, start = run_start(run_dir, uri)
    export = os.path.join(run_dir, EXPORT_DIR)
    wants_model = finished and cfg is not None and cfg.tracking.log_model and \
        os.path.exists(os.path.join(export, META_FILE))
    res = cfg.data.val_res if cfg is not None else 0
    return new_cursor(
        run_dir, uri, (home or {}).get("experiment") or (cfg.tracking.experiment if cfg else "resnext_dist"),
        cfg.run.name if cfg else os.path.basename(run_dir), run_id, start,
        tags=(home or {}).get("tags") or {"run_dir": run_dir}, artifacts=run_artifacts(run_dir, finished, wants_model),
        constants=(home or {}).get("constants") or ["val_images"], artifact_location=local_artifacts(uri),
        model=model_request(export, (2, 3, res, res)) if wants_model else None)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m resnext_dist.tracking",
                                     description="MLflow sync and learning curves of resnext_dist run directories")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sync", help="send what a run has not sent to MLflow yet, and end its MLflow run")
    p.add_argument("run_dir")
    p.add_argument("--uri", help="send the run to this tracking URI instead (a run of its own there, everything "
                                 "in it); default: the run's own store")
    p.add_argument("--timeout-s", type=float, default=30.0, help="HTTP timeout of one request")
    p = sub.add_parser("plot", help="learning curves of one or several runs, from their log.jsonl")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("-o", "--out", default="curves.png")
    p = sub.add_parser("ui", help="start the MLflow UI on a run's store (default: ./runs/mlflow.db) and print the "
                                  "link to the run; Ctrl-C stops it")
    p.add_argument("run_dir", nargs="?", help="a run directory: its store, and the link to its page")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    return parser


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "ui":
        return ui(args.run_dir, args.port)
    try:
        if args.cmd == "sync":  # credentials in --uri go where MLflow reads them, never into the cursor or the log
            print(sync(args.run_dir, args.timeout_s, move_uri_credentials(args.uri) if args.uri else None))
        else:
            print(draw(args.run_dirs, args.out))
        return 0
    except Exception as e:
        print(f"{args.cmd} failed: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
