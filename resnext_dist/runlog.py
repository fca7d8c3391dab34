"""A run's record: one JSON object per line in <run dir>/log.jsonl, written by rank 0 only, read by all who report.

This file is the run's one event stream: it is written first and never depends on the network, and everything
that reports reads it (the console, MLflow through resnext_dist.tracking, the curves, the bench, the run
summary: `summarize`). Each record is `RunLog.write(kind, step, **fields)`: `kind` is one of start | step | epoch
| event | summary, `step` the global optimizer step, plus the wall-clock `time`. Line-buffered: a crash loses no
complete line, and a reader takes only lines that end in a newline.

Read back, a line is a record only if it has the shape we write (`RECORD`, `FIELDS`: types and ranges of the fields
readers use, at most MAX_LINE bytes): anything else (a torn line, a line of another program, a hand edit) is left
out and said (`read_log(path, skipped)`), so no line can make a reader, and so a run, fail.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from resnext_dist.readback import check, count, number, one_of, optional, text, timestamp

KINDS = ("start", "step", "epoch", "event", "summary")
MAX_LINE = 1 << 20  # bytes; our longest lines (a start record, an event quoting a config value) are a few KiB
RECORD = {"kind": one_of(KINDS), "step": count, "time": timestamp}
FIELDS = {  # per kind: the fields a reader uses (the console, the summary, the curves, the bench, MLflow)
    "start": {"world_size": count, "steps_per_epoch": count, "epochs": count},
    "step": {"epoch": count, "res": count, **{k: number for k in ("loss", "lr", "img_per_s", "data_wait",
                                                                   "peak_mem_mb")}},
    "epoch": {"epoch": count, "val_images": count, **{k: number for k in (
        "epoch_time_s", "val_loss", "val_top1", "val_top5", "ema_val_loss", "ema_val_top1", "ema_val_top5")}},
    "event": {"event": text(100)},
    "summary": {"epochs_done": count, "best_epoch": optional(count), **{k: optional(number) for k in (
        "best_val_top1", "final_val_top1", "train_hours", "mean_img_per_s")}},
}


TOP_K = 5  # the second accuracy every evaluation reports, next to top-1


def within_classes(figures: Dict[str, Any], num_classes: int) -> Dict[str, Any]:
    """An evaluation's figures without top-5 where the model has no more than 5 classes: every image is then
    "right" in its top 5, and "top-5 100%" on 3 classes says nothing (nor is it logged or plotted)."""
    if num_classes > TOP_K:
        return dict(figures)
    return {k: v for k, v in figures.items() if not k.endswith(f"_top{TOP_K}")}


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


def check_record(value: Any) -> Optional[str]:
    """What makes `value` not a record of ours, or None (`time` may be absent: a hand-made record needs none)."""
    return check(value, RECORD, required=("kind", "step")) or check(value, FIELDS[value["kind"]])


def parse(line: bytes) -> Tuple[Optional[Dict[str, Any]], str]:
    """(record, "") for a line of log.jsonl, or (None, what is wrong with it)."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; a deep nest a RecursionError
        return None, "not JSON"
    problem = check_record(value)
    return (None, problem) if problem else (value, "")


def scan(path: str, begin: int = 0) -> Iterator[Tuple[int, Optional[Dict[str, Any]], str]]:
    """(offset after the line, record or None, what is wrong) for each complete line from byte `begin` on; stops
    at a line still being written. A line longer than MAX_LINE is skipped without being held in memory."""
    with open(path, "rb") as f:
        f.seek(begin)
        while True:
            line = f.readline(MAX_LINE + 1)
            if not line.endswith(b"\n"):
                if len(line) <= MAX_LINE:
                    return  # the end, or a line being written
                while line and not line.endswith(b"\n"):
                    begin, line = begin + len(line), f.readline(MAX_LINE)
                if not line:
                    return
                begin += len(line)
                yield begin, None, f"longer than {MAX_LINE} bytes"
                continue
            begin += len(line)
            yield (begin, *parse(line))


def read_log(path: str, skipped: Optional[List[Tuple[int, str]]] = None) -> List[Dict[str, Any]]:
    """The records of a log.jsonl, for whoever reads it back (the summary, the bench, the sweep table, the curves).
    A line that is not a whole record of ours is left out; (line number from 1, why) is appended to `skipped`."""
    out = []
    for number_, (_, record, problem) in enumerate(scan(str(path)), 1):
        if record is not None:
            out.append(record)
        elif skipped is not None:
            skipped.append((number_, problem))
    return out


def summarize(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The run as a whole (all its attempts): best val top-1 (and epoch, from 1), final val top-1, epochs done,
    hours of training, mean speed. The trainer's summary record and a sweep's table; the trainer's state or a DONE
    marker knows the epochs done better, where there is one. Records as read_log returns them."""
    def num(r, key):
        v = r.get(key)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    epochs = [r for r in records if r.get("kind") == "epoch"]
    evals = [r for r in epochs if num(r, "val_top1") is not None]
    speeds = [num(r, "img_per_s") for r in records if r.get("kind") == "step"][1:]  # the first holds warm-up
    speeds = [s for s in speeds if s is not None]
    best = max(evals, key=lambda r: r["val_top1"]) if evals else None
    return {"best_val_top1": best["val_top1"] if best else None,
            "best_epoch": int(best.get("epoch", 0)) + 1 if best else None,
            "final_val_top1": evals[-1]["val_top1"] if evals else None,
            "epochs_done": max((int(r.get("epoch", 0)) + 1 for r in epochs), default=0),
            "train_hours": sum(num(r, "epoch_time_s") or 0.0 for r in epochs) / 3600,
            "mean_img_per_s": sum(speeds) / len(speeds) if speeds else 0.0}
