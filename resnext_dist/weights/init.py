"""Weights from a file into a model: `model.init=PATH`, evaluate and predict all read weights here (`init_model`
returns one line for the banner / log.jsonl).

PATH is what layout.find_weights finds: an export, a run directory, final_weights.pt, a training checkpoint (its
`model` entry only), or a plain state dict file as torchvision saves its downloads; keys saved from a DDP or
compiled model (`module.`, `_orig_mod.`) are accepted too.
Nothing read can run code: pickles go through safe_load.py, safetensors holds tensors only; a file that would need
more is refused with InputError naming it, and so is anything but a regular file (a FIFO is never waited on).

The load is strict. The one exception is the classifier (`fc.weight`, `fc.bias`) when its shape differs,
i.e. model.num_classes differs from the weights': the model keeps its freshly initialized classifier and
the note says so (fine-tuning on a new label set). Anything else that does not fit is an InputError naming
the file and the first keys.
"""
from __future__ import annotations

import hashlib
import os
from typing import Dict, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from resnext_dist.errors import InputError, one_line
from resnext_dist.files import open_regular
from resnext_dist.weights.layout import find_weights
from resnext_dist.weights.safe_load import safe_load

CLASSIFIER = ("fc.weight", "fc.bias")
_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def read_state_dict(path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """(state dict on the CPU, a few words on what `path` was); InputError for anything unreadable or unsafe."""
    file, kind = find_weights(path)
    if kind == "export":
        return read_safetensors(file), "export"
    obj = safe_load(file, "weights file")
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "step" in obj:
        obj, kind = obj["model"], f"checkpoint at step {obj['step']}"
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # timm / Lightning wrapping
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{file}: not a state dict (expected a dict of tensors, a checkpoint or an export)")
    return {_strip(k): v for k, v in obj.items()}, kind


def read_safetensors(file: str, max_bytes: int = 0, sha256: str = "") -> Dict[str, torch.Tensor]:
    """The tensors of the safetensors file `file`, read as a regular file (files.open_regular) at most `max_bytes`
    long (0: any length) whose bytes have the digest `sha256` when one is given: the bytes checked are the bytes
    loaded. InputError naming the file otherwise."""
    try:
        with open_regular(file, "a safetensors weights file") as f:
            size = os.fstat(f.fileno()).st_size
            if max_bytes and size > max_bytes:
                raise InputError(f"{file}: {size} bytes, more than the {max_bytes} its model can need")
            data = f.read()
    except OSError as e:
        raise InputError(f"{file}: unreadable safetensors file ({e.strerror or e})") from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise InputError(f"{file}: not the weights its model.json describes (sha256 differs)")
    try:
        return load(data)
    except (SafetensorError, ValueError) as e:
        raise InputError(f"{file}: unreadable safetensors file ({one_line(e, 200)})") from None


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def mismatch(own: Dict[str, torch.Tensor], sd: Dict[str, torch.Tensor], may_miss=()) -> str:
    """Why `sd` does not load strictly where `own` is the state dict: the first missing, unexpected and
    mismatching keys, with their counts ("" when it fits). Checkpoints' strict loads say it in these words too."""
    missing = [k for k in own if k not in sd and k not in may_miss]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in sd and hasattr(sd[k], "shape") and sd[k].shape != v.shape]
    return "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                     for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                     if keys)


def init_model(model: torch.nn.Module, path: str, new_classifier_ok: bool = True) -> str:
    """Load the weights at `path` into `model` (strict; see the module docstring) and return a one-line note.
    `new_classifier_ok=False` (evaluate, predict) makes a classifier of another shape an error too."""
    sd, kind = read_state_dict(path)
    # the file read, which messages name (PATH may be a directory)
    return load_weights(model, sd, find_weights(path)[0], kind, new_classifier_ok)


def load_weights(model: torch.nn.Module, sd: Dict[str, torch.Tensor], file: str, kind: str,
                 new_classifier_ok: bool = True) -> str:
    """init_model's load of the state dict `sd` read from `file` (`kind`: a few words on what it was)."""
    own = model.state_dict()
    new_classifier = new_classifier_ok and all(
        k in sd and k in own and sd[k].shape != own[k].shape for k in CLASSIFIER)
    if new_classifier:
        old_classes = sd["fc.weight"].shape[0]
        sd = {k: v for k, v in sd.items() if k not in CLASSIFIER}
    # BatchNorm's step counter is absent from files saved before PyTorch 0.4.1; it is only bookkeeping.
    allowed_missing = {k for k in own if k.endswith("num_batches_tracked")} | (set(CLASSIFIER) if new_classifier
                                                                              else set())
    problems = mismatch(own, sd, allowed_missing)
    if problems:
        raise InputError(f"{file}: weights do not fit this model ({problems})")
    model.load_state_dict(sd, strict=False)  # strictness checked above, with the exceptions it allows
    note = f"weights from {file} ({kind}, {len(sd)} tensors)"
    if new_classifier:
        note += (f"; classifier fc re-initialized for {own['fc.weight'].shape[0]} classes "
                 f"(the weights have {old_classes})")
    return note
