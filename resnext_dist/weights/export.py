"""Weights for use elsewhere: `export/` = model.safetensors (the state dict) + model.json (how to rebuild and feed it),
written by the trainer (rank 0, at the end) and read back by `resnext_dist.weights.load` (the model, in eval mode).

model.json holds the arch and the model.* keys that rebuild it (also as `key=value` overrides), the name of
the torchvision constructor whose state dict is the same (ImageNet-stem presets torchvision has:
`torchvision.models.resnext50_32x4d(num_classes=N).load_state_dict(safetensors.torch.load_file(...))` works with
strict=True), the class names, and the validation preprocessing (export_meta; predict.py applies it, so can anyone).
The safetensors file is written first and model.json last, each atomically, so a model.json always describes a
complete weights file (its sha256 is recorded, and load_model checks it).
Nothing in an export can run code: safetensors and JSON only. And an export is data, not instructions: read_meta
checks every field anything reads (the model keys by the config's own rules, the model's size for this machine,
the preprocessing predict applies, the class names against the classifier, the weights file inside the folder)
before a model is built or a file opened; a bad one is one line naming model.json and the field.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, List, Optional

import torch
from safetensors.torch import save

from resnext_dist.config.checks import check_size, key_problem
from resnext_dist.config.schema import ModelConfig
from resnext_dist.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from resnext_dist.errors import InputError, one_line
from resnext_dist.files import atomic_write, open_regular
from resnext_dist.models import PRESETS, build_model
from resnext_dist.models.presets import size_estimate
from resnext_dist.weights.init import load_weights, read_safetensors
from resnext_dist.weights.layout import META_FILE, WEIGHTS_FILE, export_folders

FORMAT = "resnext_dist.export"  # the format's name, not this module's path: exports written before the move read
VERSION = 1
TORCHVISION_ARCHS = ("resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d")  # torchvision.models has these

# model.json is read back from a folder anyone may have written: it is data, checked as the config is (each model
# key's type and rule, the model's size for this machine) and against what predict applies, before anything is built.
MAX_META_BYTES = 64 * 2**20  # ~100k class names of any sensible length; a larger model.json is not ours
MAX_NAME = 1000  # characters of one class name
PREPROCESSING = {"channels": "RGB", "scale": "1/255", "layout": "NCHW"}  # what predict.py applies, nothing else
MIN_STD = 0.01  # a channel's spread below 1% of the pixel range: near-constant images, inputs scaled 100x and more


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
            **PREPROCESSING, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
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
            if os.path.lexists(candidate):
                return candidate
        raise InputError(f"{path}: no {META_FILE} (not an export directory nor a run directory with export/)")
    if path.endswith(".safetensors"):
        path = os.path.join(os.path.dirname(path), META_FILE)
    if not os.path.lexists(path):
        raise InputError(f"{path}: no such file (an export's {META_FILE})")
    return path


def read_meta(path: str) -> dict:
    """The checked model.json of the export at `path` (see meta_path), with "_path" (the file) and "_weights" (the
    weights file, inside the export folder) added; InputError naming the file and the field otherwise."""
    path = meta_path(path)
    try:
        with open_regular(path, f"an export's {META_FILE}") as f:
            if os.fstat(f.fileno()).st_size > MAX_META_BYTES:
                raise InputError(f"{path}: larger than {MAX_META_BYTES >> 20} MiB: not an export description")
            meta = json.loads(f.read(), parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: brackets nested thousands deep
        raise InputError(f"{path}: unreadable export description ({one_line(e, 200)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("model"), dict):
        raise InputError(f"{path}: not a resnext_dist export description (format {FORMAT!r})")
    problem = _version_problem(meta.get("version")) or _model_problem(meta) or _preprocessing_problem(
        meta.get("preprocessing")) or _class_names_problem(meta.get("class_names"), meta["model"]["num_classes"]) \
        or _sha256_problem(meta.get("sha256")) or _informative_problem(meta)
    if problem:
        raise InputError(f"{path}: {problem}")
    meta["_path"], meta["_weights"] = path, _weights_file(path, meta.get("weights"))
    return meta


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _version_problem(version) -> str:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"version {version!r}: must be a positive integer"
    if version > VERSION:
        return f"export version {version} is newer than this resnext_dist reads ({VERSION}); upgrade resnext_dist"
    return ""


def _model_problem(meta: dict) -> str:
    """Every model key known, typed and within its rule (config/checks.py, as for a config), arch as the top level
    says, and a model this machine can hold."""
    model = meta["model"]
    known = {f.name for f in dataclasses.fields(ModelConfig) if f.name != "init"}  # weights come from export/ only
    unknown = sorted(set(model) - known) or sorted(known - set(model))
    if unknown:
        return f"model keys {'this resnext_dist does not know' if set(unknown) - known else 'missing'}: " \
               f"{', '.join(map(str, unknown))[:200]}"
    problem = next(filter(None, (key_problem(f"model.{k}", v) for k, v in model.items())), "")
    if problem:
        return problem
    if model["num_classes"] < 1:  # 0 is a config's "the data's", resolved before any model is built or exported
        return f"model.num_classes={model['num_classes']}: must be > 0"
    if meta.get("arch") != model["arch"]:
        return f"arch {meta.get('arch')!r} is not the model's ({model['arch']!r})"
    try:
        check_size(ModelConfig(**model))
    except InputError as e:
        return str(e)
    return ""


def _preprocessing_problem(pre) -> str:
    """Size and crop ratio within data.val_res's and data.val_crop_ratio's rules, a mean and std per channel in
    range, and the channel order, scale and layout predict applies."""
    if not isinstance(pre, dict):
        return "preprocessing must be a mapping"
    problem = key_problem("data.val_res", pre.get("size")) or key_problem("data.val_crop_ratio", pre.get("crop_ratio"))
    if problem:
        return f"preprocessing: {problem}"
    for name, lo in (("mean", 0.0), ("std", MIN_STD)):
        values = pre.get(name)
        if not (isinstance(values, list) and len(values) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= 1 for v in values)):
            return (f"preprocessing.{name} {str(values)[:100]}: must be 3 numbers in [{lo}, 1] (one per RGB channel, "
                    "of pixels scaled to [0, 1])")
    for name, expected in PREPROCESSING.items():
        if pre.get(name) != expected:
            return f"preprocessing.{name} {str(pre.get(name))[:100]!r}: must be {expected!r} (what predict applies)"
    return ""


def _class_names_problem(names, num_classes: int) -> str:
    if names is None:
        return ""
    if not isinstance(names, list) or len(names) != num_classes:
        count = f"{len(names)} class names" if isinstance(names, list) else "class_names that are not a list"
        return f"{count} for the classifier's {num_classes} classes (model.num_classes)"
    for i, name in enumerate(names):
        if not (isinstance(name, str) and name.isprintable() and len(name) <= MAX_NAME):
            return f"class name {i} must be printable text on one line of at most {MAX_NAME} characters"
    return ""


def _informative_problem(meta: dict) -> str:
    """The fields a person or another tool reads (the overrides to rebuild it, the torchvision constructor, the crop
    in words, the run's figures): plain, of their type, so that nothing pasted from model.json does more."""
    overrides, tv, crop = meta.get("overrides"), meta.get("torchvision"), meta["preprocessing"].get("crop")
    if not (isinstance(overrides, list) and all(isinstance(o, str) and o.startswith("model.") and "=" in o
                                                and o.isprintable() and len(o) <= 200 for o in overrides)):
        return "overrides must be a list of model.KEY=VALUE texts"
    if tv is not None and tv not in TORCHVISION_ARCHS:
        return f"torchvision {str(tv)[:100]!r}: must be null or one of {', '.join(TORCHVISION_ARCHS)}"
    if not (isinstance(crop, str) and crop.isprintable() and len(crop) <= 1000):
        return "preprocessing.crop must be printable text (the crop in words)"
    if not isinstance(meta.get("run", {}), dict):
        return "run must be a mapping (the run's step, epoch, figures)"
    return ""


def _sha256_problem(sha) -> str:
    ok = sha is None or isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)
    return "" if ok else f"sha256 {str(sha)[:100]!r}: must be 64 lowercase hex digits"


