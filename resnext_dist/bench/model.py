"""`python -m resnext_dist.bench model`: the ceiling, a bare training step on input already on the device.

    python -m resnext_dist.bench model train.compile=true          # ResNeXt-50 32x4d, batch 256, 224 px, bf16

Forward under autocast, label-smoothed cross-entropy, backward, SGD step with the trainer's parameter groups
(optim.build_optimizer), nothing else in the timed window: what `bench train` judges the trainer against.
"""
from __future__ import annotations

import gc
import time

import torch
import torch.nn.functional as F

from resnext_dist.compiling import compile_module
from resnext_dist.bench import report, workload
from resnext_dist.config import TrainConfig
from resnext_dist.errors import InputError
from resnext_dist.models import build_model
from resnext_dist.optim import build_optimizer
from resnext_dist.precision import PRECISIONS


def measure_ceiling(cfg: TrainConfig, device: torch.device, *, steps: int, warmup: int) -> dict:
    """Time `steps` bare training steps after `warmup` untimed ones; returns img/s and friends."""
    if steps < 1 or warmup < 0:
        raise InputError(f"--steps {steps} must be >= 1 and --warmup {warmup} >= 0")
    batch, res, t = cfg.data.batch_size, cfg.data.train_res, cfg.train
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer (train.cudnn_benchmark defaults to true)
        torch.cuda.reset_peak_memory_stats(device)
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    model = build_model(cfg.model).to(device, memory_format=fmt)
    optimizer = build_optimizer(model, cfg.optim, batch)
    runner = compile_module(model, t.compile_mode) if t.compile else model  # as the trainer does (run/build.py)
    scaler = torch.amp.GradScaler(device.type, enabled=PRECISIONS[t.precision].scaled)  # off: a pass-through
    autocast = PRECISIONS[t.precision].autocast(device)
    images = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, cfg.model.num_classes, (batch,), device=device)

    def step():
        with autocast():
            loss = F.cross_entropy(runner(images).float(), labels, label_smoothing=cfg.optim.label_smoothing)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def timed(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the queued kernels are part of the steps
        return time.perf_counter() - t0

    model.train()
    warmup_s, elapsed = timed(warmup), timed(steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    del runner, model, optimizer, images, labels
    release(device, compiled=t.compile)
    return {"img_per_s": batch * steps / elapsed, "step_ms": 1000.0 * elapsed / steps, "steps": steps,
            "warmup_steps": warmup, "warmup_s": warmup_s, "elapsed_s": elapsed, "peak_mem_mb": peak}


def release(device: torch.device, compiled: bool = False) -> None:
    """Give memory (and compiled graphs) back before the next measurement in the same process."""
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def ceiling_row(cfg: TrainConfig, m: dict) -> dict:
    return {"measure": "ceiling (bare step)", **workload.columns(cfg), "img_per_s": m["img_per_s"],
            "step_ms": m["step_ms"], "ratio": 1.0, "data_wait": None, "peak_mem_mb": m["peak_mem_mb"],
            "warmup_s": m["warmup_s"]}


def parser():
    p = workload.bench_parser("model", "The ceiling: a bare training step on synthetic input on the device.")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="where to run")
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (autotuning, compilation)")
    return p


def run(argv=None) -> int:
    args, device, cfg = workload.start(parser(), argv)
    m = measure_ceiling(cfg, device, steps=args.steps, warmup=args.warmup)
    return report.finish("model", device, args, argv, rows=[ceiling_row(cfg, m)],
                         title=f"bench model: {workload.label(cfg)} on {workload.device_label(device)}",
                         params={**workload.params(cfg), "device": device.type, "steps": args.steps,
                                 "warmup": args.warmup, "threads": torch.get_num_threads()},
                         summary={"ceiling_img_per_s": m["img_per_s"]})
