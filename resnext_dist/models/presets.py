"""The model's choices: the ResNeXt presets of the paper (Xie et al. 2017) and torchvision (`model.arch`: name ->
blocks per stage, cardinality, group width of the first stage) with the check of an arch name, and the stems
(`model.stem`). Torch-free, so the config checks read it without importing the network."""
from __future__ import annotations

import difflib
from typing import Tuple

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


def geometry(arch: str, layers=None, cardinality=None, group_width=None):
    """(blocks per stage, cardinality, group width) of `arch` with the overrides applied, as network.resnext does."""
    p_layers, p_card, p_width = PRESETS[arch]
    return list(layers or p_layers), cardinality or p_card, group_width or p_width


def size_estimate(cfg, res: int) -> Tuple[int, int]:
    """(parameters, activation values per image at `res` px) of the model section `cfg` (a ModelConfig), by
    arithmetic over network.py's layers, without building it: parameters exactly (a test holds it to
    sum(p.numel())); activations as a lower bound (each conv's output once; training keeps more for backward).
    Python integers: an absurd config gives a huge number, never an overflow or an allocation."""
    layers, cardinality, group_width = geometry(cfg.arch, cfg.layers, cfg.cardinality, cfg.group_width)
    base = cfg.base_channels
    kernel, side = (7, -(-res // 2)) if cfg.stem == "imagenet" else (3, res)
    params, values = 3 * base * kernel * kernel + 2 * base, base * side * side
    side = -(-side // 2) if cfg.stem == "imagenet" else side  # the max-pool
    in_ch = base
    for i, blocks in enumerate(layers):
        width, out, stride = cardinality * group_width * 2**i, base * 2**i * 4, 2 if i > 0 else 1
        block = in_ch * width + 2 * width + width * (width // cardinality) * 9 + 2 * width + width * out + 2 * out
        params += block + (in_ch * out + 2 * out if stride != 1 or in_ch != out else 0)  # the first, its shortcut
        values += width * side * side  # its conv1, at the input's side
        side = -(-side // stride)
        values += (width + out + (out if stride != 1 or in_ch != out else 0)) * side * side
        # the other blocks (stride 1, out -> out channels, no shortcut conv): counted at once, not looped over,
        # so that layers=[3,4,10**8,3] costs no more than [3,4,6,3]
        params += (blocks - 1) * (block - in_ch * width + out * width)
        values += (blocks - 1) * (2 * width + out) * side * side
        in_ch = out
    return params + in_ch * cfg.num_classes + cfg.num_classes, values
