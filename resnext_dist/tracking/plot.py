"""Learning curves from log.jsonl, drawn with matplotlib (Agg: no display needed), for one run or several.

    write_curves(run_dir)                    # <run_dir>/curves.png; the trainer calls it at each epoch end (rank 0)
    draw(["runs/a", "runs/b"], "cmp.png")    # several runs on the same axes: a sweep, or a run and its baseline

Panels: training loss and learning rate against steps, val top-1/top-5 against epochs, data wait against steps.
A step logged twice (a resumed attempt repeats steps after its checkpoint) is drawn once, first value, as MLflow.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

from resnext_dist.runlog import read_log

PANELS = (("loss", "step", "training loss"), ("lr", "step", "learning rate"),
          ("val_top1", "epoch", "val top-1 (solid) / top-5 (dashed)"), ("data_wait", "step", "data wait (fraction)"))


def series(run_dir: str) -> Dict[str, List[Tuple[float, float]]]:
    """key -> [(x, value)] from log.jsonl: step records against the global step, epoch records against epochs."""
    out: Dict[str, Dict[float, float]] = {}
    for r in read_log(os.path.join(run_dir, "log.jsonl")):
        if r.get("kind") not in ("step", "epoch"):
            continue
        x = r.get("epoch", 0) + 1 if r["kind"] == "epoch" else r.get("step", 0)  # epochs done
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(k, {}).setdefault(x, float(v))
    return {k: sorted(v.items()) for k, v in out.items()}


def draw(run_dirs: Sequence[str], out: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for i, run_dir in enumerate(run_dirs):
        s, color, label = series(run_dir), f"C{i}", os.path.basename(os.path.abspath(run_dir))
        for ax, (key, xlabel, title) in zip(axes.flat, PANELS):
            for k, style in ((key, "-"), ("val_top5", "--") if key == "val_top1" else (None, None)):
                if k in s:
                    ax.plot(*zip(*s[k]), style, color=color, marker="o" if xlabel == "epoch" else None,
                            label=label if style == "-" else None)
            ax.set(xlabel=xlabel, title=title)
            ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def write_curves(run_dir: str) -> str:
    """Draw <run_dir>/curves.png from its log.jsonl; returns the path."""
    return draw([run_dir], os.path.join(run_dir, "curves.png"))
