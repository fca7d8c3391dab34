"""The run, top to bottom: stop handlers -> process group -> the run directory (one identity) -> build ->
resume -> the start record and banner -> epochs of steps (log, checkpoint, evaluate) -> weights, summary, DONE.

Every report goes through log.jsonl (`RunLog`): the console prints the same records, MLflow reads them from the
file in the background. Sync points of a step are in loop.py; the ones here are named where they happen.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time
import torch

from resnext_dist.run import build as builder
from resnext_dist.run import checkpoint as ckpt
from resnext_dist.run import console
from resnext_dist.run import rundir
from resnext_dist.config import TrainConfig, to_yaml, validate
from resnext_dist.dist import DistInfo, close_distributed, init_distributed
from resnext_dist.run.step import StepContext, evaluate, mean_over_ranks, peak_memory_mb, train_step
from resnext_dist.optim import peak_lr
from resnext_dist import tracking
from resnext_dist.tracking.plot import write_curves
from resnext_dist.run.log import RunLog, read_log
from resnext_dist.run.lock import hold_run_dir
from resnext_dist.run.signals import StopFlag, StopRequested, launcher_alive


class CollectiveTimeout(RuntimeError):
    """A peer never reached a collective: the job ends instead of hanging forever."""


def run(cfg: TrainConfig, note: str = "") -> None:
    """Train to the end (or raise StopRequested after a signal-triggered checkpoint)."""
    # Stop handlers first: a scancel or Ctrl-C during a slow start-up (rendezvous, data, MLflow) is answered.
    stop = StopFlag().install()
    try:
        dist = init_distributed(cfg.dist)
        try:
            validate(cfg, dist.world_size)
            train(cfg, dist, stop, note)
        except RuntimeError as e:
            # gloo words it "... timed out ..." or, when the deadline hits inside a pair, "Application timeout
            # caused pair closure".
            if dist.is_distributed and any(w in str(e).lower() for w in ("timed out", "timeout")):
                raise CollectiveTimeout(f"a collective did not finish within dist.timeout_s={cfg.dist.timeout_s} s:"
                                        f" another rank is stuck or gone") from e
            raise
        finally:
            close_distributed()
    finally:
        stop.restore()


def train(cfg: TrainConfig, dist: DistInfo, stop: StopFlag, note: str = "") -> None:
    t_start = time.perf_counter()
    run_dir, ckpt_dir = cfg.run.dir, os.path.join(cfg.run.dir, "checkpoints")
    say = console.say if dist.is_main else (lambda text: None)
    if note:
        say(note)

    # ---- the run directory: one live trainer (a lock), one identity (config.yaml), nothing written yet
    existed = os.path.isdir(run_dir)
    lock = hold_run_dir(run_dir, dist)  # a second trainer on this directory exits 2 here, naming the holder
    try:
        old = rundir.read_config(run_dir)
        changes = rundir.check_identity(cfg, old)
        old = old or {}
        done = rundir.read_done(run_dir)
        if rundir.finished_for(done, cfg, old.get("train.epochs")):
            say(f"resnext_dist: {run_dir} is already finished ({done.get('epochs_done', '?')} epochs, step "
                f"{done.get('step', '?')}); train.epochs=N with a larger N extends it")
            _leave_as_found(lock, run_dir, existed)
            return
        say(f"resnext_dist: run {cfg.run.name}: building data and model ({dist.world_size} process"
            f"{'es' if dist.world_size > 1 else ''})")

        # ---- build: data, model, optimizer, schedule, state (raises InputError for data that does not fit)
        parts = builder.build(cfg, dist)
        state = parts.state

        # ---- resume: rank 0 picks the newest checkpoint that reads, every rank loads that one
        skipped = []
        resume_from = ckpt.choose_resume(cfg.checkpoint.resume, ckpt_dir, dist, skipped)
        if resume_from:
            sd = ckpt.load_file(resume_from)
            if sd.get("global_batch_size", parts.global_batch) != parts.global_batch:
                raise ckpt.CheckpointError(
                    f"{resume_from}: trained with global batch {sd['global_batch_size']} (world size "
                    f"{sd.get('world_size')}), now {parts.global_batch}; set optim.global_batch_size="
                    f"{sd['global_batch_size']} to continue the same run on {dist.world_size} processes")
            state.load_state_dict(sd, resume_from)
            del sd
        init_note = ""
        if cfg.model.init and not resume_from:  # a fresh run starts from given weights (a resume has its own)
            from resnext_dist.weights import init_model
            init_note = init_model(state.model, cfg.model.init)
            if state.ema is not None:  # the average starts from the loaded weights, not from the random ones
                state.ema.module.load_state_dict(state.model.state_dict())
        extended = old.get("train.epochs") not in (None, cfg.train.epochs) and resume_from is not None
        if extended:
            builder.rebuild_schedule(state, cfg, parts.steps_per_epoch)
        if stop.requested:  # a stop during start-up: nothing trained, nothing to save
            raise StopRequested(stop.requested)
    except BaseException:
        _leave_as_found(lock, run_dir, existed)  # a run that never started leaves no trace
        raise

    # ---- from here on the run directory is written (rank 0)
    if dist.is_main:
        os.makedirs(ckpt_dir, exist_ok=True)
        rundir.write_config(cfg)
        rundir.clear_done(run_dir)
    state.config_yaml = to_yaml(cfg)

    # ---- the banner now, before anything slow or remote (MLflow's first connection, compile warm-up)
    total_steps = parts.steps_per_epoch * cfg.train.epochs
    last_step = min(total_steps, cfg.train.max_steps or total_steps)  # train.max_steps: checked here only
    own = resume_from and os.path.abspath(resume_from).startswith(os.path.abspath(ckpt_dir) + os.sep)
    tracked = state.tracker if own else None  # a checkpoint of another run directory continues no tracked run
    start = _start_record(cfg, dist, parts, resume_from, total_steps, mlflow=tracking.describe(cfg, tracked))
    start["init"] = init_note
    say(console.banner(start))

    # ---- the record: MLflow's reader first (its cursor starts where this attempt starts writing), then log.jsonl
    tracker = tracking.open_tracker(cfg, dist, run_dir, tracked)
    state.tracker = tracker.state
    start["mlflow"] = tracker.describe()
    log = RunLog(os.path.join(run_dir, "log.jsonl"), enabled=dist.is_main)
    for key, was, now in changes:
        log.write("event", state.step, event="config_changed", key=key, old=was, new=now)
    if extended:
        log.write("event", state.step, event="extended", old_epochs=old["train.epochs"], new_epochs=cfg.train.epochs)
    for path, reason in skipped:
        log.write("event", state.step, event="checkpoint_skipped", checkpoint=path, reason=reason)
    if resume_from:
        log.write("event", state.step, event="resumed", checkpoint=resume_from, restart=_restart_count())
    log.write("start", state.step, **start)

    runner = builder.runner(state.model, cfg, dist)
    ctx = StepContext(runner, dist, builder.autocast_factory(cfg.train.precision, dist.device),
                      parts.accum_steps, cfg.optim.label_smoothing, cfg.train.grad_clip_norm)
    saver = ckpt.Checkpointer(state, ckpt_dir, cfg.checkpoint.keep, cfg.checkpoint.every_steps, dist)
    progress = console.Progress(dist.is_main and cfg.train.progress_bar, parts.steps_per_epoch)
    emit = _emitter(log, progress, cfg.train.epochs, total_steps)
    if cfg.train.compile:
        say("compiling the model (torch.compile): the first steps take longer")
    status = "FAILED"
    try:
        interval = _Interval(dist.device)
        first_step = state.step
        while state.step < last_step:
            # ---- one epoch, from wherever the state says it stopped
            epoch, res = state.epoch, _train_res(cfg, state.epoch)
            done_steps = state.samples_in_epoch // parts.global_batch
            batches = parts.train_loader.epoch(epoch, res=res, skip=done_steps * parts.accum_steps)
            progress.start_epoch(epoch, cfg.train.epochs, done_steps)
            t_epoch = time.perf_counter()
            for step_in_epoch in range(done_steps, parts.steps_per_epoch):
                epoch_end = step_in_epoch == parts.steps_per_epoch - 1
                log_due = (state.step == first_step or (state.step + 1) % cfg.train.log_every_steps == 0
                           or epoch_end or state.step + 1 == last_step)
                # The ranks meet every step when nan_check is on (stop, NaN and time-based lines agreed there),
                # else only at the log steps (stop agreed there).
                if log_due and not launcher_alive():  # torchrun's agent died: stop with a checkpoint, no orphan
                    stop.requested = stop.requested or signal.SIGTERM
                wishes = (stop.requested, dist.is_main and interval.overdue(cfg.train.log_every_s)) \
                    if cfg.train.nan_check or log_due else None
                loss_sum, wait_s, agreed = train_step(state, batches, ctx, wishes)
                state.samples_in_epoch = (step_in_epoch + 1) * parts.global_batch
                interval.add(loss_sum, parts.accum_steps, wait_s)
                loss = None
                if log_due or (agreed is not None and agreed.log_now):
                    # Sync point: the loss is read from the device (and averaged over ranks) here only.
                    record = interval.record(state, res, parts.global_batch // parts.accum_steps)
                    loss = record["loss"]
                    emit(record)
                progress.step(loss)
                state.tracker = tracker.state or state.tracker  # the tracker may connect late
                saver.after_step()
                if agreed is not None and agreed.stop_signal:
                    saver.save()
                    status = "KILLED"
                    raise StopRequested(agreed.stop_signal, state.step)
                if state.step >= last_step:
                    break
            if state.samples_in_epoch < parts.steps_per_epoch * parts.global_batch:
                break  # train.max_steps reached mid-epoch

            # ---- epoch end: evaluate, record, checkpoint (the epoch is over only once all three are done)
            record = {"kind": "epoch", "step": state.step, "epoch": epoch,
                      "epoch_time_s": time.perf_counter() - t_epoch}
            is_last = epoch + 1 == cfg.train.epochs
            if parts.val_loader is not None and (is_last or (epoch + 1) % cfg.train.eval_every_epochs == 0):
                record.update(evaluate(runner, parts.val_loader, dist, ctx.autocast, cfg.train.tta_flip))
                if state.ema is not None:
                    ema = evaluate(state.ema, parts.val_loader, dist, ctx.autocast, cfg.train.tta_flip)
                    record.update({f"ema_{k}": v for k, v in ema.items()})
            state.epoch, state.samples_in_epoch = epoch + 1, 0
            emit(record)
            saver.save()
            if dist.is_main:
                tracker.log_artifact(write_curves(run_dir))  # the learning curves so far, as a picture

        # ---- finish: final weights, summary and the DONE marker (rank 0), after every rank is through
        saver.save()
        if dist.is_main:
            final = state.ema.module if state.ema is not None else state.model
            weights = os.path.join(run_dir, "final_weights.pt")
            ckpt.atomic_save(final.state_dict(), weights)
            from resnext_dist.weights.export import dataset_class_names, write_export
            from resnext_dist.data.embedded import resolve_data_paths
            names = dataset_class_names(dataclasses.replace(cfg, data=resolve_data_paths(cfg.data)))
            export_dir = write_export(final, cfg, os.path.join(run_dir, "export"), names,
                                      extra={"run_name": cfg.run.name, "step": state.step, "epoch": state.epoch})
            tracker.log_artifact(rundir.config_path(run_dir))
            tracker.log_artifact(weights)
            tracker.log_artifact(export_dir, "export")
            tracker.log_model(final, torch.zeros(2, 3, cfg.data.val_res, cfg.data.val_res, device=dist.device))
            summary = _summary(log.path, state, parts.global_batch)
            log.write("summary", state.step, **summary)
            log.write("event", state.step, event="done")
            tracker.log_artifact(log.path)
            rundir.write_done(run_dir, state.step, state.epoch)
            progress.close()
            say(console.summary({**summary, "step": state.step, "wall_s": time.perf_counter() - t_start},
                                os.path.join(export_dir, "model.safetensors"), log.path, tracker.describe()))
        status = "FINISHED"
    finally:
        progress.close()
        log.close()
        tracker.close(status)
        if lock is not None:
            lock.release()


# ----------------------------------------------------------------------------------------------
# The pieces train() reads like words


class _Interval:
    """What accumulates between two log lines: the loss on the device (no sync), images, data wait, time."""

    def __init__(self, device):
        self.loss_sum = torch.zeros((), device=device)
        self.micro_steps, self.wait_s, self.t0 = 0, 0.0, time.perf_counter()
        self.device = device

    def overdue(self, every_s: float) -> bool:
        return bool(every_s) and time.perf_counter() - self.t0 >= every_s

    def add(self, loss_sum, micro_steps: int, wait_s: float) -> None:
        self.loss_sum += loss_sum
        self.micro_steps += micro_steps
        self.wait_s += wait_s

    def record(self, state, res: int, micro_batch_global: int) -> dict:
        elapsed = time.perf_counter() - self.t0
        rec = {"kind": "step", "step": state.step, "epoch": state.epoch,
               "loss": mean_over_ranks(self.loss_sum, self.micro_steps),
               "lr": state.optimizer.param_groups[0]["lr"], "res": res,
               "img_per_s": self.micro_steps * micro_batch_global / elapsed, "data_wait": self.wait_s / elapsed,
               "peak_mem_mb": peak_memory_mb(self.device)}
        self.loss_sum.zero_()
        self.micro_steps, self.wait_s, self.t0 = 0, 0.0, time.perf_counter()
        return rec


def _emitter(log: RunLog, progress: console.Progress, epochs: int, total_steps: int):
    """Rank 0: the record goes to log.jsonl (the source of truth; MLflow reads it from there), then the terminal."""
    def emit(record: dict) -> None:
        record = dict(record)
        kind, step = record.pop("kind"), record.pop("step")
        log.write(kind, step, **record)
        if not log.enabled:
            return
        line = console.step_line({**record, "step": step}, epochs, total_steps) if kind == "step" \
            else console.epoch_lines(record, epochs)
        progress.write(line)
    return emit


def _start_record(cfg, dist, parts, resume_from, total_steps, mlflow: str) -> dict:
    from resnext_dist import __version__
    model, o = cfg.model, cfg.optim
    shape = (f"{model.arch}, {model.stem} stem" + (f", layers {list(model.layers)}" if model.layers else "")
             + (f", {model.cardinality or ''}x{model.group_width or ''}d" if model.cardinality or model.group_width
                else ""))
    lr = peak_lr(o, parts.global_batch)
    sched = (f"SGD lr {lr:.4g}" + (f" ({o.lr:g} x {parts.global_batch}/256)" if o.scale_lr else "")
             + (f", warm-up {o.warmup_epochs:g} epochs" if o.warmup_epochs else "") + f", {o.schedule}"
             + f", weight decay {o.weight_decay:g}, label smoothing {o.label_smoothing:g}")
    return {
        "version": __version__, "run_name": cfg.run.name, "run_dir": os.path.abspath(cfg.run.dir),
        "resumed_from": resume_from, "resumed_step": parts.state.step,
        "world_size": dist.world_size, "nodes": dist.num_nodes, "backend": _backend(dist),
        "device": str(dist.device) if dist.device.type == "cpu" else torch.cuda.get_device_name(dist.device),
        "model": shape, "parameters": sum(p.numel() for p in parts.state.model.parameters()),
        "num_classes": model.num_classes, "init": "",
        "loader": cfg.data.loader, "train_images": getattr(parts.train_loader, "num_images", None)
        or parts.train_loader.batches_per_epoch * cfg.data.batch_size * dist.world_size, "val_images": getattr(parts.val_loader, "num_images", 0) if parts.val_loader else 0,
        "train_res": cfg.data.train_res, "val_res": cfg.data.val_res,
        "batch_size": cfg.data.batch_size, "accum_steps": parts.accum_steps, "global_batch": parts.global_batch,
        "steps_per_epoch": parts.steps_per_epoch, "epochs": cfg.train.epochs, "total_steps": total_steps,
        "precision": cfg.train.precision, "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
        "schedule": sched, "mlflow": mlflow,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""), "restart": _restart_count(),
    }


def _summary(log_path: str, state, global_batch: int) -> dict:
    """The run as a whole (all its attempts), from its log: best and final val top-1, time, speed."""
    records = read_log(log_path)
    evals = [r for r in records if r["kind"] == "epoch" and "val_top1" in r]
    epoch_s = sum(r.get("epoch_time_s", 0.0) for r in records if r["kind"] == "epoch")
    speeds = [r["img_per_s"] for r in records if r["kind"] == "step"][1:]  # the first interval holds warm-up
    best = max(evals, key=lambda r: r["val_top1"]) if evals else None
    return {"best_val_top1": best["val_top1"] if best else None, "best_epoch": best["epoch"] + 1 if best else None,
            "final_val_top1": evals[-1]["val_top1"] if evals else None, "epochs_done": state.epoch,
            "train_hours": epoch_s / 3600, "mean_img_per_s": sum(speeds) / len(speeds) if speeds else 0.0}


def _leave_as_found(lock, run_dir: str, existed: bool) -> None:
    """Release the run directory; remove it again if this attempt made it and wrote nothing else there."""
    if lock is None:
        return
    lock.release()
    if not existed:
        try:
            os.remove(os.path.join(run_dir, ".lock"))
            os.rmdir(run_dir)
        except OSError:
            pass


def _train_res(cfg, epoch: int) -> int:
    from resnext_dist.data import train_res_for_epoch
    return train_res_for_epoch(cfg.data, epoch)


def _backend(dist) -> str:
    import torch.distributed as tdist
    return tdist.get_backend() if tdist.is_initialized() else "none (one process)"


def _restart_count() -> int:
    """Attempts before this one: torchrun's restarts plus Slurm's requeues."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) + \
        int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
