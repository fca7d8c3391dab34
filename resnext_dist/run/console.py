"""What a person sees on the terminal while a run trains (rank 0 only): the banner, one aligned line per log
interval, the validation line, and the summary at the end. It formats the same records log.jsonl holds (the
record keeps raw facts and numbers: names, fractions, bytes, seconds); nothing here is read back by anything.

    banner:  resnext_dist 0.1.0 | run quickstart-1a2b3c4d | fresh start
             where     2 processes on 1 node | gloo | cpu
             ...
             reading   /local/train-1a2b3c4d.beton, ... (copies staged on this node) | random order   (files only)
    step:    epoch 3/8 | step 176/352 | loss 0.096 | lr 0.076 | 600 img/s | data wait 1.5% | mem 1.5 GB
    val:     val top-1 93.61% | top-5 100.00% | loss 0.202 (360 images)
    summary: done in 40 s (17 s of training) | best val top-1 98.89% (epoch 8) | final 98.89% | 646 img/s mean
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, Optional

from tqdm import tqdm


def say(text: str) -> None:
    """A line on stdout now (flushed: under torchrun and Slurm stdout is a pipe, and a line that waits in a
    buffer is a line nobody sees)."""
    print(text, flush=True)


def banner(start: Dict[str, Any]) -> str:
    """The start record as a few aligned lines: what runs where, on what, how long, and where it goes."""
    s = start
    how = f"resumes from step {s['resumed_step']} ({s['resumed_from']})" if s.get("resumed_from") else "fresh start"
    if s.get("resumed_from") and s.get("world_size_was", s["world_size"]) != s["world_size"]:
        how += (f", on {s['world_size']} process{'es' if s['world_size'] > 1 else ''} instead of "
                f"{s['world_size_was']} (same global batch)")
    lines = [f"resnext_dist {s['version']} | run {s['run_name']} | {how}"]
    nodes, c, w = s["nodes"], s.get("cardinality"), s.get("group_width")
    model = (f"{s['arch']}, {s['stem']} stem" + (f", layers {list(s['layers'])}" if s.get("layers") else "")
             + (f", {c or ''}x{w or ''}d" if c or w else ""))
    schedule = (f"{s['optimizer']} lr {s['peak_lr']:.4g}"
                + (f" ({s['lr']:g} x {s['global_batch']}/256)" if s["scale_lr"] else "")
                + (f", warm-up {s['warmup_epochs']:g} epochs" if s["warmup_epochs"] else "") + f", {s['schedule']}"
                + f", weight decay {s['weight_decay']:g}, label smoothing {s['label_smoothing']:g}")
    rows = [
        ("where", f"{s['world_size']} process{'es' if s['world_size'] > 1 else ''} on {nodes} node"
                  f"{'s' if nodes > 1 else ''} | {s['backend']} | {s['device']}"),
        ("model", f"{model} | {s['parameters'] / 1e6:.2f} M parameters | {s['num_classes']} classes"
                  + (f" | {s['init']}" if s.get("init") else "")),
        ("data", f"{s['loader']} | {s['train_images']:,} train / {s['val_images']:,} val images | "
                 f"{s['train_res']} px train, {s['val_res']} px val"),
        *([("reading", _reading(s["reading"]))] if s.get("reading") else []),
        *([("augment", s["augment"])] if s.get("augment") else []),  # data/augment.py's describe
        ("batch", f"{s.get('micro_batch', s['batch_size'])} per process x {s['world_size']} x {s['accum_steps']} "
                  f"accumulation = {s['global_batch']} global | {s['steps_per_epoch']} steps/epoch x {s['epochs']} "
                  f"epochs = {s['total_steps']} steps"),
        ("speed", f"{s['precision']} | channels-last {'on' if s['channels_last'] else 'off'} | "
                  f"compile {_compile(s)}"),
        ("schedule", schedule),
        ("run dir", s["run_dir"]),
        ("MLflow", s.get("mlflow") or "off (tracking.enabled=false)"),
    ]
    lines += [f"  {k:<9} {v}" for k, v in rows]
    return "\n".join(lines)


def _compile(s: dict) -> str:
    """`on`, `on (reduce-overhead)` for a mode other than torch's default, or `off`."""
    mode = s.get("compile_mode", "default")
    return ("on" if mode == "default" else f"on ({mode})") if s["compile"] else "off"


