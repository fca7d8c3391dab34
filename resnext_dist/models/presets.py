"""The ResNeXt presets of the paper (Xie et al. 2017) and torchvision: name -> (blocks per stage, cardinality, group
width of the first stage). Torch-free, so the config checks read it without importing the network."""
from __future__ import annotations

PRESETS = {
    "resnext50_32x4d": ([3, 4, 6, 3], 32, 4),
    "resnext101_32x4d": ([3, 4, 23, 3], 32, 4),
    "resnext101_32x8d": ([3, 4, 23, 3], 32, 8),
    "resnext101_64x4d": ([3, 4, 23, 3], 64, 4),
    "resnext152_32x4d": ([3, 8, 36, 3], 32, 4),
}
