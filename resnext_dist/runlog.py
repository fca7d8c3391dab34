"""A run's record: one JSON object per line in <run dir>/log.jsonl, written by rank 0 only, read by all who report.

This file is the run's one event stream: it is written first and never depends on the network, and everything
that reports reads it (the console, MLflow through resnext_dist.tracking, the curves, the bench, the run
summary: `summarize`). Each record is `RunLog.write(kind, step, **fields)`: `kind` is one of start | step | epoch
| event | summary, `step` the global optimizer step, plus the wall-clock `time`. Line-buffered: a crash loses no
complete line, and a reader takes only lines that end in a newline.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List


class RunLog:
    def __init__(self, path: str, enabled: bool = True):
        self.path, self.enabled = path, enabled
        self._file = open(path, "a", buffering=1) if enabled else None  # line-buffered: a crash loses no line

    def write(self, kind: str, step: int, **fields: Any) -> Dict[str, Any]:
        record = {"kind": kind, "step": int(step), "time": round(time.time(), 3), **fields}
        if self._file:
            self._file.write(json.dumps(record, default=str) + "\n")
        return record

    def close(self) -> None:
        if self._file:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def read_log(path: str) -> List[Dict[str, Any]]:
    """The records of a log.jsonl, for whoever reads it back (the summary, the bench, the sweep table, the curves).
    A line that is not a whole record (one being written now, or torn by a crash) is left out."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
    return out


def summarize(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The run as a whole (all its attempts): best val top-1 (and epoch, from 1), final val top-1, epochs done,
    hours of training, mean speed. The trainer's summary record and a sweep's table; the trainer's state or a DONE
    marker knows the epochs done better, where there is one."""
    epochs = [r for r in records if r.get("kind") == "epoch"]
    evals = [r for r in epochs if isinstance(r.get("val_top1"), (int, float))]  # a non-finite one is a string
    speeds = [r["img_per_s"] for r in records if r.get("kind") == "step"][1:]  # the first interval holds warm-up
    best = max(evals, key=lambda r: r["val_top1"]) if evals else None
    return {"best_val_top1": best["val_top1"] if best else None, "best_epoch": best["epoch"] + 1 if best else None,
            "final_val_top1": evals[-1]["val_top1"] if evals else None,
            "epochs_done": max((int(r.get("epoch", 0)) + 1 for r in epochs), default=0),
            "train_hours": sum(r.get("epoch_time_s", 0.0) for r in epochs) / 3600,
            "mean_img_per_s": sum(speeds) / len(speeds) if speeds else 0.0}