def _reading(r: Dict[str, Any]) -> str:
    """Where the data's bytes come from (the files; node-local copies with data.stage_dir) and in what order."""
    files = ", ".join(path for path in (r["train"], r.get("val")) if path)
    window = f"{r['window']}-page window" if r.get("window") else "window: all pages"
    order = f"pages, {window}" if r["order"] == "pages" else r["order"]
    return files + (" (copies staged on this node)" if r.get("staged") else "") + f" | {order} order"


def step_line(r: Dict[str, Any], epochs: int, total_steps: int) -> str:
    return (f"epoch {r['epoch'] + 1}/{epochs} | step {r['step']}/{total_steps} | loss {r['loss']:.4g} | "
            f"lr {r['lr']:.3g} | {r['img_per_s']:,.0f} img/s | data wait {100 * r['data_wait']:.1f}% | "
            f"mem {_size(r['peak_mem_mb'])}")


def val_line(r: Dict[str, Any], prefix: str = "val") -> str:
    """Top-5 where the figures hold it (not on 5 classes or fewer: runlog.within_classes)."""
    top5 = f" | top-5 {100 * r[prefix + '_top5']:.2f}%" if prefix + "_top5" in r else ""
    return (f"{prefix} top-1 {100 * r[prefix + '_top1']:.2f}%{top5} | "
            f"loss {r[prefix + '_loss']:.3f} ({r[prefix + '_images']:,} images)")


def epoch_lines(r: Dict[str, Any], epochs: int) -> str:
    lines = [f"epoch {r['epoch'] + 1}/{epochs} done in {duration(r['epoch_time_s'])}"]
    lines += [val_line(r, prefix) for prefix in ("val", "ema_val") if f"{prefix}_top1" in r]
    return "\n  ".join(lines)


def summary(s: Dict[str, Any], weights: Optional[str], log_path: str, mlflow: Optional[str]) -> str:
    """The end of a run, from the summary record: how well, how fast, and where everything is."""
    best = s.get("best_val_top1")
    quality = (f"best val top-1 {100 * best:.2f}% (epoch {s['best_epoch']}) | final {100 * s['final_val_top1']:.2f}%"
               if best is not None else "no validation set")
    training = s["train_hours"] * 3600
    if "wall_s" not in s:
        wall = f"done: {duration(training)} of training"
    elif training > s["wall_s"]:  # resumed or extended: the training of every start, this start's wall time
        wall = f"done in {duration(s['wall_s'])} this start ({duration(training)} of training over all starts)"
    else:
        wall = f"done in {duration(s['wall_s'])} ({duration(training)} of training)"
    lines = [f"{wall} | {quality} | {s['mean_img_per_s']:,.0f} img/s mean | "
             f"{s['epochs_done']} epochs, {s['step']} steps"]
    if weights:  # absolute: paths a user copies work from any directory
        lines.append(f"  weights   {os.path.abspath(weights)}")
    lines.append(f"  log       {os.path.abspath(log_path)}")
    if mlflow:
        lines.append(f"  MLflow    {mlflow}")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _size(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


class Progress:
    """A tqdm bar over the epoch's steps on a terminal (rank 0), showing the running loss; lines are written
    above it. Off the terminal (a log file, Slurm), lines only."""

    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if enabled and sys.stdout.isatty():
            self.bar = tqdm(total=total, dynamic_ncols=True, leave=False)

    def start_epoch(self, epoch: int, epochs: int, done: int) -> None:
        if self.bar is not None:
            self.bar.reset()
            self.bar.update(done)
            self.bar.set_description(f"epoch {epoch + 1}/{epochs}")

    def step(self, loss: Optional[float] = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4g}")

    def write(self, text: str) -> None:
        (self.bar.write if self.bar is not None else say)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
