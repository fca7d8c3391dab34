"""`python -m resnext_dist.bench model`: the ceiling, a bare training step on input already on the device.

    python -m resnext_dist.bench model --arch resnext50_32x4d --batch 256 --res 224 --precision bf16 --compile
    python -m resnext_dist.bench model --layers 1,1,1,1 --cardinality 2 --group-width 4 --base-channels 8 \\
        --stem cifar --res 32 --batch 16 --precision fp32 --no-channels-last        # a tiny net on a CPU

The step is written out by hand: forward under autocast, label-smoothed cross-entropy, backward, SGD
(Nesterov) step, zero the gradients. No data loading, no DDP, no logging and no host sync inside the timed
window: this is what the device gives the model, and `bench train` judges the trainer against it, measured
again in the same process. The optimizer is optim.build_optimizer (same parameter groups as the trainer) so
both do the same arithmetic. Timing: CUDA events around the timed steps on a GPU (perf_counter after a
synchronize on a CPU); the warm-up steps (cuDNN autotuning, torch.compile) are left out and timed apart.

`Workload` (arch, batch, resolution, precision, memory format, compile, tiny-net overrides) is also what
`bench train` and `bench scaling` pass to the trainer as config overrides, so every bench runs one shape.
"""
from __future__ import annotations

import argparse
import gc
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from resnext_dist.bench import BenchError
from resnext_dist.bench import report
from resnext_dist.errors import InputError
from resnext_dist.config import ModelConfig, OptimConfig, load_config
from resnext_dist.models import build_model
from resnext_dist.models.resnext import PRESETS
from resnext_dist.optim import build_optimizer


@dataclass
class Workload:
    """One training shape; the ceiling and the trainer runs of a bench all use the same one."""

    arch: str = "resnext50_32x4d"
    batch: int = 256
    res: int = 224
    precision: str = "bf16"
    channels_last: bool = True
    compile: bool = False
    num_classes: int = 1000
    stem: str = "imagenet"
    layers: Optional[List[int]] = None
    cardinality: Optional[int] = None
    group_width: Optional[int] = None
    base_channels: int = 64
    label_smoothing: float = 0.1

    def trainer_overrides(self) -> List[str]:
        """The trainer's config keys for this shape (data.* and train.* that the shape decides)."""
        out = [f"model.arch={self.arch}", f"model.num_classes={self.num_classes}", f"model.stem={self.stem}",
               f"model.base_channels={self.base_channels}",
               f"data.batch_size={self.batch}", f"data.train_res={self.res}", f"data.val_res={self.res}",
               f"train.precision={self.precision}", f"train.channels_last={str(self.channels_last).lower()}",
               f"train.compile={str(self.compile).lower()}", f"optim.label_smoothing={self.label_smoothing}"]
        if self.layers is not None:
            out.append("model.layers=[" + ",".join(str(n) for n in self.layers) + "]")
        if self.cardinality is not None:
            out.append(f"model.cardinality={self.cardinality}")
        if self.group_width is not None:
            out.append(f"model.group_width={self.group_width}")
        return out

    def model_config(self) -> ModelConfig:
        """The model section as the trainer would build it (validated by the same code)."""
        return load_config(None, [o for o in self.trainer_overrides() if o.startswith("model.")]).model

    def label(self) -> str:
        net = self.arch
        if (self.layers, self.cardinality, self.group_width, self.base_channels) != (None, None, None, 64):
            # Any override: spell out the whole net, taking what is not overridden from the preset.
            layers, cardinality, width = PRESETS.get(self.arch, (None, None, None))
            layers = self.layers or layers
            net += (f"[layers={','.join(map(str, layers or ()))},C={self.cardinality or cardinality},"
                    f"w={self.group_width or width},base={self.base_channels}]")
        return (f"{net} {self.res}px batch {self.batch} {self.precision} "
                f"{'channels_last' if self.channels_last else 'NCHW'} {'compiled' if self.compile else 'eager'}, "
                f"{self.num_parameters():,} parameters")

    def num_parameters(self) -> int:
        """The model's parameter count (what DDP all-reduces each step), from a model built on the meta
        device: shapes only, no memory and no initialization."""
        with torch.device("meta"):
            model = build_model(self.model_config())
        return sum(p.numel() for p in model.parameters())

    def params(self) -> dict:
        return {**asdict(self), "num_parameters": self.num_parameters()}


# ----------------------------------------------------------------------------------------------
# Command-line arguments shared by model / train / scaling


