"""Evaluate weights on the validation set, exactly as the trainer does: `python -m resnext_dist.evaluate`.

    python -m resnext_dist.evaluate --config configs/X.yaml model.init=PATH [key=value ...]
    python -m resnext_dist.evaluate RUN_DIR [key=value ...]            # the run's config.yaml and weights
    torchrun --nproc_per_node=8 -m resnext_dist.evaluate RUN_DIR        # the same numbers, 8x faster
    options: --tta-flip (add the flipped image's logits), --json OUT, --mlflow-run-id ID (log to that run)

PATH is anything model.init takes (weights/layout.py: a torchvision state dict, our export/ or final weights, a
checkpoint, a run directory), and so is a RUN_DIR (model.init on the command line overrides it). The validation
loader is the trainer's (data.loader, data.val, data.val_res, data.val_crop_ratio, data.batch_size), built for the
val side only, and the numbers come from the trainer's own `run.step.evaluate`: every image counted once over all
ranks, so 1 process and N ranks report the same counts. The classifier must fit too (no re-initialization here).

Rank 0 prints `val top-1 93.61% | top-5 100.00% | loss 0.202 (360 images)` and writes --json OUT
({"val_loss", "val_top1", "val_top5", "val_images", "tta_flip", "weights", "world_size"}). With
--mlflow-run-id, the figures go to that MLflow run (tracking.uri, default the runs root's store) as
eval_loss, eval_top1, eval_top5, eval_images. Exit 0; 2 on bad input, one line naming it (a --json OUT that
cannot be written is said before the evaluation starts).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional, Tuple

import torch

from resnext_dist import tracking
from resnext_dist.commandline import exit_without_teardown, launcher_rank
from resnext_dist.config.arguments import arg_parser
from resnext_dist.config import TrainConfig, find_config, load_config, to_yaml
from resnext_dist.data import build_val_loader
from resnext_dist.dist import close_distributed, init_distributed
from resnext_dist.errors import EXIT_BAD_INPUT, InputError
from resnext_dist.files import atomic_write, check_output_file
from resnext_dist.models import build_model
from resnext_dist.precision import PRECISIONS
from resnext_dist.run.console import val_line
from resnext_dist.runlog import within_classes
from resnext_dist.run.step import evaluate
from resnext_dist.weights import init_model


def parser():
    p = arg_parser("python -m resnext_dist.evaluate",
                   "Evaluate weights on the validation set exactly as the trainer does (one process or torchrun).\n"
                   "A positional RUN_DIR (a training run directory) supplies its config.yaml and its weights.",
                   "model.init=runs/x/export data.val=data/val.beton")
    p.add_argument("--tta-flip", action="store_true", help="add the logits of the horizontally flipped image")
    p.add_argument("--json", metavar="OUT", help="write the figures to this JSON file (rank 0)")
    p.add_argument("--mlflow-run-id", metavar="ID", help="log the figures to this MLflow run (tracking.uri)")
    return p


def resolve(config: Optional[str], args) -> Tuple[TrainConfig, str]:
    """(config, weights path) from --config, a RUN_DIR and key=value overrides (see the module docstring)."""
    run_dirs = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if len(run_dirs) > 1:
        raise InputError(f"one run directory at most, got {' '.join(run_dirs)}")
    config = find_config(config) if config else config  # a path, or a recipe's name (quickstart)
    init_given = any(o.split("=", 1)[0] == "model.init" for o in overrides)
    if run_dirs:
        run_dir = run_dirs[0]
        if not os.path.isdir(run_dir):
            raise InputError(f"{run_dir}: not a run directory (and not key=value)")
        config = config or os.path.join(run_dir, "config.yaml")
        if not os.path.isfile(config):
            raise InputError(f"{run_dir}: no config.yaml (not a run directory; give --config)")
        cfg = load_config(config, overrides)
        # The run's own model.init names where it started from, not what it became.
        return cfg, cfg.model.init if init_given else run_dir
    cfg = load_config(config, overrides)
    if not cfg.model.init:
        raise InputError("nothing to evaluate: give model.init=PATH (weights, an export, a run directory) or a "
                         "run directory")
    return cfg, cfg.model.init


def run(cfg: TrainConfig, weights: str, tta_flip: bool = False) -> dict:
    """Evaluate on every rank; returns the figures (the same on every rank)."""
    dist = init_distributed(cfg.dist)
    try:
        model = build_model(cfg.model).to(dist.device)
        note = init_model(model, weights, new_classifier_ok=False)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        loader = build_val_loader(cfg.data, dist, seed=cfg.train.seed, num_classes=cfg.model.num_classes,
                                  channels_last=cfg.train.channels_last, required=True)  # the trainer's
        if dist.is_main:
            print(f"resnext_dist: evaluating {note} on {dist.world_size} process(es)", flush=True)
        with torch.no_grad():  # the numbers are the trainer's; only the autograd bookkeeping is skipped
            result = within_classes(evaluate(model, loader, dist, PRECISIONS[cfg.train.precision].autocast(dist.device),
                                             tta_flip), cfg.model.num_classes)  # no top-5 on 5 classes or fewer
        result.update(tta_flip=tta_flip, weights=weights, world_size=dist.world_size, is_main=dist.is_main)
        return result
    finally:
        close_distributed()


def main(argv=None) -> int:
    args = parser().parse_intermixed_args(argv)  # RUN_DIR, options and key=value in any order
    try:
        cfg, weights = resolve(args.config, args.overrides)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        if args.json:
            check_output_file(args.json, "--json")  # before the evaluation, not after it
        result = run(cfg, weights, args.tta_flip or cfg.train.tta_flip)
        if result.pop("is_main"):
            print(val_line(result), flush=True)  # the trainer's validation line
            if args.json:
                atomic_write(args.json, json.dumps(result, indent=2) + "\n")
            if args.mlflow_run_id:  # the figures as eval_loss, eval_top1, eval_top5, eval_images of that run
                figures = {f"eval_{k[4:]}": result[k] for k in ("val_loss", "val_top1", "val_top5", "val_images")
                           if k in result}
                try:
                    tracking.log_metrics(cfg, args.mlflow_run_id, figures)
                except InputError as e:  # an unknown run, a store that does not answer: named after the option
                    raise InputError(f"--mlflow-run-id {e}") from None
    except InputError as e:
        if launcher_rank() == 0:  # every rank meets the same bad input: say it once
            print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
