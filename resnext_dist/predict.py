"""Classify images: `python -m resnext_dist.predict WEIGHTS IMAGE_OR_DIR ... [key=value ...] [--top-k 5] [--json]`.

    python -m resnext_dist.predict runs/x/export photo.jpg more_photos/
    python -m resnext_dist.predict runs/x cat.png --top-k 3 --json
    python -m resnext_dist.predict resnext50_32x4d-7cdf4587.pth cat.jpg       # torchvision's ImageNet weights

WEIGHTS is an export (its directory, model.json or model.safetensors; weights/export.py), a run
directory (its export/, else its config.yaml with an earlier version's final_weights.pt or its newest
checkpoint), or any file model.init takes (a torchvision state dict, final weights, a checkpoint) with the architecture from --config
NAME|PATH and key=value overrides, as every command takes them (default: the config defaults, ResNeXt-50 32x4d with 1000 classes: torchvision's).
Each image gets the validation preprocessing the model was evaluated with (the export records it; otherwise
data.val_res and data.val_crop_ratio), exactly as the validation loaders do.
Class names come from the export, else from the run's data (resnext_dist.data.sources.class_names_for), else
they are the class indices.

Output, one line per image: `path: name 97.1%, name 1.5%, ...`; with --json, one JSON list
[{"image", "top": [{"class", "name", "prob"}, ...]}]. Exit 0; 2 on bad input (an unreadable image, a FIFO or
device where an image is expected, weights that do not fit, an export whose model.json does not check), one line
naming it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import List, Optional

import torch
from torchvision.transforms import v2

from resnext_dist.config import find_config, load_config
from resnext_dist.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from resnext_dist.data.sources import IMAGE_EXTENSIONS, read_image
from resnext_dist.data.torchvision import CenterCropRatio
from resnext_dist.errors import EXIT_BAD_INPUT, InputError
from resnext_dist.files import regular_file_problem
from resnext_dist.models import build_model
from resnext_dist.weights import init_model
from resnext_dist.weights.export import dataset_class_names, meta_path, model_from_meta, read_meta
from resnext_dist.weights.layout import WEIGHTS_FILE

BATCH = 32
OVERRIDE = re.compile(r"^[a-z_]+\.[a-z_0-9]+=")  # section.key=value: a config override, not an image path


@dataclass
class Predictor:
    model: torch.nn.Module  # eval mode
    size: int
    crop_ratio: float
    mean: List[float]
    std: List[float]
    class_names: Optional[List[str]]
    source: str  # a few words on where the weights came from


def load_predictor(path: str, config: Optional[str] = None, overrides=(), device="cpu") -> Predictor:
    """The model, its preprocessing and class names from WEIGHTS (see the module docstring)."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or directory (weights)")
    if not config and not overrides and _is_export(path):
        export = read_meta(path)  # checked: a hostile model.json is one line, never a model or a wrong answer
        pre = export["preprocessing"]
        return Predictor(model_from_meta(export, map_location=device), pre["size"], pre["crop_ratio"], pre["mean"],
                         pre["std"], export["class_names"], f"export {export['_path']}")
    run_config = os.path.join(path, "config.yaml") if os.path.isdir(path) else ""
    config = find_config(config) if config else config  # a path, or a recipe's name (quickstart)
    cfg = load_config(config or (run_config if os.path.isfile(run_config) else None), list(overrides))
    model = build_model(cfg.model)
    try:
        note = init_model(model, path, new_classifier_ok=False)
    except InputError as e:
        if config or run_config:
            raise
        raise InputError(f"{e}; a plain weights file carries no architecture: give --config (and "
                         "model.KEY=VALUE) or an export or run directory") from None
    return Predictor(model.to(device).eval(), cfg.data.val_res, cfg.data.val_crop_ratio, list(IMAGENET_MEAN),
                     list(IMAGENET_STD), dataset_class_names(cfg), note)


def _is_export(path: str) -> bool:
    """`path` names an export (whose model.json must then read), as opposed to weights that carry no description: a
    model.json or .safetensors file, or a folder with an export's model.json or model.safetensors."""
    if not os.path.isdir(path):
        return path.endswith((".json", ".safetensors"))
    try:
        return bool(meta_path(path))
    except InputError:
        return os.path.lexists(os.path.join(path, WEIGHTS_FILE))


def image_paths(args: List[str]) -> List[str]:
    """Files as given; directories walked (sorted) for image files. Each must be a regular file: a FIFO or a device
    named x.jpg is refused here by name, before the model is loaded (and again when opened: sources.read_image)."""
    out = []
    for arg in args:
        if os.path.isdir(arg):
            found = sorted(os.path.join(d, f) for d, _, files in os.walk(arg) for f in files
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise InputError(f"{arg}: no image files in this directory")
            out += found
        else:
            out.append(arg)
    for path in out:
        problem = regular_file_problem(path)
        if problem:
            raise InputError(f"{path}: {problem if problem != 'no such file' else 'no such image file or directory'}")
    if not out:
        raise InputError("no images given")
    return out


def preprocess(path: str, p: Predictor) -> torch.Tensor:
    """The validation loaders' transform (data/torchvision.py's center crop), then normalization: 3 x size x size."""
    img = read_image(path)
    img = v2.Resize((p.size, p.size), antialias=True)(CenterCropRatio(p.crop_ratio)(img))
    x = v2.PILToTensor()(img).float() / 255.0
    return (x - torch.tensor(p.mean).view(3, 1, 1)) / torch.tensor(p.std).view(3, 1, 1)


def predict(p: Predictor, paths: List[str], top_k: int = 5) -> List[dict]:
    """[{"image", "top": [{"class", "name", "prob"}, ...]}] in the order of `paths`."""
    device = next(p.model.parameters()).device
    results = []
    for start in range(0, len(paths), BATCH):
        chunk = paths[start:start + BATCH]
        x = torch.stack([preprocess(path, p) for path in chunk]).to(device)
        with torch.no_grad():
            probs = p.model(x).float().softmax(dim=1).cpu()
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
        for path, vs, ks in zip(chunk, values.tolist(), indices.tolist()):
            results.append({"image": path, "top": [
                {"class": k, "name": p.class_names[k] if p.class_names else str(k), "prob": v}
                for v, k in zip(vs, ks)]})
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resnext_dist.predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("weights", help="export dir / model.json, run dir, or a weights file (with --config)")
    p.add_argument("--top-k", type=int, default=5, help="classes per image")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of lines")
    p.add_argument("--config", metavar="FILE|NAME", help="recipe for the architecture and preprocessing of a plain "
                   "weights file: a path, or the name of one in configs/ (e.g. quickstart)")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR | key=value",
                   help="image files or directories of them; key=value: config overrides for a plain weights file "
                   "or a run directory (e.g. model.num_classes=3)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return p


def main(argv=None) -> int:
    args = parser().parse_intermixed_args(argv)  # images, options and key=value in any order
    overrides = [a for a in args.images if OVERRIDE.match(a)]
    try:
        if args.top_k < 1:
            raise InputError(f"--top-k {args.top_k} must be >= 1")
        paths = image_paths([a for a in args.images if a not in overrides])
        p = load_predictor(args.weights, args.config, overrides, args.device)
        results = predict(p, paths, args.top_k)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{r['image']}: " + ", ".join(f"{t['name']} {100 * t['prob']:.1f}%" for t in r["top"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
