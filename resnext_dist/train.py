"""Train a ResNeXt: `python -m resnext_dist.train --config configs/X.yaml [key=value ...]`.

The same command runs as one process (CPU or one GPU), under `torchrun --nproc_per_node=N` (one node or
several), and under `srun` / submitit (one task per GPU). Shape: parse and validate the config ->
join the process group -> build data, model, optimizer -> resume -> train epochs -> close.

Exit status: 0 done (also at once when the run directory already holds DONE); 2 bad input (config,
data, checkpoint) with one line naming it; 128+N after signal N was answered with a checkpoint (140 =
SIGUSR2 "requeue me", 143 = SIGTERM); anything else is a crash with a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from resnext_dist import checkpoint as ckpt
from resnext_dist.cli import arg_parser
from resnext_dist.errors import InputError
from resnext_dist.config import TrainConfig, grad_accum_steps, load_config, to_yaml, \
    validate
from resnext_dist.dist import DistInfo, close_distributed, init_distributed
from resnext_dist.loop import StepContext, evaluate, train_epoch
from resnext_dist.models import build_model
from resnext_dist.optim import build_optimizer, build_scheduler
from resnext_dist.runlog import RunLog
from resnext_dist.signals import StopFlag, StopRequested


def parse_args(argv=None) -> argparse.Namespace:
    return arg_parser("python -m resnext_dist.train",
                      "Train a ResNeXt image classifier (single process, torchrun, srun or submitit).",
                      "data.batch_size=128 optim.lr=0.2").parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        run(cfg)
    except InputError as e:  # also data and checkpoint errors: bad input, one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StopRequested as e:
        print(f"resnext_dist: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def run(cfg: TrainConfig) -> None:
    """Train to the end (or raise StopRequested after a signal-triggered checkpoint)."""
    if os.path.exists(os.path.join(cfg.run.dir, "DONE")):
        print(f"resnext_dist: {cfg.run.dir} is already finished (DONE); nothing to do")
        return
    dist = init_distributed(cfg.dist)
    try:
        validate(cfg, dist.world_size)
        _train(cfg, dist)
    except RuntimeError as e:
        # gloo words it "... timed out ..." or, when the deadline hits inside a pair, "Application timeout
        # caused pair closure".
        if dist.is_distributed and any(w in str(e).lower() for w in ("timed out", "timeout")):
            raise CollectiveTimeout(f"a collective did not finish within dist.timeout_s={cfg.dist.timeout_s} s: "
                                    f"another rank is stuck or gone") from e
        raise
    finally:
        close_distributed()


class CollectiveTimeout(RuntimeError):
    """A peer never reached a collective: the job ends instead of hanging forever."""


def _train(cfg: TrainConfig, dist: DistInfo) -> None:
    from resnext_dist.data import build_loaders, train_res_for_epoch
    from resnext_dist.tracking import Tracker
    from resnext_dist.tracking.plot import write_curves

    seed_everything(cfg.train)
    run_dir, ckpt_dir = cfg.run.dir, os.path.join(cfg.run.dir, "checkpoints")
    config_yaml = to_yaml(cfg)
    if dist.is_main:
        os.makedirs(ckpt_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.yaml"), "w") as f:
            f.write(config_yaml)

    # ---- build: data, model (on device, channels_last before DDP wraps it), optimizer, schedule
    train_loader, val_loader = build_loaders(cfg.data, dist, seed=cfg.train.seed, num_classes=cfg.model.num_classes,
                                             channels_last=cfg.train.channels_last)
    accum = grad_accum_steps(cfg, dist.world_size)
    global_batch = cfg.data.batch_size * dist.world_size * accum
    steps_per_epoch = train_loader.batches_per_epoch // accum
    if steps_per_epoch < 1:
        raise InputError(f"data.train has too few images for one global batch of {global_batch}")
    model = build_model(cfg.model).to(dist.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim, global_batch)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch, cfg.train.epochs)
    scaler = torch.amp.GradScaler(dist.device.type) if cfg.train.precision == "fp16" else None
    ema = None
    if cfg.train.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay), use_buffers=True)
    state = ckpt.TrainState(model, optimizer, scheduler, scaler, ema, config_yaml=config_yaml,
                            extra={"global_batch_size": global_batch, "world_size": dist.world_size})

    # ---- resume (auto: newest complete checkpoint of this run directory)
    resume_from = _resume_path(cfg, ckpt_dir)
    if resume_from:
        sd = ckpt.load_file(resume_from)
        if sd.get("global_batch_size", global_batch) != global_batch:
            raise ckpt.CheckpointError(
                f"{resume_from}: trained with global batch {sd['global_batch_size']} (world size "
                f"{sd.get('world_size')}), now {global_batch}; set optim.global_batch_size={sd['global_batch_size']} "
                f"to continue the same run on {dist.world_size} processes")
        state.load_state_dict(sd, resume_from)
        del sd

    log = RunLog(os.path.join(run_dir, "log.jsonl"), enabled=dist.is_main)
    # A checkpoint of another run (checkpoint.resume=PATH elsewhere) starts a new MLflow run, not that run's.
    own = resume_from and os.path.abspath(resume_from).startswith(os.path.abspath(ckpt_dir) + os.sep)
    tracker = Tracker(cfg, dist, run_dir, run_id=state.mlflow_run_id if own else None)
    state.mlflow_run_id = tracker.run_id
    if resume_from and dist.is_main:
        _emit(log, tracker, {"kind": "event", "step": state.step, "event": "resumed", "checkpoint": resume_from,
                             "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))})

    runner = model
    if dist.is_distributed:
        runner = DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                     bucket_cap_mb=cfg.dist.bucket_cap_mb, gradient_as_bucket_view=cfg.dist.gradient_as_bucket_view)
    if cfg.train.compile:
        runner = torch.compile(runner)
    autocast = autocast_factory(cfg.train.precision, dist.device)

    last_saved = {"step": state.step}

    def save():
        if last_saved["step"] != state.step:
            state.mlflow_run_id = tracker.run_id or state.mlflow_run_id  # the tracker may connect late
            ckpt.save(state, ckpt_dir, cfg.checkpoint.keep, dist)
            last_saved["step"] = state.step

    def maybe_checkpoint():
        if cfg.checkpoint.every_steps and state.step % cfg.checkpoint.every_steps == 0:
            save()

    progress = _progress_bar(cfg, dist, steps_per_epoch)
    stop_flag = StopFlag().install()
    ctx = StepContext(runner, dist, autocast, accum, global_batch, cfg.optim.label_smoothing,
                      cfg.train.grad_clip_norm, cfg.train.log_every_steps, cfg.train.nan_check, stop_flag,
                      on_log=lambda rec: _emit(log, tracker, rec, progress), maybe_checkpoint=maybe_checkpoint,
                      max_steps=cfg.train.max_steps)
    status = "FAILED"
    try:
        # ---- epochs
        while state.epoch < cfg.train.epochs and not _reached_max(cfg, state):
            res = train_res_for_epoch(cfg.data, state.epoch)
            if progress is not None:
                progress.reset(total=steps_per_epoch)
                progress.update(state.samples_in_epoch // global_batch)
                progress.set_description(f"epoch {state.epoch}")
            t_epoch = time.perf_counter()
            stop = train_epoch(state, train_loader, ctx, res, steps_per_epoch, progress)
            if stop:
                save()
                status = "KILLED"
                raise StopRequested(stop)
            if state.samples_in_epoch < steps_per_epoch * global_batch:
                break  # train.max_steps reached mid-epoch
            record = {"kind": "epoch", "step": state.step, "epoch": state.epoch,
                      "epoch_time_s": time.perf_counter() - t_epoch}
            last = state.epoch + 1 == cfg.train.epochs
            if val_loader is not None and (last or (state.epoch + 1) % cfg.train.eval_every_epochs == 0):
                record.update(evaluate(runner, val_loader, dist, autocast, cfg.train.tta_flip))
                if ema is not None:
                    record.update({f"ema_{k}": v for k, v in
                                   evaluate(ema, val_loader, dist, autocast, cfg.train.tta_flip).items()})
            state.epoch += 1
            state.samples_in_epoch = 0
            _emit(log, tracker, record, progress)
            if dist.is_main:
                tracker.log_artifact(write_curves(run_dir))
            save()

        # ---- finish: final weights and the DONE marker (rank 0), after every rank is through
        save()
        if dist.is_main:
            final = os.path.join(run_dir, "final_weights.pt")
            ckpt.atomic_save((ema.module if ema is not None else model).state_dict(), final)
            tracker.log_artifact(os.path.join(run_dir, "config.yaml"))
            tracker.log_artifact(final)
            tracker.log_model(ema.module if ema is not None else model,
                              torch.zeros(2, 3, cfg.data.val_res, cfg.data.val_res))
            log.write("event", state.step, event="done")
            tracker.log_artifact(log.path)
            open(os.path.join(run_dir, "DONE"), "w").close()
        status = "FINISHED"
    finally:
        stop_flag.restore()
        if progress is not None:
            progress.close()
        log.close()
        tracker.close(status)
    if dist.is_main:
        print(f"resnext_dist: done: {run_dir}")


def _reached_max(cfg, state) -> bool:
    return bool(cfg.train.max_steps) and state.step >= cfg.train.max_steps


def _resume_path(cfg, ckpt_dir):
    if cfg.checkpoint.resume == "never":
        return None
    if cfg.checkpoint.resume == "auto":
        return ckpt.find_latest(ckpt_dir)
    return cfg.checkpoint.resume


def _emit(log: RunLog, tracker, record: dict, progress=None) -> None:
    """Rank 0: the JSONL line (the source of truth, which MLflow reads), then the terminal."""
    record = dict(record)
    kind, step = record.pop("kind"), record.pop("step")
    log.write(kind, step, **record)
    if log.enabled:
        line = f"{kind} step={step} " + " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        (progress.write if progress is not None else print)(line)


def _progress_bar(cfg, dist, total):
    if not (dist.is_main and cfg.train.progress_bar and sys.stdout.isatty()):
        return None
    from tqdm import tqdm
    return tqdm(total=total, dynamic_ncols=True)


def autocast_factory(precision: str, device: torch.device):
    """A zero-argument context factory: autocast in bf16/fp16, nothing in fp32."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def seed_everything(train_cfg) -> None:
    """Same initial weights on every rank (DDP also broadcasts them) and reproducible draws."""
    random.seed(train_cfg.seed)
    np.random.seed(train_cfg.seed)
    torch.manual_seed(train_cfg.seed)
    if train_cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = train_cfg.cudnn_benchmark


if __name__ == "__main__":
    exit_code = main()
    # By now everything that matters is closed: checkpoints fsynced, log.jsonl and the tracker closed, the
    # process group destroyed. The interpreter's own teardown is skipped: native destructors that run there
    # (gloo / c10d threads) were seen to abort a finished rank with SIGABRT ("terminate called without an
    # active exception", 2 runs in ~45 of a test session), which torchrun reports as a failed run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
