"""`python -m resnext_dist.tracking sync RUN_DIR`: send what a run could not send to MLflow (its outbox).

Exit 0 when everything was sent (or there was nothing to send), 1 with a one-line error otherwise.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from resnext_dist.errors import one_line
from resnext_dist.tracking.sync import sync_outbox


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnext_dist.tracking",
                                     description="MLflow helpers for resnext_dist run directories")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_sync = sub.add_parser("sync", help="send what a run could not send to MLflow (its mlflow_outbox.jsonl)")
    p_sync.add_argument("run_dir")
    p_sync.add_argument("--timeout-s", type=float, default=30.0, help="HTTP timeout of one request")
    args = parser.parse_args(argv)
    try:
        return sync_outbox(args.run_dir, args.timeout_s)
    except Exception as e:
        print(f"sync failed: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
