"""The model's choices: the ResNeXt presets of the paper (Xie et al. 2017) and torchvision (`model.arch`: name ->
blocks per stage, cardinality, group width of the first stage) with the check of an arch name, and the stems
(`model.stem`). Torch-free, so the config checks read it without importing the network."""
from __future__ import annotations

import difflib

from resnext_dist.errors import InputError

PRESETS = {
    "resnext50_32x4d": ([3, 4, 6, 3], 32, 4),
    "resnext101_32x4d": ([3, 4, 23, 3], 32, 4),
    "resnext101_32x8d": ([3, 4, 23, 3], 32, 8),
    "resnext101_64x4d": ([3, 4, 23, 3], 64, 4),
    "resnext152_32x4d": ([3, 8, 36, 3], 32, 4),
}

STEMS = {
    "imagenet": "7x7/2 conv + max-pool",
    "cifar": "3x3/1 conv, no pool, for small images",
}


def known_arch(arch: str) -> None:
    """model.arch's rule: a preset, or InputError with the nearest one (a line of its own, for the hint)."""
    if arch in PRESETS:
        return None
    near = difflib.get_close_matches(arch, PRESETS, n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise InputError(f"model.arch={arch!r} is not a known preset{hint}; known: {', '.join(PRESETS)}")
