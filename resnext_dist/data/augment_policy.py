"""TrivialAugmentWide and RandAugment per image, on a batch on the device, with torchvision's own operations and
magnitudes: the choices are drawn from keyed uniforms (data/keyed.py), the pixels are changed by torchvision's
transforms.v2 (its `_AUGMENTATION_SPACE` tables and `_apply_image_or_video_transform`), so the operation set, the
magnitude bins and the sign rule are torchvision's, not a copy that could drift.

torchvision draws one policy per call, so applied to a batch it would give every image the same operation; here
each image gets its own draw, and images that drew the same (operation, magnitude) go through torchvision in one
call: a batch of 256 made 163 groups (TrivialAugmentWide) and 22 per operation slot (RandAugment, one magnitude)
in one seeded count (docs/performance.md). uint8 in, uint8 out, as torchvision's reference recipe applies them
(before the conversion to float).
"""
from __future__ import annotations

from itertools import groupby
from typing import List, Tuple

import numpy as np
import torch
from torchvision.transforms import v2

DRAWS_PER_OP = 3  # per operation slot and image: which operation, which magnitude bin, which sign


class KeyedPolicy:
    """`policy(uint8 (N, 3, H, W), uniforms (N, draws)) -> uint8 (N, 3, H, W)`, each image its own operations."""

    def __init__(self, tv_policy, num_ops: int, fixed_bin: int = -1):
        self.tv, self.num_ops, self.fixed_bin = tv_policy, num_ops, fixed_bin
        self.space = tv_policy._AUGMENTATION_SPACE
        self.names = tuple(self.space)
        self.draws = DRAWS_PER_OP * num_ops

    def choices(self, u: np.ndarray, height: int, width: int) -> List[List[Tuple[str, float]]]:
        """Per operation slot, per image: (operation, signed magnitude), as torchvision's forward draws them."""
        bins = self.tv.num_magnitude_bins
        table = {name: fn(bins, height, width) for name, (fn, _) in self.space.items()}  # once per batch
        slots = []
        for slot in range(self.num_ops):
            which, level, sign = (u[:, DRAWS_PER_OP * slot + k] for k in range(DRAWS_PER_OP))
            row = []
            for n in range(len(u)):
                name = self.names[int(which[n] * len(self.names))]
                signed, magnitudes = self.space[name][1], table[name]
                magnitude = 0.0
                if magnitudes is not None:
                    b = self.fixed_bin if self.fixed_bin >= 0 else int(level[n] * bins)
                    magnitude = float(magnitudes[b])
                    if signed and sign[n] <= 0.5:  # torchvision: torch.rand(()) <= 0.5 negates
                        magnitude = -magnitude
                row.append((name, magnitude))
            slots.append(row)
        return slots

    def __call__(self, images: torch.Tensor, u: np.ndarray) -> torch.Tensor:
        """In place: `images` is the batch's own uint8 copy (augment_batch.py makes it). Per operation slot the
        images are sorted by their draw (one index sent to the device, without a sync), so each group is a
        contiguous slice: one gather, one torchvision call per group on a view, one scatter back."""
        out = images
        for row in self.choices(u, images.shape[-2], images.shape[-1]):
            order = sorted(range(len(row)), key=lambda n: row[n])
            index = torch.tensor(order).to(images.device, non_blocking=True)
            grouped = out.index_select(0, index)
            start = 0
            for choice, members in groupby(order, key=lambda n: row[n]):
                count = len(list(members))
                if choice[0] != "Identity":
                    part = grouped[start:start + count]
                    part.copy_(self.tv._apply_image_or_video_transform(
                        part, choice[0], choice[1], interpolation=self.tv.interpolation, fill=self.tv._fill))
                start += count
            out.index_copy_(0, index, grouped)
        return out


def trivialaugment() -> KeyedPolicy:
    return KeyedPolicy(v2.TrivialAugmentWide(), num_ops=1)


def randaugment() -> KeyedPolicy:
    tv = v2.RandAugment()  # torchvision's defaults: 2 operations, magnitude bin 9 of 31
    return KeyedPolicy(tv, num_ops=tv.num_ops, fixed_bin=tv.magnitude)
