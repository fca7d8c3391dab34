"""`python -m resnext_dist.tracking sync RUN_DIR` | `plot RUN_DIR [RUN_DIR ...] [-o out.png]`.

sync: the Tracker's reader run once to the end of log.jsonl (for a run whose server was away), then the artifacts
not sent yet and the final status (the one close() recorded, else FINISHED with a DONE marker, else KILLED).
plot: learning curves (plot.py). Exit 0, or 1 with a one-line error.
"""
import argparse
import os
import sys

from resnext_dist.config import load_config
from resnext_dist.errors import one_line
from resnext_dist.tracking.mirror import RUN_FILE, Mirror, read_cursor
from resnext_dist.tracking.mlflow_store import config_params, configure_http
from resnext_dist.tracking.plot import draw


def sync(run_dir: str, timeout_s: float = 30.0) -> str:
    from mlflow import MlflowClient  # seconds: only for a sync
    run_dir, config = os.path.abspath(run_dir), os.path.join(run_dir, "config.yaml")
    rec = read_cursor(run_dir)
    if rec is None:
        return f"nothing to send: no {os.path.join(run_dir, RUN_FILE)}"
    configure_http(timeout_s)
    mirror = Mirror(MlflowClient(tracking_uri=rec["tracking_uri"]), run_dir, rec,
                    config_params(load_config(config)) if os.path.isfile(config) else {})
    mirror.setup(reopen=False)
    sent = mirror.send_new()
    status = rec.get("status") or ("FINISHED" if os.path.exists(os.path.join(run_dir, "DONE")) else "KILLED")
    mirror.finish(status)
    return f"sent {sent} metric points to MLflow run {mirror.run_id} ({rec['tracking_uri']}); status {status}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnext_dist.tracking",
                                     description="MLflow sync and learning curves of resnext_dist run directories")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sync", help="send what a run has not sent to MLflow yet, and end its MLflow run")
    p.add_argument("run_dir")
    p.add_argument("--timeout-s", type=float, default=30.0, help="HTTP timeout of one request")
    p = sub.add_parser("plot", help="learning curves of one or several runs, from their log.jsonl")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("-o", "--out", default="curves.png")
    args = parser.parse_args(argv)
    try:
        print(sync(args.run_dir, args.timeout_s) if args.cmd == "sync" else draw(args.run_dirs, args.out))
        return 0
    except Exception as e:
        print(f"{args.cmd} failed: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
