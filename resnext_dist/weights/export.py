"""Weights for use elsewhere: `export/` = model.safetensors (the state dict) + model.json (how to rebuild and feed it),
written by the trainer (rank 0, at the end) and read back by `resnext_dist.weights.load` (the model, in eval mode).

model.json holds the arch and the model.* keys that rebuild it (also as `key=value` overrides), the name of
the torchvision constructor whose state dict is the same (ImageNet-stem presets torchvision has:
`torchvision.models.resnext50_32x4d(num_classes=N).load_state_dict(safetensors.torch.load_file(...))` works with
strict=True), the class names, and the validation preprocessing (export_meta; predict.py applies it, so can anyone).
The safetensors file is written first and model.json last, each atomically, so a model.json always describes a
complete weights file (its sha256 is recorded, and load_model checks it).
Nothing in an export can run code: safetensors and JSON only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, List, Optional

import torch
from safetensors.torch import save

from resnext_dist.config.schema import ModelConfig
from resnext_dist.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from resnext_dist.errors import InputError, one_line
from resnext_dist.files import atomic_write
from resnext_dist.models import PRESETS, build_model
from resnext_dist.weights.init import init_model
from resnext_dist.weights.layout import META_FILE, WEIGHTS_FILE, export_folders

FORMAT = "resnext_dist.export"  # the format's name, not this module's path: exports written before the move read
VERSION = 1
TORCHVISION_ARCHS = ("resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d")  # torchvision.models has these


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP, torch.compile or an EMA AveragedModel."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            return model


def write_export(model: torch.nn.Module, cfg, export_dir: str, class_names: Optional[List[str]] = None,
                 extra: Optional[Dict[str, Any]] = None) -> str:
    """Write `export_dir`/model.safetensors and model.json for `model` built from `cfg` (a TrainConfig);
    `extra` (e.g. step, epoch, val_top1) is recorded under "run". Returns export_dir. Call on one rank."""
    model = unwrap(model)
    if class_names is not None and len(class_names) != cfg.model.num_classes:
        raise InputError(f"{len(class_names)} class names for model.num_classes={cfg.model.num_classes}")
    os.makedirs(export_dir, exist_ok=True)
    # contiguous: channels_last weights are stored in the standard layout every reader expects
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    blob = save(tensors, metadata={"format": "pt"})
    atomic_write(os.path.join(export_dir, WEIGHTS_FILE), blob)
    meta = export_meta(cfg, class_names, extra)
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    atomic_write(os.path.join(export_dir, META_FILE), json.dumps(meta, indent=2) + "\n")
    return export_dir


def dataset_class_names(cfg) -> Optional[List[str]]:
    """The class names the run's data records (the data.loader entry's: data.train's, else data.val's; see
    resnext_dist.data.sources.class_names_for), or None when none are recorded or they do not fit
    model.num_classes. What the trainer passes to write_export."""
    from resnext_dist.data import loader_for

    loader = loader_for(cfg.data)
    names = loader.class_names(loader.with_files(cfg.data))
    return names if names is not None and len(names) == cfg.model.num_classes else None


def export_meta(cfg, class_names: Optional[List[str]] = None, extra: Optional[Dict[str, Any]] = None) -> dict:
    """model.json's content (without the weights' sha256)."""
    model_keys = {f.name: getattr(cfg.model, f.name) for f in dataclasses.fields(ModelConfig) if f.name != "init"}
    model_keys["layers"] = list(model_keys["layers"]) if model_keys["layers"] is not None else None
    defaults = ModelConfig()
    overrides = [f"model.{k}={_dot(v)}" for k, v in model_keys.items() if v != getattr(defaults, k)]
    return {
        "format": FORMAT, "version": VERSION,
        "arch": cfg.model.arch,
        "model": model_keys,
        "overrides": overrides,
        "torchvision": torchvision_name(cfg.model),
        "class_names": list(class_names) if class_names is not None else None,
        "preprocessing": {
            "size": cfg.data.val_res, "crop_ratio": cfg.data.val_crop_ratio,
            "crop": "centered square of side int(crop_ratio * shorter side), resized to size x size "
                    "(bilinear, antialiased)",
            "channels": "RGB", "scale": "1/255", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "layout": "NCHW",
        },
        "weights": WEIGHTS_FILE,
        "run": dict(extra or {}),
    }


def _dot(value) -> str:
    """A value as a dotlist override writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def torchvision_name(model_cfg) -> Optional[str]:
    """The torchvision.models constructor with this exact architecture and state dict, if there is one."""
    if model_cfg.arch not in TORCHVISION_ARCHS or model_cfg.stem != "imagenet" or model_cfg.base_channels != 64:
        return None
    layers, cardinality, width = PRESETS[model_cfg.arch]
    same = ((model_cfg.layers is None or list(model_cfg.layers) == layers)
            and model_cfg.cardinality in (None, cardinality) and model_cfg.group_width in (None, width))
    return model_cfg.arch if same else None


def meta_path(path: str) -> str:
    """model.json for an export directory, a run directory (its export/), model.json or model.safetensors."""
    if os.path.isdir(path):
        for candidate in (os.path.join(folder, META_FILE) for folder in export_folders(path)):
            if os.path.isfile(candidate):
                return candidate
        raise InputError(f"{path}: no {META_FILE} (not an export directory nor a run directory with export/)")
    if path.endswith(".safetensors"):
        path = os.path.join(os.path.dirname(path), META_FILE)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file (an export's {META_FILE})")
    return path


def read_meta(path: str) -> dict:
    """The parsed model.json of the export at `path`; InputError naming the file if it is not one."""
    path = meta_path(path)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable export description ({one_line(e, 200)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("model"), dict):
        raise InputError(f"{path}: not a resnext_dist export description (format {FORMAT!r})")
    if meta.get("version", 0) > VERSION:
        raise InputError(f"{path}: export version {meta['version']} is newer than this resnext_dist reads "
                         f"({VERSION}); upgrade resnext_dist")
    meta["_path"] = path
    return meta


def model_config(meta: dict):
    """The ModelConfig that rebuilds the exported model."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(meta["model"]) - known)
    if unknown:
        raise InputError(f"{meta['_path']}: model keys this resnext_dist does not know: {', '.join(unknown)}")
    return ModelConfig(**meta["model"])


def load_model(path: str, map_location="cpu") -> torch.nn.Module:
    """Rebuild the exported model at `path` (export dir, run dir, model.json or model.safetensors), eval mode."""
    meta = read_meta(path)
    model = build_model(model_config(meta))
    weights = os.path.join(os.path.dirname(meta["_path"]), meta.get("weights", WEIGHTS_FILE))
    if meta.get("sha256") and os.path.isfile(weights):
        with open(weights, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != meta["sha256"]:  # another export's weights beside this model.json
            raise InputError(f"{weights}: not the weights {meta['_path']} describes (sha256 differs)")
    init_model(model, weights, new_classifier_ok=False)
    return model.to(map_location).eval()
