"""Weights from a file into a model: `model.init=PATH`, evaluate and predict all read weights here.

    note = init_model(model, "resnext50_32x4d-1a0047aa.pth")   # one line for the banner / log.jsonl

What PATH may be (`read_state_dict`):
  - a plain state_dict file, as torchvision saves its downloads (~/.cache/torch/hub/checkpoints/*.pth) and as
    our trainer writes final_weights.pt; keys saved from a DDP or compiled model (`module.`, `_orig_mod.`)
    are accepted too;
  - our export (resnext_dist/export.py): its directory, model.json or model.safetensors;
  - a training checkpoint (resnext_dist.run.checkpoint): its `model` entry only;
  - a run directory: its export/, else final_weights.pt, else its newest checkpoint.
Nothing read can run code: pickles go through `torch.load(weights_only=True)` (tensors, containers, and the
numpy arrays of a checkpoint's RNG state, nothing else), safetensors holds tensors only. A file that would
need more is refused with InputError naming it; its code never runs.

The load is strict. The one exception is the classifier (`fc.weight`, `fc.bias`) when its shape differs,
i.e. model.num_classes differs from the weights': the model keeps its freshly initialized classifier and
the note says so (fine-tuning on a new label set). Anything else that does not fit is an InputError naming
the file and the first keys.
"""
from __future__ import annotations

import os
import pickle
from typing import Dict, Tuple

import numpy as np
import torch

from resnext_dist.errors import InputError, one_line

CLASSIFIER = ("fc.weight", "fc.bias")
# The numpy pieces a checkpoint's RNG state needs (np.random.get_state() is an array in a tuple). They
# rebuild arrays of plain dtypes; they call nothing else.
_NUMPY_GLOBALS = [np._core.multiarray._reconstruct, np._core.multiarray.scalar, np.ndarray, np.dtype,
                  np.dtypes.UInt32DType, np.dtypes.Int64DType, np.dtypes.Float64DType]
_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def torch_load_safe(path: str):
    """`torch.load(path, weights_only=True)` onto the CPU; a file that needs anything else (its pickle names
    other globals: it would run code) or is not a torch file raises InputError naming it."""
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a page of advice; the reason is the text after "WeightsUnpickler error:"
        reason = " ".join(str(e).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0].split())
        reason = reason.split(" was not an allowed global")[0]
        if "GLOBAL" in reason or "global" in reason:
            raise InputError(f"{path}: refused: not a plain weights file, loading it would run code "
                             f"({reason[:160]})") from None
        raise InputError(f"{path}: refused: not a weights file torch.load(weights_only=True) reads "
                         f"({reason[:160]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable weights file ({type(e).__name__}: {one_line(e, 200)})") from None


def resolve(path: str) -> Tuple[str, str]:
    """(file to read, what it is) for any PATH the module docstring lists; InputError if there is none."""
    if not path:
        raise InputError("no weights given (model.init is empty)")
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or directory (weights)")
    if os.path.isdir(path):
        for candidate, kind in ((os.path.join(path, "model.safetensors"), "export"),
                                (os.path.join(path, "export", "model.safetensors"), "export"),
                                (os.path.join(path, "final_weights.pt"), "final weights")):
            if os.path.isfile(candidate):
                return candidate, kind
        from resnext_dist.run.checkpoint import find_latest
        latest = find_latest(os.path.join(path, "checkpoints"))
        if latest:
            return latest, "checkpoint"
        raise InputError(f"{path}: a directory with no weights (no model.safetensors, export/, final_weights.pt "
                         "or checkpoints/)")
    if path.endswith(".json"):
        return os.path.join(os.path.dirname(path), "model.safetensors"), "export"
    if path.endswith(".safetensors"):
        return path, "export"
    return path, "state dict"


def read_state_dict(path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """(state dict on the CPU, a few words on what `path` was); InputError for anything unreadable or unsafe."""
    file, kind = resolve(path)
    if kind == "export":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(file), "export"
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{file}: unreadable safetensors file ({one_line(e, 200)})") from None
    obj = torch_load_safe(file)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "step" in obj:
        obj, kind = obj["model"], f"checkpoint at step {obj['step']}"
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # timm / Lightning wrapping
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{file}: not a state dict (expected a dict of tensors, a checkpoint or an export)")
    return {_strip(k): v for k, v in obj.items()}, kind


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def init_model(model: torch.nn.Module, path: str, new_classifier_ok: bool = True) -> str:
    """Load the weights at `path` into `model` (strict; see the module docstring) and return a one-line note.
    `new_classifier_ok=False` (evaluate, predict) makes a classifier of another shape an error too."""
    sd, kind = read_state_dict(path)
    file = resolve(path)[0]  # the file read, which messages name (PATH may be a directory)
    own = model.state_dict()
    new_classifier = new_classifier_ok and all(
        k in sd and k in own and sd[k].shape != own[k].shape for k in CLASSIFIER)
    if new_classifier:
        old_classes = sd["fc.weight"].shape[0]
        sd = {k: v for k, v in sd.items() if k not in CLASSIFIER}
    # BatchNorm's step counter is absent from files saved before PyTorch 0.4.1; it is only bookkeeping.
    allowed_missing = {k for k in own if k.endswith("num_batches_tracked")} | (set(CLASSIFIER) if new_classifier
                                                                              else set())
    missing = [k for k in own if k not in sd and k not in allowed_missing]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in sd and sd[k].shape != v.shape]
    problems = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                if keys]
    if problems:
        raise InputError(f"{file}: weights do not fit this model ({'; '.join(problems)})")
    model.load_state_dict(sd, strict=False)  # strictness checked above, with the exceptions it allows
    note = f"weights from {file} ({kind}, {len(sd)} tensors)"
    if new_classifier:
        note += (f"; classifier fc re-initialized for {own['fc.weight'].shape[0]} classes "
                 f"(the weights have {old_classes})")
    return note