def _weights_file(meta_file: str, name) -> str:
    """The weights file model.json names: a plain .safetensors name, its file inside the export folder (a link
    pointing out of it is refused too)."""
    folder = os.path.dirname(meta_file)
    if not (isinstance(name, str) and name.endswith(".safetensors") and name.isprintable() and
            name not in (".", "..") and "/" not in name and os.sep not in name and "\0" not in name):
        raise InputError(f"{meta_file}: weights {str(name)[:100]!r}: must be a .safetensors file name inside the "
                         "export folder")
    file = os.path.join(folder, name)
    if os.path.commonpath([os.path.realpath(file), os.path.realpath(folder)]) != os.path.realpath(folder):
        raise InputError(f"{meta_file}: weights {name!r} lead out of the export folder (to "
                         f"{os.path.realpath(file)}); only weights inside it are read")
    return file


def model_config(meta: dict) -> ModelConfig:
    """The ModelConfig that rebuilds the exported model (`meta` from read_meta: checked)."""
    return ModelConfig(**meta["model"])


def load_model(path: str, map_location="cpu") -> torch.nn.Module:
    """Rebuild the exported model at `path` (export dir, run dir, model.json or model.safetensors), eval mode."""
    return model_from_meta(read_meta(path), map_location)


def model_from_meta(meta: dict, map_location="cpu") -> torch.nn.Module:
    """The model a checked model.json (read_meta) describes, with its weights, in eval mode."""
    model_cfg = model_config(meta)
    params = size_estimate(model_cfg, 1)[0]
    # Another export's weights beside this model.json fail the sha256; a file far larger than the model is refused
    # before it is read (8 bytes a parameter: float64, the widest dtype a state dict holds, plus a header).
    sd = read_safetensors(meta["_weights"], max_bytes=8 * params + 2**24, sha256=meta.get("sha256") or "")
    model = build_model(model_cfg)
    load_weights(model, sd, meta["_weights"], "export", new_classifier_ok=False)
    return model.to(map_location).eval()
