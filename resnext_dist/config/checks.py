"""Every config value checked when the config loads, against what torch, FFCV, OpenCV, Slurm and the OS accept
when they use it later: one rule per key of config_schema.py (`RULES`; a test keeps it complete), then the rules
that tie keys together. The first bad value raises `InputError` with one line naming the key, before any
process group, data or Slurm time is spent.

Types are OmegaConf's job (a string where an int belongs never gets here); booleans need no rule.
Importing this module imports no torch.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from typing import Any, Callable, Dict, Optional

from resnext_dist.config.schema import CHOICES, TrainConfig, _section_types
from resnext_dist.errors import InputError

Rule = Callable[[Any], Optional[str]]  # value -> what is wrong with it, or None

MAX_RES = 4096  # px: beyond any classification recipe; a typo like 22400 would exhaust memory at the first batch
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_TIMEOUT_S = 10**7  # ~4 months; far beyond it Python's timedelta (the process group's timeout) overflows


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return str(list(value))
    return str(value)


def _fail(key: str, value: Any, problem: str) -> InputError:
    return InputError(f"{key}={_show(value)}: {problem}")


# ---- rules for one value


def positive(v):
    return None if v > 0 else "must be > 0"


def non_negative(v):
    return None if v >= 0 else "must be >= 0"


def at_least(lo):
    return lambda v: None if v >= lo else f"must be >= {lo}"


def between(lo, hi, *, lo_open=False, hi_open=False):
    """lo <= v <= hi, with either end open."""
    def rule(v):
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return None if ok else f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return rule


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


def one_of(key: str) -> Rule:
    return lambda v: None if v in CHOICES[key] else f"must be one of {', '.join(CHOICES[key])}"


def resolution(v):
    return None if 1 <= v <= MAX_RES else f"must be in [1, {MAX_RES}] px"


def block_counts(v):
    return None if len(v) == 4 and min(v) >= 1 else "must be 4 positive block counts"


def increasing_epochs(v):
    ok = all(m >= 1 for m in v) and all(a < b for a, b in zip(v, v[1:]))
    return None if ok else "must be increasing epochs >= 1"


def text(v):
    """A value that goes into file names, logs and MLflow: printable, one line."""
    return None if printable(v) else "must be printable text on one line (no newline or control character)"


def nonempty_text(v):
    return "must not be empty" if not v else text(v)


def run_name(v):
    if not v or "/" in v or v in (".", ".."):
        return "must be a non-empty name without '/'"
    return text(v)


def sbatch_value(v):
    """A value submitit writes on one `#SBATCH --key=value` line (shell-quoted, but a line break would still
    start a new line of the script)."""
    if not printable(str(v)):
        return "cannot go on one #SBATCH line: it holds a newline or another control character"
    return None


def job_name(v):
    if not v or any(c.isspace() for c in v):
        return "must be a non-empty name without spaces"
    return sbatch_value(v)


SBATCH_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")


def sbatch_options(v):
    if not isinstance(v, dict):
        return "must be a mapping of sbatch option -> value"
    for name, value in v.items():
        if not isinstance(name, str) or not SBATCH_OPTION.match(name):
            return f"option name {name!r} is not an sbatch option name (letters, digits, '-', '_')"
        if not isinstance(value, (str, int, float, bool)):
            return f"option {name}: value must be a string, number or true"
        if sbatch_value(value):
            return f"option {name}: {sbatch_value(value)}"
    return None


def printable(s: str) -> bool:
    return s.isprintable()  # False for newline, CR, tab, other C0/C1 controls and line/paragraph separators


def tracking_uri(v):
    if text(v):
        return text(v)
    scheme, sep, rest = v.partition("://")
    if sep and scheme in ("http", "https") and not rest.split("/", 1)[0]:
        return "an http(s) URI needs a host"
    return None


def typed(v):
    return None  # the type is all there is to check (booleans)


# Every key of config_schema.py. Cross-key rules (and those needing the filesystem) are in `validate` below.
RULES: Dict[str, Rule] = {
    "model.arch": nonempty_text, "model.stem": one_of("model.stem"), "model.num_classes": positive,
    "model.layers": optional(block_counts), "model.cardinality": optional(at_least(1)),
    "model.group_width": optional(at_least(1)), "model.base_channels": positive,
    "model.zero_init_residual": typed, "model.blurpool": typed, "model.sync_bn": typed,
    "model.init": text,  # read (and refused, naming the file) when the run starts, like the data paths

    "data.loader": one_of("data.loader"), "data.train": text, "data.val": text, "data.batch_size": positive,
    "data.num_workers": non_negative, "data.train_res": resolution, "data.val_res": resolution,
    # val_res / val_crop_ratio is the resize before the center crop: a tiny ratio asks OpenCV for a huge image.
    "data.val_crop_ratio": between(0.25, 1), "data.min_train_res": between(0, MAX_RES),
    "data.ramp_start_epoch": non_negative, "data.ramp_end_epoch": non_negative, "data.random_crop": typed,
    "data.pad_crop": non_negative, "data.os_cache": typed,
    # FFCV's queue of ready batches is Queue(batches_ahead): 0 would make it unbounded over reused buffers.
    "data.batches_ahead": at_least(1), "data.crop_decode": typed, "data.decode": one_of("data.decode"),
    "data.synthetic_size": positive, "data.val_synthetic_size": non_negative,

    "train.epochs": positive, "train.precision": one_of("train.precision"), "train.channels_last": typed,
    "train.compile": typed, "train.seed": between(0, MAX_SEED), "train.grad_clip_norm": non_negative,
    "train.ema_decay": between(0, 1, hi_open=True), "train.tta_flip": typed, "train.log_every_steps": positive,
    "train.log_every_s": non_negative,
    "train.eval_every_epochs": positive, "train.max_steps": non_negative, "train.cudnn_benchmark": typed,
    "train.deterministic": typed, "train.progress_bar": typed, "train.nan_check": typed,

    "optim.lr": positive, "optim.scale_lr": typed, "optim.momentum": between(0, 1, hi_open=True),
    "optim.nesterov": typed, "optim.weight_decay": non_negative,
    "optim.label_smoothing": between(0, 1, hi_open=True), "optim.schedule": one_of("optim.schedule"),
    "optim.warmup_epochs": non_negative,
    # torch's LinearLR: "Starting multiplicative factor expected to be greater than 0 and less or equal to 1"
    "optim.warmup_start_factor": between(0, 1, lo_open=True), "optim.milestones": increasing_epochs,
    "optim.gamma": positive, "optim.global_batch_size": non_negative,

    "dist.backend": one_of("dist.backend"), "dist.timeout_s": between(1, MAX_TIMEOUT_S), "dist.bucket_cap_mb": positive,
    "dist.gradient_as_bucket_view": typed,

    "checkpoint.every_steps": non_negative, "checkpoint.resume": nonempty_text, "checkpoint.keep": at_least(1),

    "tracking.enabled": typed, "tracking.uri": tracking_uri, "tracking.experiment": nonempty_text,
    "tracking.system_metrics": typed, "tracking.timeout_s": positive, "tracking.close_timeout_s": non_negative,
    "tracking.system_metrics_interval_s": positive, "tracking.parent_run_id": text,

    "slurm.nodes": at_least(1), "slurm.gpus_per_node": non_negative, "slurm.tasks_per_node": non_negative,
    "slurm.cpus_per_task": at_least(1), "slurm.mem_gb": non_negative, "slurm.timeout_min": at_least(1),
    "slurm.partition": sbatch_value, "slurm.account": sbatch_value, "slurm.qos": sbatch_value,
    "slurm.constraint": sbatch_value, "slurm.exclusive": typed, "slurm.job_name": job_name,
    "slurm.signal_delay_s": non_negative, "slurm.max_num_timeout": non_negative, "slurm.folder": sbatch_value,
    "slurm.additional_parameters": sbatch_options, "slurm.array_parallelism": at_least(1),

    "run.name": run_name, "run.root": nonempty_text, "run.dir": nonempty_text,
}


# ---- the whole config


def get_key(cfg: TrainConfig, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def validate(cfg: TrainConfig, world_size: int = 1) -> None:
    """Raise InputError for the first bad value; `world_size` enables the batch-division checks."""
    for section, cls in _section_types().items():
        for name in cls.__dataclass_fields__:
            key = f"{section}.{name}"
            value = get_key(cfg, key)
            if isinstance(value, float) and not math.isfinite(value):
                raise _fail(key, value, "must be a finite number")
            rule = RULES.get(key)
            problem = rule(value) if rule else None
            if problem:
                raise _fail(key, value, problem)
    _check_together(cfg)
    _check_dir_can_be(cfg.run.dir, "run.dir")
    if cfg.tracking.enabled and not cfg.tracking.uri:  # the default MLflow store: run.root/mlflow.db
        _check_dir_can_be(cfg.run.root, "run.root")
    if world_size > 1 or cfg.optim.global_batch_size:
        grad_accum_steps(cfg, world_size)


def _check_together(cfg: TrainConfig) -> None:
    from resnext_dist.data.embedded import check_name, is_embedded
    from resnext_dist.models import PRESETS

    m, d, o = cfg.model, cfg.data, cfg.optim
    if m.arch not in PRESETS:
        near = difflib.get_close_matches(m.arch, PRESETS, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise InputError(f"model.arch={m.arch!r} is not a known preset{hint}; known: {', '.join(PRESETS)}")
    if d.loader != "synthetic" and not d.train:
        raise InputError(f"data.train is required when data.loader={d.loader}")
    for key in ("data.train", "data.val"):
        path = get_key(cfg, key)
        if is_embedded(path):
            check_name(path, key)
            # synthetic data ignores the paths: the embedded default with data.loader=synthetic is fine
            if d.loader == "torchvision":
                raise InputError(f"{key}={path!r} is an FFCV dataset: it needs data.loader=ffcv")
    if d.min_train_res:
        if not d.min_train_res <= d.train_res:
            raise InputError(f"data.min_train_res={d.min_train_res} must be <= data.train_res={d.train_res}")
        if not d.ramp_start_epoch <= d.ramp_end_epoch:
            raise InputError("data.ramp_start_epoch must be <= data.ramp_end_epoch")
    # synthetic data has nothing to decode (data.decode is ignored there); pad_crop has no GPU form for any loader
    if d.decode == "gpu" and (d.loader == "torchvision" or d.pad_crop):
        raise InputError(f"data.decode=gpu needs data.loader=ffcv and data.pad_crop=0 (got data.loader={d.loader}, "
                         f"data.pad_crop={d.pad_crop}); use data.decode=cpu")
    if d.pad_crop and d.pad_crop >= d.train_res:
        raise InputError(f"data.pad_crop={d.pad_crop} must be smaller than data.train_res={d.train_res}")
    if o.nesterov and o.momentum == 0:
        # torch.optim.SGD: "Nesterov momentum requires a momentum and zero dampening"
        raise InputError("optim.nesterov=true needs optim.momentum > 0 (or set optim.nesterov=false)")
    resume = cfg.checkpoint.resume
    if resume not in ("auto", "never") and not os.path.isfile(resume):
        raise InputError(f"checkpoint.resume={resume!r}: no such checkpoint file")


def _check_dir_can_be(path: str, key: str) -> None:
    """`path` is, or can be made, a directory this user can write; checked without creating anything."""
    target = os.path.abspath(path)
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise InputError(f"{key}={path!r}: exists and is not a directory")
        if not os.access(target, os.W_OK | os.X_OK):
            raise InputError(f"{key}={path!r}: not writable by this user")
        return
    parent = os.path.dirname(target)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"{key}={path!r}: cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{key}={path!r}: cannot be created: {parent} is not writable by this user")


def grad_accum_steps(cfg: TrainConfig, world_size: int) -> int:
    """Micro-steps per optimizer step so that the global batch stays `optim.global_batch_size`."""
    per_step = cfg.data.batch_size * world_size
    target = cfg.optim.global_batch_size or per_step
    if target % per_step:
        raise InputError(
            f"optim.global_batch_size={target} is not a multiple of data.batch_size={cfg.data.batch_size}"
            f" x world size {world_size}")
    return target // per_step
