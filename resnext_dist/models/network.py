"""ResNeXt (Xie et al., 2017, "Aggregated Residual Transformations for Deep Neural Networks").

Each block is the paper's Fig. 3(c) form: a dense 1x1 conv, a 3x3 conv with `cardinality` groups, and a
1x1 conv to 4x the stage width, with BN after each and ReLU; a projection shortcut (1x1 conv + BN)
where the stride or channel count changes. The stride sits on the 3x3 conv (ResNet "v1.5", as in
torchvision). The grouped conv of stage i is cardinality x group_width x 2^i channels wide.

Two departures of the CIFAR text this project started from are corrected here, following the paper:
its first 1x1 conv of each block was grouped (the paper's is dense), and its ResNeXt-152 used
[3, 4, 36, 3] blocks where the paper's 152-layer depth is [3, 8, 36, 3]. Its CIFAR stem is kept as
`stem="cifar"` (3x3/1 conv, no max-pool), and `num_classes` is honoured (it hard-coded 100).

With the imagenet stem, parameter names and shapes equal torchvision's ResNet, so torchvision or timm
weights load with strict=True.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from resnext_dist.models.presets import PRESETS


EXPANSION = 4


class BlurConv2d(nn.Conv2d):
    """A strided conv that first low-pass filters its input (Zhang 2019, "Making CNNs shift-invariant").

    The blur kernel is a non-persistent buffer, so the state_dict is the plain conv's and weights
    move freely between blurred and plain models.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :]) / 16.0
        self.register_buffer("blur", k.expand(self.in_channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.blur.to(x.dtype), padding=1, groups=self.in_channels)
        return super().forward(x)


def _conv(in_ch, out_ch, kernel, stride=1, groups=1, blurpool=False) -> nn.Conv2d:
    cls = BlurConv2d if (blurpool and stride > 1 and in_ch >= 16) else nn.Conv2d
    return cls(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)


class Bottleneck(nn.Module):
    """1x1 dense -> 3x3 grouped (stride here) -> 1x1 to planes*4, plus the shortcut."""

    def __init__(self, in_ch: int, planes: int, width: int, cardinality: int, stride: int,
                 blurpool: bool = False):
        super().__init__()
        out_ch = planes * EXPANSION
        self.conv1 = _conv(in_ch, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride=stride, groups=cardinality, blurpool=blurpool)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, out_ch, 1)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(_conv(in_ch, out_ch, 1, stride=stride, blurpool=blurpool),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNeXt(nn.Module):
    def __init__(self, layers: Sequence[int], cardinality: int, group_width: int, num_classes: int = 1000,
                 stem: str = "imagenet", base_channels: int = 64, zero_init_residual: bool = True,
                 blurpool: bool = False):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, base_channels, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(3, base_channels, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"unknown stem {stem!r}")
        self.bn1 = nn.BatchNorm2d(base_channels)
        self.relu = nn.ReLU(inplace=True)

        in_ch = base_channels
        for i, num_blocks in enumerate(layers):
            planes = base_channels * 2**i
            width = cardinality * group_width * 2**i
            blocks: List[nn.Module] = []
            for b in range(num_blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(Bottleneck(in_ch, planes, width, cardinality, stride, blurpool))
                in_ch = planes * EXPANSION
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts at zero, so the net starts as a shallow one (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnext(arch: str, num_classes: int = 1000, stem: str = "imagenet", layers: Optional[Sequence[int]] = None,
            cardinality: Optional[int] = None, group_width: Optional[int] = None, base_channels: int = 64,
            zero_init_residual: bool = True, blurpool: bool = False) -> ResNeXt:
    """A preset by name; `layers`, `cardinality`, `group_width` override the preset's values."""
    if arch not in PRESETS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(PRESETS)}")
    p_layers, p_card, p_width = PRESETS[arch]
    return ResNeXt(list(layers or p_layers), cardinality or p_card, group_width or p_width, num_classes,
                   stem, base_channels, zero_init_residual, blurpool)


def build_model(cfg) -> ResNeXt:
    """Build from the `model` section of the config (resnext_dist.config.ModelConfig)."""
    return resnext(cfg.arch, cfg.num_classes, cfg.stem, cfg.layers, cfg.cardinality, cfg.group_width,
                   cfg.base_channels, cfg.zero_init_residual, cfg.blurpool)


def _constructor(arch: str):
    def build(num_classes: int = 1000, stem: str = "imagenet", **kw) -> ResNeXt:
        return resnext(arch, num_classes, stem, **kw)  # an unknown keyword is a TypeError naming it

    build.__name__ = build.__qualname__ = arch
    build.__doc__ = (f"ResNeXt {arch} ({PRESETS[arch][0]} blocks, cardinality {PRESETS[arch][1]}, group width "
                     f"{PRESETS[arch][2]}); keywords as resnext()'s (layers, cardinality, base_channels, ...).")
    return build


resnext50_32x4d = _constructor("resnext50_32x4d")
resnext101_32x4d = _constructor("resnext101_32x4d")
resnext101_32x8d = _constructor("resnext101_32x8d")
resnext101_64x4d = _constructor("resnext101_64x4d")
resnext152_32x4d = _constructor("resnext152_32x4d")
assert set(PRESETS) == {"resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d", "resnext101_64x4d",
                        "resnext152_32x4d"}, "a preset without a constructor"
