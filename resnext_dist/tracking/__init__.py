"""Tracking: a run's record (log.jsonl) mirrored where runs are browsed and compared, from rank 0, never in the way
of training. The rest of the package uses only the names below and keeps a tracker's state opaquely; everything
specific to the backend, MLflow, is in its modules: mlflow_tracker.py (the tracker of a training run), mirror.py
(log.jsonl -> an MLflow run), mlflow_store.py (the store and its UI, the runs made in one go). Another backend
would be one more module offering these names, imported here instead.

    line = describe(cfg, state.tracker)       # before anything remote: "run <id> | mlflow ui ..."
    tracker = open_tracker(cfg, dist, run_dir, state.tracker)  # before this attempt writes to log.jsonl
    line = tracker.describe()                 # the banner's and summary's: "run <id> | <its runs table's URL> ..."
    state.tracker = tracker.state             # plain values a checkpoint keeps, so a resume continues the same run
    tracker.log_artifact(path), tracker.log_model(export_dir, input_shape)  # in the background
    tracker.close("FINISHED")                 # | "FAILED" | "KILLED": the rest of log.jsonl, artifacts, end the run

and the runs made in one go: log_metrics (evaluate --mlflow-run-id), open_sweep / finish_sweep (a sweep's parent
run), log_result (a bench result); where to look: browse_hint, experiment_link, runs_table
(and `python -m resnext_dist.tracking ui`: ui.py). Backend-free: plot.py (learning
curves from log.jsonl), provenance.py (where a run came from, as tags).
"""
from resnext_dist.tracking.mlflow_store import (browse_hint, experiment_link, finish_sweep, log_metrics, log_result,
                                                open_sweep, runs_table)
from resnext_dist.tracking.mlflow_tracker import describe, open_tracker

__all__ = ["describe", "open_tracker", "log_metrics", "open_sweep", "finish_sweep", "log_result", "browse_hint",
           "experiment_link", "runs_table"]
