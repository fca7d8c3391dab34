"""Tracking: a run's record (log.jsonl) mirrored where runs are browsed and compared, from rank 0, never in the way
of training. The rest of the package uses only the names below and keeps a tracker's state opaquely; everything
specific to the backend, MLflow, is in its modules: mlflow_tracker.py (the tracker of a training run), mirror.py
(log.jsonl -> an MLflow run), mlflow_store.py (the store and its UI, the runs made in one go). Another backend
would be one more module offering these names, imported here instead.

    line = describe(cfg, state.tracker)       # for the banner, before anything remote: "run <id> | mlflow ui ..."
    tracker = open_tracker(cfg, dist, run_dir, state.tracker)  # before this attempt writes to log.jsonl
    state.tracker = tracker.state             # plain values a checkpoint keeps, so a resume continues the same run
    tracker.log_artifact(path)                # the trainer only appends to log.jsonl; this, in the background
    tracker.log_model(model, example_input)   # the final model (unless tracking.log_model=false)
    tracker.close("FINISHED")                 # | "FAILED" | "KILLED": the rest of log.jsonl, artifacts, end the run
    log_metrics(cfg, run_id, {"eval_top1": 0.93})      # figures added to a tracked run (evaluate --mlflow-run-id)
    run_id = open_sweep(cfg, name, sweep_dir, params)  # a sweep's parent run, made once; finish_sweep(sweep_dir)
    run_id = log_result(uri, experiment, name, tags, params, metrics, document, document_name)  # a bench result
    browse_hint(cfg, sys.executable), experiment_link(cfg)   # where to look: the UI command, the server's page

Learning curves from log.jsonl, for any backend or none: plot.py (`write_curves(run_dir)`); where a run came from
(git, versions, machine) as tags: provenance.py.
"""
from resnext_dist.tracking.mlflow_store import (browse_hint, experiment_link, finish_sweep, log_metrics, log_result,
                                                open_sweep)
from resnext_dist.tracking.mlflow_tracker import describe, open_tracker

__all__ = ["describe", "open_tracker", "log_metrics", "open_sweep", "finish_sweep", "log_result", "browse_hint",
           "experiment_link"]
