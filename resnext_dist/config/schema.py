"""The config schema: one dataclass per section, composed into `TrainConfig`. Each key is declared once, with
`key(default, rule, doc, identity=...)`: its default, the rule its value must follow (rules.py; a choice's rule is
`one_of` its registry), the one-line doc `--help` prints, and whether it belongs to the run's identity (identity.py:
a key that may change between attempts of one run, such as where and how fast it runs, says identity=False).
Validation (checks.py), --help (arguments.py), the identity and its hash read these declarations; no other table
of keys exists. Booleans need no rule (their type is the rule). Importing it imports no torch.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from omegaconf import MISSING

from resnext_dist.config.rules import (MAX_RES, MAX_SEED, MAX_TIMEOUT_S, Rule, at_least, between, block_counts,
                                       data_path, increasing_epochs, non_negative, nonempty_text, one_of, optional,
                                       positive, resolution, resume_from, run_name, sbatch_job_name, sbatch_options,
                                       sbatch_value, text, tracking_uri)
from resnext_dist.data.augment import POLICIES
from resnext_dist.data.loaders import CHOICES as LOADER_CHOICES, ORDERS, SYNTHETIC_CLASSES
from resnext_dist.models.presets import PRESETS, STEMS, known_arch
from resnext_dist.optim.losses import LOSSES
from resnext_dist.optim.optimizers import OPTIMIZERS
from resnext_dist.optim.schedules import SCHEDULES
from resnext_dist.compiling import COMPILE_MODES
from resnext_dist.precision import PRECISIONS


def key(default: Any, rule: Optional[Rule], doc: str, identity: bool = True, zero_is_runs_own: bool = False):
    """A config key's one declaration (a dataclass field; OmegaConf ignores the metadata). `zero_is_runs_own`: an
    identity key whose 0 means "the run's own value", so a 0 on either side is never another run."""
    meta = {"rule": rule, "doc": doc, "identity": identity, "zero_is_runs_own": zero_is_runs_own}
    if isinstance(default, (list, dict)):  # a fresh copy per config, as dataclasses require
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    arch: str = key("resnext50_32x4d", known_arch, f"preset: {' | '.join(PRESETS)}")
    stem: str = key("imagenet", one_of(STEMS), " or ".join(f"{name} ({what})" for name, what in STEMS.items()))
    num_classes: int = key(0, non_negative, "number of output classes; 0 = the data's (a .beton's classes.json, an "
                           f"ImageFolder's class folders, the digits' 10; {SYNTHETIC_CLASSES} for synthetic data)")
    layers: Optional[List[int]] = key(None, optional(block_counts), "blocks per stage, overriding the preset (e.g. "
                                      "[1,1,1,1] for a tiny test net)")
    cardinality: Optional[int] = key(None, optional(at_least(1)), "groups in each 3x3 conv, overriding the preset")
    group_width: Optional[int] = key(None, optional(at_least(1)), "channels per group in the first stage, overriding "
                                     "the preset")
    base_channels: int = key(64, positive, "stem channels and first-stage width (outputs are 4x); 64 in the paper, "
                             "smaller for tiny nets")
    zero_init_residual: bool = key(True, None, "start each block's last BN gamma at 0 so every block begins as the "
                                   "identity")
    blurpool: bool = key(False, None, "anti-aliased downsampling: blur before every strided conv with >= 16 input "
                         "channels")
    sync_bn: bool = key(False, None, "SyncBatchNorm: BN statistics over the global batch (one all-reduce per BN "
                        "layer); off = per-rank batches")
    # read (and refused, naming the file) when the run starts, like the data paths
    init: str = key("", text, "weights to start from: a torchvision state_dict .pth, our export/ or final weights, "
                    "or a checkpoint's model")


@dataclass
class DataConfig:
    loader: str = key("auto", one_of(LOADER_CHOICES), " | ".join(LOADER_CHOICES) + " (auto follows data.train: a "
                      ".beton -> ffcv, a folder -> torchvision; training with data.train empty is an error: "
                      "synthetic = random images, only when asked for)")
    train: str = key("", data_path, "training data: a .beton file (ffcv), an ImageFolder directory (torchvision), or "
                     "embedded:digits/train")
    val: str = key("", data_path, "validation data, same kind as data.train (embedded:digits/val); empty = no "
                   "validation")
    # Memory, not identity: the run is its global batch (optim.global_batch_size), split by data/batches.py.
    batch_size: int = key(256, positive, "the largest micro-batch a process takes (its memory); with "
                          "optim.global_batch_size=0 it also sets a new run's global batch (x world size)",
                          identity=False)
    num_workers: int = key(8, non_negative, "decoding workers per process", identity=False)
    train_res: int = key(224, resolution, "training crop size (final size when progressive resizing is on)")
    val_res: int = key(224, resolution, "validation center-crop size")
    # val_res / val_crop_ratio is the resize before the center crop: a tiny ratio asks OpenCV for a huge image.
    val_crop_ratio: float = key(0.875, between(0.25, 1), "validation crop = val_res / val_crop_ratio resized, then "
                                "center-cropped (224/256)")
    min_train_res: int = key(0, between(0, MAX_RES), "progressive resizing: start at this size (0 = off), ramp "
                             "linearly to train_res")
    ramp_start_epoch: int = key(0, non_negative, "progressive resizing: first epoch of the ramp")
    ramp_end_epoch: int = key(0, non_negative, "progressive resizing: epoch at which train_res is reached")
    random_crop: bool = key(True, None, "random-resized-crop + flip for training; false = center crop, no flip "
                            "(deterministic)")
    pad_crop: int = key(0, non_negative, "> 0: CIFAR-style training crops instead (pad by this many pixels, random "
                        "train_res crop, flip)")
    os_cache: bool = key(True, None, "ffcv: let the OS page cache hold the .beton (shared by the processes of a "
                         "node)", identity=False)
    order: str = key("auto", one_of(ORDERS), "training order: random (an exact shuffle) | pages (exact too, read page "
                     "by page: for a .beton larger than memory) | auto (pages when data.os_cache=false: set it if "
                     "that may change on a resume)")
    shuffle_window: int = key(128, non_negative, "data.order=pages: pages mixed at a time, each process holding about "
                              "this many in memory (0 = all pages)")
    stage_dir: str = key("", text, "ffcv: copy each .beton here once per node and read that copy (a node-local "
                         "disk; $VARS such as $SLURM_TMPDIR expand on the node); empty = read in place", identity=False)
    # FFCV's queue of ready batches is Queue(batches_ahead): 0 would make it unbounded over reused buffers.
    batches_ahead: int = key(3, at_least(1), "ffcv: batches prepared ahead of the training step", identity=False)
    crop_decode: bool = key(True, None, "ffcv: decode only each crop of a JPEG and shrink it with our INTER_AREA "
                            "(faster); false = FFCV's decoders", identity=False)
    decode: str = key("cpu", one_of(("cpu", "gpu")), "ffcv: cpu = FFCV's workers decode; gpu = decode, crop (the "
                      "same after a resume), flip, normalize on the device", identity=False)
    decode_ahead: int = key(2, at_least(0), "decode=gpu: batches a background thread decodes ahead of the step "
                            "(on its own CUDA stream; 0 = in the step's thread)", identity=False)
    # Training augmentations on the device, per image, keyed by (seed, epoch, position): data/augment.py.
    auto_augment: str = key("none", one_of(POLICIES), f"{' | '.join(POLICIES)}: torchvision's policy per training "
                            "image, on the device")
    random_erasing: float = key(0.0, between(0, 1), "probability of erasing a random box of each training image")
    mixup_alpha: float = key(0.0, non_negative, "mixup's Beta(alpha, alpha) (0 = off); with cutmix one of the two "
                             "per micro-batch")
    cutmix_alpha: float = key(0.0, non_negative, "cutmix's Beta(alpha, alpha) (0 = off)")
    ra_reps: int = key(1, at_least(1), "repeated augmentation: each image this many times per epoch, copies on "
                       "different ranks (an epoch is then this many passes)")
    synthetic_size: int = key(2048, positive, "synthetic: images per epoch (split across ranks)")
    val_synthetic_size: int = key(256, non_negative, "synthetic: validation images")


@dataclass
class TrainingConfig:
    epochs: int = key(90, positive, "passes over the training data", identity=False)
    precision: str = key("bf16", one_of(PRECISIONS), f"{' | '.join(PRECISIONS)} (bf16 and fp16 use autocast; fp16 "
                         "adds a GradScaler)")
    channels_last: bool = key(True, None, "NHWC memory format for the model and inputs (faster convolutions on "
                              "tensor cores)")
    compile: bool = key(False, None, "torch.compile the model", identity=False)
    compile_mode: str = key("default", one_of(COMPILE_MODES), f"{' | '.join(COMPILE_MODES)}: torch.compile's mode "
                            "when train.compile=true (reduce-overhead: CUDA graphs of the compiled step)",
                            identity=False)
    seed: int = key(0, between(0, MAX_SEED), "seed for weights, data order and augmentation")
    grad_clip_norm: float = key(0.0, non_negative, "clip the gradient norm to this value (0 = off)")
    ema_decay: float = key(0.0, between(0, 1, hi_open=True), "exponential moving average of the weights per "
                           "optimizer step (0 = off); the EMA is evaluated too")
    tta_flip: bool = key(False, None, "evaluation adds the logits of the horizontally flipped image")
    log_every_steps: int = key(50, positive, "log loss, lr, img/s to log.jsonl every N optimizer steps (the only "
                               "host sync in the step)", identity=False)
    log_every_s: float = key(30.0, non_negative, "also log a line when this many seconds passed since the last one "
                             "(0 = steps only; needs train.nan_check)", identity=False)
    eval_every_epochs: int = key(1, positive, "run validation every N epochs (and always after the last)",
                                 identity=False)
    max_steps: int = key(0, non_negative, "stop after this many optimizer steps (0 = run all epochs); for smoke "
                         "tests and benchmarks", identity=False)
    cudnn_benchmark: bool = key(True, None, "let cuDNN pick the fastest kernels (GPU only)", identity=False)
    deterministic: bool = key(False, None, "use deterministic algorithms (slower); resume-equality tests set it")
    progress_bar: bool = key(True, None, "tqdm bar on rank 0 when stdout is a terminal", identity=False)
    nan_check: bool = key(True, None, "all ranks agree on a finite loss and gradient at each step (one small "
                          "all-reduce on the device; a non-finite step is skipped there, read a step later)",
                          identity=False)


@dataclass
class OptimConfig:
    lr: float = key(0.1, positive, "peak learning rate per 256 images (scaled by global batch / 256 when scale_lr)")
    scale_lr: bool = key(True, None, "multiply lr by global_batch_size / 256")
    optimizer: str = key("sgd", one_of(OPTIMIZERS), f"{' | '.join(OPTIMIZERS)} (torch.optim's)")
    momentum: float = key(0.9, between(0, 1, hi_open=True), "SGD momentum")
    nesterov: bool = key(True, None, "Nesterov momentum")
    weight_decay: float = key(5e-5, non_negative, "L2 weight decay (not applied to BN parameters or biases)")
    label_smoothing: float = key(0.1, between(0, 1, hi_open=True), "label smoothing of the cross-entropy")
    loss: str = key("ce", one_of(LOSSES), "ce (cross-entropy) | bce (binary cross-entropy per class, timm's RSB "
                    "recipes); both take mixup / cutmix targets and label smoothing")
    schedule: str = key("cosine", one_of(SCHEDULES), f"{' | '.join(SCHEDULES)} (all per iteration, after the warm-up)")
    warmup_epochs: float = key(0.0, non_negative, "linear warm-up from lr*warmup_start_factor to lr over this many "
                               "epochs")
    # torch's LinearLR: "Starting multiplicative factor expected to be greater than 0 and less or equal to 1"
    warmup_start_factor: float = key(0.01, between(0, 1, lo_open=True), "warm-up starts at this fraction of the peak "
                                     "lr")
    milestones: List[int] = key([30, 60, 80], increasing_epochs, "step schedule: epochs at which the lr is "
                                "multiplied by gamma")
    gamma: float = key(0.1, positive, "step schedule: factor at each milestone")
    global_batch_size: int = key(0, non_negative, "images per optimizer step over all processes, on any number of "
                                 "them (the run's identity); 0 = the run's own, or data.batch_size x world size "
                                 "for a new run", zero_is_runs_own=True)


@dataclass
class DistConfig:
    backend: str = key("auto", one_of(("auto", "nccl", "gloo")), "auto (nccl on GPU, gloo on CPU) | nccl | gloo",
                       identity=False)
    timeout_s: int = key(600, between(1, MAX_TIMEOUT_S), "collective timeout: a rank stuck this long ends the job "
                         "with an error instead of hanging", identity=False)
    bucket_cap_mb: int = key(25, positive, "DDP gradient bucket size", identity=False)
    gradient_as_bucket_view: bool = key(True, None, "DDP gradients alias the all-reduce buckets (saves a copy and "
                                        "memory)", identity=False)


@dataclass
class CheckpointConfig:
    every_steps: int = key(1000, non_negative, "save every N optimizer steps (0 = only at epoch ends)", identity=False)
    resume: str = key("auto", resume_from, "auto (newest valid checkpoint in the run dir) | never | PATH to a "
                      "checkpoint file", identity=False)
    keep: int = key(3, at_least(1), "keep the newest K checkpoints", identity=False)


@dataclass
class TrackingConfig:
    enabled: bool = key(True, None, "mirror log.jsonl into MLflow (rank 0 only)", identity=False)
    uri: str = key("", tracking_uri, "MLflow tracking URI; empty = sqlite store in run.root/mlflow.db; "
                   "user:password@ / ?token= move to MLFLOW_TRACKING_*", identity=False)
    experiment: str = key("resnext_dist", nonempty_text, "MLflow experiment name", identity=False)
    system_metrics: bool = key(False, None, "log CPU/memory/GPU usage through MLflow's system-metrics monitor",
                               identity=False)
    timeout_s: float = key(5.0, positive, "HTTP timeout of one MLflow request; unsent records are retried with "
                           "backoff (1 s doubling to tracking.retry_max_s)", identity=False)
    retry_max_s: float = key(30.0, at_least(1), "longest wait between two tries while MLflow does not answer (so "
                             "also how late a backlog may start once it is back)", identity=False)
    close_timeout_s: float = key(30.0, non_negative, "at the end, wait this long for what is unsent; the rest: next "
                                 "attempt or `python -m resnext_dist.tracking sync`", identity=False)
    system_metrics_interval_s: float = key(10.0, positive, "seconds between two samples of the system metrics",
                                           identity=False)
    log_model: bool = key(True, None, "at the end, log the final weights as an MLflow model (signature and input "
                          "example included)", identity=False)
    parent_run_id: str = key("", text, "MLflow run this run is a child of (a sweep's parent run; set by "
                             "launch/submit.py --sweep)", identity=False)


@dataclass
class SlurmConfig:
    nodes: int = key(1, at_least(1), "nodes per job", identity=False)
    gpus_per_node: int = key(8, non_negative, "GPUs per node (0 for a CPU job)", identity=False)
    tasks_per_node: int = key(0, non_negative, "tasks (processes) per node; 0 = gpus_per_node (one task per GPU), or "
                              "1 when gpus_per_node is 0", identity=False)
    cpus_per_task: int = key(10, at_least(1), "CPU cores per task (data-loading workers + 1)", identity=False)
    mem_gb: int = key(0, non_negative, "memory per node in GB (0 = the partition's default)", identity=False)
    timeout_min: int = key(1440, at_least(1), "wall-clock limit per job in minutes", identity=False)
    partition: str = key("", sbatch_value, "Slurm partition (empty = the cluster's default)", identity=False)
    account: str = key("", sbatch_value, "Slurm account", identity=False)
    qos: str = key("", sbatch_value, "Slurm QOS", identity=False)
    constraint: str = key("", sbatch_value, "Slurm node constraint", identity=False)
    exclusive: bool = key(False, None, "whole nodes only", identity=False)
    job_name: str = key("resnext_dist", sbatch_job_name, "Slurm job name", identity=False)
    signal_delay_s: int = key(120, non_negative, "seconds before the time limit at which the job is signalled to "
                              "checkpoint and requeue", identity=False)
    max_num_timeout: int = key(3, non_negative, "requeues after a timeout before the job fails (preemptions always "
                               "requeue)", identity=False)
    array_parallelism: int = key(64, at_least(1), "a sweep (launch/submit.py --sweep): at most this many of its runs "
                                 "at once", identity=False)
    folder: str = key("${run.dir}/slurm", sbatch_value, "submitit's folder for job scripts, pickles and logs (%j = "
                      "job id)", identity=False)
    additional_parameters: Dict[str, Any] = key({}, sbatch_options, "extra sbatch options, e.g. {mail-type: END}",
                                                identity=False)


@dataclass
class RunConfig:
    name: str = key(MISSING, run_name, "name of the run (the run directory is run.root/run.name)", identity=False)
    root: str = key("runs", nonempty_text, "folder holding run directories and the default MLflow store",
                    identity=False)
    dir: str = key("${run.root}/${run.name}", nonempty_text, "run directory: config.yaml, log.jsonl, checkpoints/, "
                   "DONE", identity=False)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    run: RunConfig = field(default_factory=RunConfig)


def section_types(schema=TrainConfig) -> Dict[str, type]:
    """{section name: its dataclass}, in the order of `schema`: a config, or its class (TrainConfig or a subclass)."""
    cfg = schema() if isinstance(schema, type) else schema
    return {f.name: type(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def declared_keys(schema=TrainConfig) -> Iterator[Tuple[str, dataclasses.Field]]:
    """('section.name', its field) for every key, in the schema's order; `field.metadata` holds the declaration."""
    for section, cls in section_types(schema).items():
        for f in dataclasses.fields(cls):
            yield f"{section}.{f.name}", f


def to_flat_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """{'model.arch': ..., ...}: MLflow params and config hashes use this."""
    return {name: get_key(cfg, name) for name, _ in declared_keys(cfg)}


def get_key(cfg: TrainConfig, name: str):
    section, leaf = name.split(".")
    return getattr(getattr(cfg, section), leaf)
