"""The config schema: one dataclass per concern, composed into `TrainConfig`, each field with its default
and a one-line doc (the string after it; `--help` prints them, resnext_dist/cli.py), and the allowed values
of the string choices. Loading, validation and output are in config.py, which re-exports all of this.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


@dataclass
class ModelConfig:
    arch: str = "resnext50_32x4d"
    "preset: resnext50_32x4d | resnext101_32x4d | resnext101_32x8d | resnext101_64x4d | resnext152_32x4d"
    stem: str = "imagenet"
    "imagenet (7x7/2 conv + max-pool) or cifar (3x3/1 conv, no pool) for small images"
    num_classes: int = 1000
    "number of output classes"
    layers: Optional[List[int]] = None
    "blocks per stage, overriding the preset (e.g. [1,1,1,1] for a tiny test net)"
    cardinality: Optional[int] = None
    "groups in each 3x3 conv, overriding the preset"
    group_width: Optional[int] = None
    "channels per group in the first stage, overriding the preset"
    base_channels: int = 64
    "stem channels and first-stage width (outputs are 4x); 64 in the paper, smaller for tiny nets"
    zero_init_residual: bool = True
    "start each block's last BN gamma at 0 so every block begins as the identity"
    blurpool: bool = False
    "anti-aliased downsampling: blur before every strided conv with >= 16 input channels"
    sync_bn: bool = False
    "SyncBatchNorm: BN statistics over the global batch (one all-reduce per BN layer); off = per-rank batches"
    init: str = ""
    "weights to start from: a torchvision state_dict .pth, our export/ or final weights, or a checkpoint's model"


@dataclass
class DataConfig:
    loader: str = "synthetic"
    "ffcv | torchvision | synthetic"
    train: str = ""
    "training data: a .beton file (ffcv), an ImageFolder directory (torchvision), or embedded:digits/train"
    val: str = ""
    "validation data, same kind as data.train (embedded:digits/val); empty = no validation"
    batch_size: int = 256
    "images per process per micro-step"
    num_workers: int = 8
    "decoding workers per process"
    train_res: int = 224
    "training crop size (final size when progressive resizing is on)"
    val_res: int = 224
    "validation center-crop size"
    val_crop_ratio: float = 0.875
    "validation crop = val_res / val_crop_ratio resized, then center-cropped (224/256)"
    min_train_res: int = 0
    "progressive resizing: start at this size (0 = off), ramp linearly to train_res"
    ramp_start_epoch: int = 0
    "progressive resizing: first epoch of the ramp"
    ramp_end_epoch: int = 0
    "progressive resizing: epoch at which train_res is reached"
    random_crop: bool = True
    "random-resized-crop + flip for training; false = center crop, no flip (deterministic)"
    pad_crop: int = 0
    "> 0: CIFAR-style training crops instead (pad by this many pixels, random train_res crop, flip)"
    os_cache: bool = True
    "ffcv: let the OS page cache hold the .beton (shared by the processes of a node)"
    batches_ahead: int = 3
    "ffcv: batches prepared ahead of the training step"
    crop_decode: bool = True
    "ffcv: decode only each crop of a JPEG and shrink it with our INTER_AREA (faster); false = FFCV's decoders"
    decode: str = "cpu"
    "ffcv: cpu = FFCV's workers decode; gpu = decode, crop (the same after a resume), flip, normalize on the device"
    synthetic_size: int = 2048
    "synthetic: images per epoch (split across ranks)"
    val_synthetic_size: int = 256
    "synthetic: validation images"


@dataclass
class TrainingConfig:
    epochs: int = 90
    "passes over the training data"
    precision: str = "bf16"
    "bf16 | fp16 | fp32 (bf16 and fp16 use autocast; fp16 adds a GradScaler)"
    channels_last: bool = True
    "NHWC memory format for the model and inputs (faster convolutions on tensor cores)"
    compile: bool = False
    "torch.compile the model"
    seed: int = 0
    "seed for weights, data order and augmentation"
    grad_clip_norm: float = 0.0
    "clip the gradient norm to this value (0 = off)"
    ema_decay: float = 0.0
    "exponential moving average of the weights per optimizer step (0 = off); the EMA is evaluated too"
    tta_flip: bool = False
    "evaluation adds the logits of the horizontally flipped image"
    log_every_steps: int = 50
    "log loss, lr, img/s to log.jsonl every N optimizer steps (the only host sync in the step)"
    log_every_s: float = 30.0
    "also log a line when this many seconds passed since the last one (0 = steps only; needs train.nan_check)"
    eval_every_epochs: int = 1
    "run validation every N epochs (and always after the last)"
    max_steps: int = 0
    "stop after this many optimizer steps (0 = run all epochs); for smoke tests and benchmarks"
    cudnn_benchmark: bool = True
    "let cuDNN pick the fastest kernels (GPU only)"
    deterministic: bool = False
    "use deterministic algorithms (slower); resume-equality tests set it"
    progress_bar: bool = True
    "tqdm bar on rank 0 when stdout is a terminal"
    nan_check: bool = True
    "all ranks agree on a finite loss before each optimizer step (one small all-reduce per step)"


@dataclass
class OptimConfig:
    lr: float = 0.1
    "peak learning rate per 256 images (scaled by global batch / 256 when scale_lr)"
    scale_lr: bool = True
    "multiply lr by global_batch_size / 256"
    momentum: float = 0.9
    "SGD momentum"
    nesterov: bool = True
    "Nesterov momentum"
    weight_decay: float = 5e-5
    "L2 weight decay (not applied to BN parameters or biases)"
    label_smoothing: float = 0.1
    "label smoothing of the cross-entropy"
    schedule: str = "cosine"
    "cosine | step | linear (all per iteration, after the warm-up)"
    warmup_epochs: float = 0.0
    "linear warm-up from lr*warmup_start_factor to lr over this many epochs"
    warmup_start_factor: float = 0.01
    "warm-up starts at this fraction of the peak lr"
    milestones: List[int] = field(default_factory=lambda: [30, 60, 80])
    "step schedule: epochs at which the lr is multiplied by gamma"
    gamma: float = 0.1
    "step schedule: factor at each milestone"
    global_batch_size: int = 0
    "images per optimizer step over all processes; 0 = data.batch_size x world size (more = accumulation)"


@dataclass
class DistConfig:
    backend: str = "auto"
    "auto (nccl on GPU, gloo on CPU) | nccl | gloo"
    timeout_s: int = 600
    "collective timeout: a rank stuck this long ends the job with an error instead of hanging"
    bucket_cap_mb: int = 25
    "DDP gradient bucket size"
    gradient_as_bucket_view: bool = True
    "DDP gradients alias the all-reduce buckets (saves a copy and memory)"


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    "save every N optimizer steps (0 = only at epoch ends)"
    resume: str = "auto"
    "auto (newest valid checkpoint in the run dir) | never | PATH to a checkpoint file"
    keep: int = 3
    "keep the newest K checkpoints"


@dataclass
class TrackingConfig:
    enabled: bool = True
    "mirror log.jsonl into MLflow (rank 0 only)"
    uri: str = ""
    "MLflow tracking URI; empty = sqlite store in run.root/mlflow.db; user:password@ / ?token= move to MLFLOW_TRACKING_*"
    experiment: str = "resnext_dist"
    "MLflow experiment name"
    system_metrics: bool = False
    "log CPU/memory/GPU usage through MLflow's system-metrics monitor"
    timeout_s: float = 5.0
    "HTTP timeout of one MLflow request; unsent records are retried with backoff (1 s doubling to 30 s)"
    close_timeout_s: float = 30.0
    "at the end, wait this long for what is unsent; the rest: next attempt or `python -m resnext_dist.tracking sync`"
    system_metrics_interval_s: float = 10.0
    "seconds between two samples of the system metrics"
    log_model: bool = True
    "at the end, log the final weights as an MLflow model (signature and input example included)"
    parent_run_id: str = ""
    "MLflow run this run is a child of (a sweep's parent run; set by launch/submit.py --sweep)"


@dataclass
class SlurmConfig:
    nodes: int = 1
    "nodes per job"
    gpus_per_node: int = 8
    "GPUs per node (0 for a CPU job)"
    tasks_per_node: int = 0
    "tasks (processes) per node; 0 = gpus_per_node (one task per GPU), or 1 when gpus_per_node is 0"
    cpus_per_task: int = 10
    "CPU cores per task (data-loading workers + 1)"
    mem_gb: int = 0
    "memory per node in GB (0 = the partition's default)"
    timeout_min: int = 1440
    "wall-clock limit per job in minutes"
    partition: str = ""
    "Slurm partition (empty = the cluster's default)"
    account: str = ""
    "Slurm account"
    qos: str = ""
    "Slurm QOS"
    constraint: str = ""
    "Slurm node constraint"
    exclusive: bool = False
    "whole nodes only"
    job_name: str = "resnext_dist"
    "Slurm job name"
    signal_delay_s: int = 120
    "seconds before the time limit at which the job is signalled to checkpoint and requeue"
    max_num_timeout: int = 3
    "requeues after a timeout before the job fails (preemptions always requeue)"
    array_parallelism: int = 64
    "a sweep (launch/submit.py --sweep): at most this many of its runs at once"
    folder: str = "${run.dir}/slurm"
    "submitit's folder for job scripts, pickles and logs (%j = job id)"
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    "extra sbatch options, e.g. {mail-type: END}"


@dataclass
class RunConfig:
    name: str = MISSING
    "name of the run (the run directory is run.root/run.name)"
    root: str = "runs"
    "folder holding run directories and the default MLflow store"
    dir: str = "${run.root}/${run.name}"
    "run directory: config.yaml, log.jsonl, checkpoints/, DONE"


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


CHOICES = {
    "model.stem": ("imagenet", "cifar"),
    "data.loader": ("ffcv", "torchvision", "synthetic"),
    "data.decode": ("cpu", "gpu"),
    "train.precision": ("bf16", "fp16", "fp32"),
    "optim.schedule": ("cosine", "step", "linear"),
    "dist.backend": ("auto", "nccl", "gloo"),
}


def _section_types() -> Dict[str, type]:
    """{section name: its dataclass}, in TrainConfig's order."""
    out = {}
    for f in dataclasses.fields(TrainConfig):
        out[f.name] = f.default_factory().__class__
    return out


def to_flat_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """{'model.arch': ..., ...}: MLflow params and config hashes use this."""
    out = {}
    for section, cls in _section_types().items():
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = getattr(getattr(cfg, section), f.name)
    return out