def add_workload_args(p: argparse.ArgumentParser, *, batch: int = 256, res: int = 224) -> None:
    g = p.add_argument_group("workload (the same for the ceiling and the trainer)")
    g.add_argument("--arch", default="resnext50_32x4d", help="model preset (model.arch)")
    g.add_argument("--batch", type=int, default=batch, help="images per step per process (data.batch_size)")
    g.add_argument("--res", type=int, default=res, help="training crop size in px (data.train_res)")
    g.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="autocast precision; auto = bf16 on a GPU, fp32 on a CPU")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: on for a GPU, off for a CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (model.num_classes)")
    g.add_argument("--stem", default="imagenet", choices=("imagenet", "cifar"), help="model.stem")
    g.add_argument("--layers", default=None, help="blocks per stage overriding the preset, e.g. 1,1,1,1")
    g.add_argument("--cardinality", type=int, default=None, help="groups per 3x3 conv, overriding the preset")
    g.add_argument("--group-width", type=int, default=None, help="channels per group, overriding the preset")
    g.add_argument("--base-channels", type=int, default=64, help="stem/first-stage width (64 in the paper)")
    g.add_argument("--label-smoothing", type=float, default=0.1, help="of the cross-entropy")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")


def workload_from_args(args, device_type: str) -> Workload:
    """Resolve the auto defaults for `device_type` and validate through the trainer's own config checks."""
    layers = None
    if args.layers:
        try:
            layers = [int(n) for n in args.layers.split(",")]
        except ValueError:
            raise BenchError(f"--layers {args.layers!r}: expected 4 comma-separated block counts, e.g. 1,1,1,1")
    gpu = device_type == "cuda"
    w = Workload(arch=args.arch, batch=args.batch, res=args.res,
                 precision=args.precision if args.precision != "auto" else ("bf16" if gpu else "fp32"),
                 channels_last=gpu if args.channels_last is None else args.channels_last,
                 compile=args.compile, num_classes=args.num_classes, stem=args.stem, layers=layers,
                 cardinality=args.cardinality, group_width=args.group_width, base_channels=args.base_channels,
                 label_smoothing=args.label_smoothing)
    try:
        load_config(None, w.trainer_overrides())  # the trainer's validation: one line naming the bad key
    except InputError as e:
        raise BenchError(str(e)) from None
    return w


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device is visible")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------------------------
# The measurement


def measure_ceiling(w: Workload, device: torch.device, *, steps: int, warmup: int) -> dict:
    """Time `steps` bare training steps after `warmup` untimed ones; returns img/s and friends."""
    if steps < 1 or warmup < 0:
        raise BenchError(f"--steps {steps} must be >= 1 and --warmup {warmup} >= 0")
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer (train.cudnn_benchmark defaults to true)
        torch.cuda.reset_peak_memory_stats(device)
    fmt = torch.channels_last if w.channels_last else torch.contiguous_format
    model = build_model(w.model_config()).to(device, memory_format=fmt)
    optimizer = build_optimizer(model, OptimConfig(label_smoothing=w.label_smoothing), w.batch)
    runner = torch.compile(model) if w.compile else model
    scaler = torch.amp.GradScaler(device.type) if w.precision == "fp16" else None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(w.precision)
    images = torch.randn(w.batch, 3, w.res, w.res, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, w.num_classes, (w.batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(runner(images).float(), labels, label_smoothing=w.label_smoothing)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - t0

    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        end.synchronize()
        elapsed = start.elapsed_time(end) / 1000.0
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        elapsed = time.perf_counter() - t0
        peak = None
    del runner, model, optimizer, images, labels
    release(device, compiled=w.compile)
    return {"img_per_s": w.batch * steps / elapsed, "step_ms": 1000.0 * elapsed / steps, "steps": steps,
            "warmup_steps": warmup, "warmup_s": warmup_s, "elapsed_s": elapsed, "peak_mem_mb": peak}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device, compiled: bool = False) -> None:
    """Give memory (and compiled graphs) back before the next measurement in the same process."""
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def ceiling_row(w: Workload, m: dict) -> dict:
    return {"measure": "ceiling (bare step)", **workload_columns(w), "img_per_s": m["img_per_s"],
            "step_ms": m["step_ms"], "ratio": 1.0, "data_wait": None, "peak_mem_mb": m["peak_mem_mb"],
            "warmup_s": m["warmup_s"]}


def workload_columns(w: Workload) -> dict:
    return {"arch": w.arch, "res": w.res, "batch": w.batch, "precision": w.precision,
            "channels_last": w.channels_last, "compile": w.compile}


# ----------------------------------------------------------------------------------------------
# Command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resnext_dist.bench model",
                                description="The ceiling: a bare training step on synthetic input on the device.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_workload_args(p)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="where to run")
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (autotuning, compilation)")
    report.add_output_args(p)
    return p


def run(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    w = workload_from_args(args, device.type)
    m = measure_ceiling(w, device, steps=args.steps, warmup=args.warmup)
    rows = [ceiling_row(w, m)]
    params = {**w.params(), "device": device.type, "steps": args.steps, "warmup": args.warmup,
              "threads": torch.get_num_threads()}
    result = report.make_report("model", device, argv=argv, params=params, rows=rows,
                                summary={"ceiling_img_per_s": m["img_per_s"]})
    return report.finish(result, args, title=f"bench model: {w.label()} on {device_label(device)}")
