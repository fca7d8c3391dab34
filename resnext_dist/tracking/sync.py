"""Deliver a run dir's outboxes after the fact: `python -m resnext_dist.tracking sync RUN_DIR` (see __main__.py).

    sync_outbox("runs/tiny")   # sends each mlflow_outbox*.jsonl to its run, ends the run, removes the file

An outbox written before its run existed creates the run (or joins the one recorded in mlflow_run.json).
Points at or below the highest step the run already holds for their key are dropped, as the live sender does.
"""
from __future__ import annotations

import os
import sys

from resnext_dist.tracking.format import MAX_TAG_VALUE, METRICS_PER_BATCH, cut
from resnext_dist.tracking.outbox import (OUTBOX_FILE, outbox_paths, read_outbox, recorded_run_id,
                                          write_run_file)
from resnext_dist.tracking.remote import configure_http, log_params_tags


def sync_outbox(run_dir: str, timeout_s: float = 30.0) -> int:
    """Send the run dir's outboxes to their runs (no duplicate steps) and end those runs; 0 = all sent."""
    run_dir = os.path.abspath(run_dir)
    paths = outbox_paths(run_dir)
    if not paths:
        print(f"nothing to send: no {os.path.join(run_dir, OUTBOX_FILE)}")
        return 0
    configure_http(timeout_s)
    for path in paths:
        _sync_one(run_dir, path)
    return 0


def _sync_one(run_dir: str, path: str) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    header, points, artifacts = read_outbox(path)
    if header is None:
        return
    client = MlflowClient(tracking_uri=header["tracking_uri"])
    run_id = header["run_id"]
    if run_id is None:  # written before the run existed: the run dir's run if any, else create it now
        run_id = recorded_run_id(run_dir, header["tracking_uri"])
        if run_id is None:
            run_id = _create_from_header(client, header)
            write_run_file(run_dir, {"run_id": run_id, "tracking_uri": header["tracking_uri"]})
        else:
            log_params_tags(client, run_id, {k: v for k, v in header.get("params", {}).items()
                                             if k not in client.get_run(run_id).data.params}, {})
    elif header.get("params"):  # the run exists but never got its params and tags
        have = client.get_run(run_id).data.params
        log_params_tags(client, run_id, {k: v for k, v in header["params"].items() if k not in have},
                        header.get("tags", {}))
    data = client.get_run(run_id).data
    hwm = {m.key: int(m.step) for m in getattr(data, "_metric_objs", [])}
    keep = []
    for key, value, ts, step in points:
        if step > hwm.get(key, -sys.maxsize):
            hwm[key] = step
            keep.append(Metric(key, value, ts, step))
    for i in range(0, len(keep), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=keep[i:i + METRICS_PER_BATCH])
    for p, a in artifacts:
        if os.path.isdir(p):
            client.log_artifacts(run_id, p, a or os.path.basename(p.rstrip("/")))
        elif os.path.isfile(p):
            client.log_artifact(run_id, p, a)
    status = header.get("status", "FINISHED")
    client.set_terminated(run_id, status)
    os.remove(path)
    print(f"{os.path.basename(path)}: sent {len(keep)} metric points and {len(artifacts)} artifacts to run "
          f"{run_id}; status {status}")


def _create_from_header(client, header) -> str:
    exp = client.get_experiment_by_name(header["experiment"])
    exp_id = exp.experiment_id if exp else client.create_experiment(
        header["experiment"], artifact_location=header.get("artifact_location"))
    tags = {k: cut(v, MAX_TAG_VALUE) for k, v in header.get("tags", {}).items()}
    run_id = client.create_run(exp_id, run_name=header.get("run_name"), tags=tags).info.run_id
    log_params_tags(client, run_id, header.get("params", {}), {})
    return run_id
