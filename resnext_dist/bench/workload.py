"""What a bench measures, in the trainer's own words: `--config RECIPE` and `key=value` overrides, loaded and
validated by resnext_dist.config.load_config, so a model, data or training knob is defined once (the config
schema). Only what is the bench's own (steps, repeats, loaders, worker counts, device, output) is a flag.

    p = bench_parser("model", "the ceiling")    # --config, --print-config, key=value, --threads, --out, --mlflow
    args, device, cfg = start(p, argv)          # options and overrides in any order; a bad key or value:
                                                # InputError, one line, exit 2
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Sequence

import torch

from resnext_dist.config.arguments import arg_parser
from resnext_dist.config import TrainConfig, load_config, to_flat_dict, to_yaml
from resnext_dist.errors import InputError
from resnext_dist.models import PRESETS, build_model

# The trainer's defaults suit a GPU; on a CPU without a recipe a bench starts from these (your overrides win).
CPU_DEFAULTS = ["train.precision=fp32", "train.channels_last=false"]
SECTIONS = ("model", "data", "train", "optim")  # what decides a step's work: a result's params
# The table's columns -> the config keys they show (the rest of model.* and data.* is in the title).
COLUMNS = {"arch": "model.arch", "res": "data.train_res", "batch": "data.batch_size", "precision": "train.precision",
           "channels_last": "train.channels_last", "compile": "train.compile"}


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The config keys' listing as written, and each flag's default."""


def bench_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The trainer's command line (config.arguments.arg_parser) plus what every bench has: --threads and the output."""
    p = arg_parser(f"python -m resnext_dist.bench {name}", description,
                   "model.layers=[1,1,1,1] data.batch_size=32 train.compile=true")
    p.formatter_class = _Formatter
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default="", help="write the result as JSON to this file")
    g.add_argument("--mlflow", default="", metavar="URI", help="also log the result to this MLflow tracking URI")
    g.add_argument("--mlflow-experiment", default="resnext_dist-bench", help="MLflow experiment name")
    return p


def start(parser: argparse.ArgumentParser, argv, defaults: Sequence[str] = (),
          force: Sequence[str] = ("data.loader=synthetic",)):
    """Every bench's start: (args, device, cfg) from the command line: options and overrides in any order, torch's
    threads (--threads), the device (--device, where the bench has one), the validated config (load)."""
    args = parser.parse_intermixed_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(getattr(args, "device", "auto"))
    return args, device, load(args, device.type, defaults=defaults, force=force)


def overrides(args, device_type: str, defaults: Sequence[str] = ()) -> List[str]:
    """The bench's `defaults` and CPU_DEFAULTS (on a CPU) when no --config is given, then the command line's."""
    first = [*defaults, *(CPU_DEFAULTS if device_type == "cpu" else [])] if not args.config else []
    return first + list(args.overrides)


def load(args, device_type: str, defaults: Sequence[str] = (), owned: Dict[str, str] = None,
         force: Sequence[str] = ()) -> TrainConfig:
    """The validated config; `owned`: {key: flag} for the keys the bench sets itself (an override is refused);
    `force`: what the bench measures whatever the recipe says (data.loader=synthetic: no data needed)."""
    for item in args.overrides:
        key = item.split("=", 1)[0]
        if key in (owned or {}):
            raise InputError(f"{key}: set by the bench; use {owned[key]}")
    cfg = load_config(args.config, overrides(args, device_type, defaults) + list(force))
    if args.print_config:
        print(to_yaml(cfg), end="")
        raise SystemExit(0)
    return cfg


def extra_overrides(args) -> List[str]:
    """The overrides neither the title nor the columns show (train.nan_check=false, optim.*): row labels
    carry them, so A/B runs stay apart in a combined table."""
    return [o for o in args.overrides if not o.startswith(("model.", "data.")) and o.split("=")[0] not in
            COLUMNS.values()]


def num_parameters(cfg: TrainConfig) -> int:
    """What DDP all-reduces each step, from the model built on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        model = build_model(cfg.model)
    return sum(p.numel() for p in model.parameters())


def label(cfg: TrainConfig) -> str:
    """`resnext50_32x4d[layers=1,1,1,1,C=2,w=4,base=8] 16px batch 4 fp32 NCHW eager, N parameters`."""
    m, t, net = cfg.model, cfg.train, cfg.model.arch
    if (m.layers, m.cardinality, m.group_width, m.base_channels) != (None, None, None, 64):
        layers, cardinality, width = PRESETS[m.arch]  # any override: the whole net, the rest from the preset
        net += (f"[layers={','.join(map(str, m.layers or layers))},C={m.cardinality or cardinality},"
                f"w={m.group_width or width},base={m.base_channels}]")
    return (f"{net} {cfg.data.train_res}px batch {cfg.data.batch_size} {t.precision} "
            f"{'channels_last' if t.channels_last else 'NCHW'} {'compiled' if t.compile else 'eager'}, "
            f"{num_parameters(cfg):,} parameters")


def columns(cfg: TrainConfig) -> Dict:
    flat = to_flat_dict(cfg)
    return {column: flat[key] for column, key in COLUMNS.items()}


def params(cfg: TrainConfig) -> Dict:
    flat = to_flat_dict(cfg)
    return {**{k: v for k, v in flat.items() if k.split(".")[0] in SECTIONS}, "num_parameters": num_parameters(cfg)}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
