"""`python -m resnext_dist.tracking sync RUN_DIR` | `plot RUN_DIR [RUN_DIR ...] [-o out.png]`.

sync: the Tracker's reader run once to the end of log.jsonl (for a run whose server was away), then what close()
left and the final status. plot: learning curves (plot.py). Exit 0, or 1 with a one-line error.
"""
import argparse
import sys

from resnext_dist.errors import one_line


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
        from resnext_dist.tracking import mirror, plot
        print(mirror.sync(args.run_dir, args.timeout_s) if args.cmd == "sync" else plot.draw(args.run_dirs, args.out))
        return 0
    except Exception as e:
        print(f"{args.cmd} failed: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
