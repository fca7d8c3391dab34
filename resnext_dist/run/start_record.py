"""The start record: the facts of one attempt of a run, raw (config values, counts, names), written to log.jsonl
when the trainer begins (run/trainer.py); the console's banner words them (run/console.py) and the tracker sends
them as the MLflow run's description.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as tdist

from resnext_dist import __version__
from resnext_dist.data.augment import describe as describe_augment
from resnext_dist.optim import peak_lr


def start_record(trainer, mlflow: str) -> dict:
    """The facts of this attempt, raw (config values, counts, names); the console's banner words them."""
    cfg, dist, parts = trainer.cfg, trainer.dist, trainer.parts
    model, o, loader = cfg.model, cfg.optim, parts.train_loader
    return {
        "version": __version__, "run_name": cfg.run.name, "run_dir": os.path.abspath(cfg.run.dir),
        "resumed_from": trainer.resume_from, "resumed_step": trainer.state.step, "world_size_was": trainer.world_was,
        "world_size": dist.world_size, "nodes": dist.num_nodes,
        "backend": tdist.get_backend() if tdist.is_initialized() else "none (one process)",
        "device": str(dist.device) if dist.device.type == "cpu" else torch.cuda.get_device_name(dist.device),
        "arch": model.arch, "stem": model.stem, "layers": list(model.layers) if model.layers else None,
        "cardinality": model.cardinality, "group_width": model.group_width,
        "parameters": sum(p.numel() for p in trainer.state.model.parameters()),
        "num_classes": model.num_classes, "init": trainer.init_note, "loader": cfg.data.loader,
        "train_images": loader.num_images,
        "val_images": getattr(parts.val_loader, "num_images", 0) if parts.val_loader else 0,
        "train_res": cfg.data.train_res, "val_res": cfg.data.val_res,
        "batch_size": cfg.data.batch_size, "micro_batch": parts.split.sizes_text(),
        "accum_steps": parts.accum_steps, "global_batch": parts.global_batch,
        "steps_per_epoch": parts.steps_per_epoch, "epochs": cfg.train.epochs, "total_steps": trainer.total_steps,
        "precision": cfg.train.precision, "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
        "compile_mode": cfg.train.compile_mode,
        "optimizer": type(trainer.state.optimizer).__name__, "peak_lr": peak_lr(o, parts.global_batch),
        "lr": o.lr, "scale_lr": o.scale_lr, "warmup_epochs": o.warmup_epochs, "schedule": o.schedule,
        "weight_decay": o.weight_decay, "label_smoothing": o.label_smoothing, "mlflow": mlflow,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""), "restart": restart_count(),
        "reading": getattr(loader, "reading", None),  # data/loaders.py: the files read (staged?), the order
        "augment": describe_augment(cfg.data),  # data/augment.py: the training augmentations, in words
    }


def restart_count() -> int:
    """Attempts before this one: torchrun's restarts plus Slurm's requeues."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) + \
        int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
