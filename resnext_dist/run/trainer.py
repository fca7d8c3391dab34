"""A run, top to bottom. `train(cfg)` trains a config to the end (the command line and a Slurm job call it): stop
handlers, the process group, then a `Trainer`'s phases over what they share: open the run directory (one live
trainer, one identity) -> restore (build; resume, start from given weights, or extend) -> begin (config.yaml,
banner, tracker, start record) -> train (epochs of steps: log, checkpoint, evaluate) -> finish (final weights:
export, summary, DONE) -> close. Every report goes through log.jsonl (`RunLog`): the console prints the same
records, the tracker reads them from the file in the background. Sync points of a step are in step.py; the ones
here are named where they happen.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time

from resnext_dist import tracking
from resnext_dist.config import TrainConfig, to_yaml, validate
from resnext_dist.config.identity import identity_hash
from resnext_dist.data import train_res_for_epoch
from resnext_dist.data.sharding import train_positions
from resnext_dist.dist import DistInfo, close_distributed, init_distributed
from resnext_dist.errors import InputError
from resnext_dist.optim.losses import LOSSES
from resnext_dist.precision import PRECISIONS
from resnext_dist.run import build as builder
from resnext_dist.run import checkpoint as ckpt
from resnext_dist.run import console, rundir
from resnext_dist.run.lock import hold_run_dir
from resnext_dist.run.start_record import restart_count, start_record
from resnext_dist.runlog import RunLog, read_log, summarize, within_classes
from resnext_dist.run.signals import StopFlag, StopRequested, launcher_alive
from resnext_dist.run.agreement import LateAgreement
from resnext_dist.run.step import Interval, StepContext, evaluate, non_finite_error, train_step
from resnext_dist.tracking.plot import write_curves
from resnext_dist.weights import init_model
from resnext_dist.weights.export import dataset_class_names, write_export
from resnext_dist.weights.layout import CHECKPOINTS_DIR, EXPORT_DIR, WEIGHTS_FILE


MAX_LINE_EVENTS = 100  # log_line_skipped events per attempt: a log of garbage must not grow by as much again


class FinalWriteError(InputError):
    """The final weights or export could not be written (a full disk): exit 2, one line; the last checkpoint is
    kept, so the same command finishes the run."""


class CollectiveTimeout(RuntimeError):
    """A peer never reached a collective: the job ends instead of hanging forever."""


def train(cfg: TrainConfig, note: str = "") -> None:
    """Train `cfg` to the end as this process's rank (or raise StopRequested after a signal-triggered
    checkpoint). `note` is said first, on rank 0 (e.g. that no --config was given)."""
    # Stop handlers first: a scancel or Ctrl-C during a slow start-up (rendezvous, data, MLflow) is answered.
    stop = StopFlag().install()
    try:
        dist = init_distributed(cfg.dist)
        try:
            validate(cfg, dist.world_size)
            Trainer(cfg, dist, stop).run(note)
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


class Trainer:
    """One attempt at a run: what its phases share, and the phases."""

    def __init__(self, cfg: TrainConfig, dist: DistInfo, stop: StopFlag):
        self.cfg, self.dist, self.stop = cfg, dist, stop
        self.t_start = time.perf_counter()
        self.run_dir, self.ckpt_dir = cfg.run.dir, os.path.join(cfg.run.dir, CHECKPOINTS_DIR)
        self.say = console.say if dist.is_main else (lambda text: None)
        self.lock = self.tracker = self.log = self.progress = None  # opened by the phases, closed by close()
        self.status = "FAILED"  # what the tracker is told at the end, unless the run finished or was stopped

    def run(self, note: str = "") -> None:
        """The phases in order. Until the run directory is written (begin), any way out leaves it as found."""
        if note:
            self.say(note)
        try:
            if not self.open():
                return  # already finished
            self.restore()
        except BaseException:
            self.leave_as_found()  # a run that never started leaves no trace
            raise
        try:
            self.begin()
            self.train()
            self.finish()
        finally:
            self.close()

    def open(self) -> bool:
        """Take the run directory: one live trainer (a second one exits 2 here, naming the holder) and one
        identity (a changed identity key is refused). False when the run is already finished (left as found)."""
        cfg, run_dir = self.cfg, self.run_dir
        self.existed = os.path.isdir(run_dir)
        self.lock = hold_run_dir(run_dir, self.dist)
        old = rundir.read_config(run_dir)
        # optim.global_batch_size=0 is "the run's own" (schema: zero_is_runs_own): the recorded one, made explicit
        # here; a config.yaml of an older version may hold 0 (restore() checks a given value against the checkpoint).
        recorded = (old or {}).get("optim.global_batch_size")
        if recorded and not cfg.optim.global_batch_size:
            self.cfg = cfg = builder.with_global_batch(cfg, self.dist, {"global_batch_size": recorded})
        self.changes = rundir.check_identity(cfg, old)  # the allowed ones: logged once the log is open
        self.old = old or {}
        self.ignored = []  # run files of another shape than ours, passed over: said once the log is open
        done = rundir.read_done(run_dir, self.ignored)
        if rundir.finished_for(done, cfg, self.old.get("train.epochs")):
            self.say(f"resnext_dist: {run_dir} is already finished ({done.get('epochs_done', '?')} epochs, step "
                     f"{done.get('step', '?')}); train.epochs=N with a larger N extends it")
            self.leave_as_found()
            return False
        return True

    def leave_as_found(self) -> None:
        """Release the run directory; remove it again if this attempt made it and wrote nothing else there."""
        if self.lock is None:
            return
        self.lock.release()
        if not self.existed:
            try:
                os.remove(self.lock.path)
                os.rmdir(self.run_dir)
            except OSError:
                pass

    def restore(self) -> None:
        """Build the parts (InputError for data that does not fit), then resume (rank 0 picks the newest checkpoint
        that reads, every rank loads it) or start from model.init's weights; a larger train.epochs extends."""
        if restart_count() and self.cfg.checkpoint.resume != "auto":
            # resume=PATH or never is the first attempt's: a restart (torchrun, a requeue) goes on from where the
            # run got, the branch it started, never back to PATH (nor over again)
            self.cfg = dataclasses.replace(self.cfg, checkpoint=dataclasses.replace(self.cfg.checkpoint,
                                                                                    resume="auto"))
        cfg, dist = self.cfg, self.dist
        self.say(f"resnext_dist: run {cfg.run.name}: building data and model ({dist.world_size} process"
                 f"{'es' if dist.world_size > 1 else ''})")
        self.skipped = []  # (checkpoint, reason): newer checkpoints that are not valid
        self.resume_from = ckpt.choose_resume(cfg, self.ckpt_dir, dist, self.skipped)
        sd = ckpt.load_file(self.resume_from) if self.resume_from else {}
        # The run keeps its global batch on any world size; the micro-batches follow from this one (build.py).
        self.cfg = cfg = builder.with_global_batch(cfg, dist, sd, self.resume_from)
        self.world_was = sd.get("world_size", dist.world_size)
        self.parts = builder.build(cfg, dist)
        self.state = self.parts.state
        if self.resume_from:
            self.state.load_state_dict(sd, self.resume_from)
            self.state.parent = {"name": os.path.basename(self.resume_from), "step": self.state.step}
        del sd
        self.init_note = ""
        if cfg.model.init and not self.resume_from:  # a fresh run starts from given weights (a resume has its own)
            self.init_note = init_model(self.state.model, cfg.model.init)
            if self.state.ema is not None:  # the average starts from the loaded weights, not from the random ones
                self.state.ema.module.load_state_dict(self.state.model.state_dict())
        self.extended = self.old.get("train.epochs") not in (None, cfg.train.epochs) and self.resume_from is not None
        if self.extended:
            builder.rebuild_schedule(self.state, cfg, self.parts.steps_per_epoch)
        if self.stop.requested:  # a stop during start-up: nothing trained, nothing to save
            raise StopRequested(self.stop.requested)

    def begin(self) -> None:
        """config.yaml, the banner (before anything slow or remote: the tracker's first connection, compile
        warm-up), the tracker, this attempt's events and the start record; then what the steps need."""
        cfg, dist, state, parts = self.cfg, self.dist, self.state, self.parts
        branched = ([], "")
        if dist.is_main:
            os.makedirs(self.ckpt_dir, exist_ok=True)
            rundir.write_config(cfg)
            rundir.clear_done(self.run_dir)
            if cfg.checkpoint.resume != "auto":  # by hand: from an earlier checkpoint, or over: a branch starts
                branched = ckpt.branch(self.resume_from, state.step, self.ckpt_dir)
        state.config_yaml, state.identity = to_yaml(cfg), identity_hash(cfg)
        self.total_steps = parts.steps_per_epoch * cfg.train.epochs
        self.last_step = min(self.total_steps, cfg.train.max_steps or self.total_steps)  # train.max_steps: only here
        own = self.resume_from and \
            os.path.abspath(self.resume_from).startswith(os.path.abspath(self.ckpt_dir) + os.sep)
        tracked = state.tracker if own else None  # a checkpoint of another run directory continues no tracked run
        start = start_record(self, tracking.describe(cfg, tracked))

        # The tracker's reader first (its cursor starts where this attempt starts writing), then log.jsonl.
        self.tracker = tracking.open_tracker(cfg, dist, self.run_dir, tracked)
        state.tracker = self.tracker.state
        start["mlflow"] = self.tracker.describe()
        self.say(console.banner(start))  # after the tracker opened: the banner links to the run's runs table
        self.log = log = RunLog(os.path.join(self.run_dir, "log.jsonl"), enabled=dist.is_main)
        for key, was, now in self.changes:
            log.write("event", state.step, event="config_changed", key=key, old=was, new=now)
        if self.extended:
            log.write("event", state.step, event="extended", old_epochs=self.old["train.epochs"],
                      new_epochs=cfg.train.epochs)
        for path, reason in self.skipped:
            log.write("event", state.step, event="checkpoint_skipped", checkpoint=path, reason=reason)
        for problem in self.ignored:
            self.say(f"resnext_dist: warning: {problem}")
            log.write("event", state.step, event="run_file_ignored", reason=problem)
        if branched[0]:
            self.say(f"resnext_dist: a branch from step {state.step}: the later checkpoints of the trajectory it "
                     f"leaves ({', '.join(branched[0])}) are kept in {branched[1]}")
            log.write("event", state.step, event="branched", checkpoint=self.resume_from, moved=branched[0],
                      to=branched[1])
        self.reported_lines = set()
        if dist.is_main:
            self.read_log()
        if self.resume_from:
            log.write("event", state.step, event="resumed", checkpoint=self.resume_from, restart=restart_count())
        if self.resume_from and self.world_was != dist.world_size and log.enabled:
            # said, with the steps after the checkpoint that are trained again (checkpoint.every_steps bounds them)
            log.write("event", state.step, event="world_size_changed", old=self.world_was, new=dist.world_size,
                      global_batch=parts.global_batch, micro_batch=parts.split.sizes_text(),
                      accum_steps=parts.accum_steps, redone_steps=_logged_after(log.path, state.step))
        log.write("start", state.step, **start)

        self.runner = builder.runner(state.model, cfg, dist)
        self.ctx = StepContext(self.runner, dist, PRECISIONS[cfg.train.precision].autocast(dist.device),
                               parts.accum_steps, parts.global_batch, cfg.optim.label_smoothing,
                               cfg.train.grad_clip_norm, loss=LOSSES[cfg.optim.loss])
        self.saver = ckpt.Checkpointer(state, self.ckpt_dir, cfg.checkpoint.keep, cfg.checkpoint.every_steps, dist)
        self.progress = console.Progress(dist.is_main and cfg.train.progress_bar, parts.steps_per_epoch)
        if cfg.train.compile:
            self.say("compiling the model (torch.compile): the first steps take longer")

    def train(self) -> None:
        """Epochs of steps, each epoch from wherever the state says it stopped, up to the last step."""
        cfg, parts, state = self.cfg, self.parts, self.state
        self.interval, self.first_step = Interval(self.dist.device), state.step
        self.agreement = LateAgreement(self.dist.device)
        while state.step < self.last_step:
            epoch, res = state.epoch, train_res_for_epoch(cfg.data, state.epoch)
            done_steps = state.samples_in_epoch // parts.global_batch
            # from the epoch's global position: on another world size too, the images not trained on yet
            batches = parts.train_loader.epoch(epoch, res=res, start=state.samples_in_epoch)
            if parts.augment is not None:  # on the device, keyed by each image's place in the epoch (augment.py)
                batches = parts.augment.wrap(batches, train_positions(
                    parts.train_loader.num_images, rank=self.dist.rank, world_size=self.dist.world_size,
                    batch_size=cfg.data.batch_size, global_batch=parts.global_batch, start=state.samples_in_epoch,
                    reps=cfg.data.ra_reps), epoch)
            self.progress.start_epoch(epoch, cfg.train.epochs, done_steps)
            t_epoch = time.perf_counter()
            for step_in_epoch in range(done_steps, parts.steps_per_epoch):
                self.step(batches, step_in_epoch, res)
                if state.step >= self.last_step:
                    break
            if state.samples_in_epoch < parts.steps_per_epoch * parts.global_batch:
                break  # train.max_steps reached mid-epoch
            self.end_epoch(epoch, time.perf_counter() - t_epoch)

    def step(self, batches, step_in_epoch: int, res: int) -> None:
        """One optimizer step and what follows it: a log line when due, a periodic checkpoint, and the answer to
        a stop every rank agreed on (a checkpoint, then StopRequested)."""
        cfg, parts, state, stop = self.cfg, self.parts, self.state, self.stop
        epoch_end = step_in_epoch == parts.steps_per_epoch - 1
        log_due = (state.step == self.first_step or (state.step + 1) % cfg.train.log_every_steps == 0
                   or epoch_end or state.step + 1 == self.last_step)
        # The ranks meet every step when nan_check is on (stop, NaN and time-based lines agreed there),
        # else only at the log steps (stop agreed there).
        if log_due and not launcher_alive():  # torchrun's agent died: stop with a checkpoint, no orphan
            stop.requested = stop.requested or signal.SIGTERM
        wishes = (stop.requested, self.dist.is_main and self.interval.overdue(cfg.train.log_every_s)) \
            if cfg.train.nan_check or log_due else None
        loss_sum, images, wait_s, flags = train_step(state, batches, self.ctx, wishes)
        state.samples_in_epoch = (step_in_epoch + 1) * parts.global_batch
        self.interval.add(loss_sum, images, wait_s)
        # The previous step's agreement, read now that this one is queued (no wait on it); where this step is a
        # sync point anyway (a line, a checkpoint, the end), its own too: nothing is logged or saved unagreed.
        agreed = self.agreement.exchange(flags, state.step)
        saving = self.saver.every_steps and state.step % self.saver.every_steps == 0
        if log_due or saving or epoch_end or state.step >= self.last_step:
            agreed = agreed.merge(self.agreement.read()) if agreed else self.agreement.read()
        if agreed is not None and agreed.nonfinite:
            raise non_finite_error(agreed, state.epoch)
        loss = None
        if log_due or (agreed is not None and agreed.log_now):
            # Sync point: the loss is read from the device (and averaged over ranks) here only.
            record = self.interval.record(state, res, parts.global_batch, self.dist.world_size)
            loss = record["loss"]
            self.emit(record)
        self.progress.step(loss)
        state.tracker = self.tracker.state or state.tracker  # the tracker may connect late
        self.saver.after_step()
        if agreed is not None and agreed.stop_signal:
            self.saver.save()
            self.status = "KILLED"
            raise StopRequested(agreed.stop_signal, state.step)

    def end_epoch(self, epoch: int, epoch_time_s: float) -> None:
        """Evaluate, record, checkpoint: the epoch is over only once all three are done."""
        cfg, parts, state, dist = self.cfg, self.parts, self.state, self.dist
        record = {"kind": "epoch", "step": state.step, "epoch": epoch, "epoch_time_s": epoch_time_s}
        is_last = epoch + 1 == cfg.train.epochs
        if parts.val_loader is not None and (is_last or (epoch + 1) % cfg.train.eval_every_epochs == 0):
            figures = evaluate(self.runner, parts.val_loader, dist, self.ctx.autocast, cfg.train.tta_flip)
            if state.ema is not None:
                ema = evaluate(state.ema, parts.val_loader, dist, self.ctx.autocast, cfg.train.tta_flip)
                figures.update({f"ema_{k}": v for k, v in ema.items()})
            record.update(within_classes(figures, cfg.model.num_classes))  # no top-5 on 5 classes or fewer
        state.epoch, state.samples_in_epoch = epoch + 1, 0
        self.emit(record)
        self.saver.save()
        if dist.is_main:
            self.tracker.log_artifact(write_curves(self.run_dir))  # the learning curves so far, as a picture

    def emit(self, record: dict) -> None:
        """Rank 0: the record to log.jsonl (the source of truth; the tracker reads it there), then the terminal."""
        record = dict(record)
        kind, step = record.pop("kind"), record.pop("step")
        self.log.write(kind, step, **record)
        if not self.log.enabled:
            return
        epochs = self.cfg.train.epochs
        self.progress.write(console.step_line({**record, "step": step}, epochs, self.total_steps) if kind == "step"
                            else console.epoch_lines(record, epochs))

    def read_log(self) -> list:
        """Rank 0: the run's records so far; each line not of our shape is passed over with an event, once."""
        skipped = []
        records = read_log(self.log.path, skipped)
        self.reported_lines.update(r.get("line") for r in records if r.get("event") == "log_line_skipped")
        for line, why in skipped:
            if line not in self.reported_lines and len(self.reported_lines) < MAX_LINE_EVENTS:
                self.log.write("event", self.state.step, event="log_line_skipped", line=line, reason=why)
        self.reported_lines.update(line for line, _ in skipped)
        return records

    def finish(self) -> None:
        """After every rank is through: the last checkpoint; then, on rank 0, the final weights (export/), the
        tracker's artifacts, the summary record and the DONE marker."""
        self.saver.save()
        if self.dist.is_main:
            state, tracker, log = self.state, self.tracker, self.log
            final = state.ema.module if state.ema is not None else state.model
            try:  # the work is done and saved: a disk that is full now is one line, and the same command finishes
                # export/ is the run's one final-weights file (weights/layout.py); the MLflow model holds it once
                export_dir = write_export(final, self.cfg, os.path.join(self.run_dir, EXPORT_DIR),
                                          dataset_class_names(self.cfg), extra={
                                              "run_name": self.cfg.run.name, "step": state.step, "epoch": state.epoch})
                tracker.log_artifact(rundir.config_path(self.run_dir))
                tracker.log_model(export_dir, (2, 3, self.cfg.data.val_res, self.cfg.data.val_res))
                # the run as a whole, all its attempts; the state knows the epochs best (it may have resumed
                # elsewhere)
                summary = {**summarize(self.read_log()), "epochs_done": state.epoch}
                log.write("summary", state.step, **summary)
                log.write("event", state.step, event="done")
                tracker.log_artifact(log.path)
                rundir.write_done(self.run_dir, state.step, state.epoch)
            except (OSError, RuntimeError) as e:  # torch's writer words a full disk as a RuntimeError
                raise FinalWriteError(f"could not write the final weights in {self.run_dir}: "
                                      f"{ckpt.write_failure(e)}; the checkpoint of step {state.step} is kept: make "
                                      f"room and run the same command again to finish the run") from None
            self.progress.close()
            self.say(console.summary({**summary, "step": state.step, "wall_s": time.perf_counter() - self.t_start},
                                     os.path.join(export_dir, WEIGHTS_FILE), log.path, tracker.describe()))
        self.status = "FINISHED"

    def close(self) -> None:
        """Whatever happened: the progress bar, log.jsonl (to disk), the tracker told how the run ended, the lock."""
        if self.progress is not None:
            self.progress.close()
        if self.log is not None:
            try:
                self.log.close()
            except OSError as e:  # a full disk: what it lost is lost; the error that ended the run is the one to see
                self.say(f"resnext_dist: warning: log.jsonl not flushed ({e.strerror or e})")
        if self.tracker is not None:
            signals = self.stop.count  # one more (Ctrl-C, scancel) ends a hung close at once
            self.tracker.close(self.status, give_up=lambda: self.stop.count > signals)
        if self.lock is not None:
            self.lock.release()


def _logged_after(log_path: str, step: int) -> int:
    """Steps an earlier attempt logged after `step` (the checkpoint resumed from): trained again, not lost unsaid."""
    return max([r["step"] - step for r in read_log(log_path) if r["kind"] == "step"] + [0])
