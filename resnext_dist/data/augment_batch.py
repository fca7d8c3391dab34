"""A training micro-batch's augmentation on the device: `augment(images, labels, positions, epoch)` ->
(images, targets). In torchvision's reference order: the policy on the uint8 pixels (the loaders hand over
normalized floats, which are exact affine images of uint8 pixels, so the round trip loses nothing), random erasing
on the normalized image (fill 0, torchvision's default), then mixup or cutmix (one of them per micro-batch, 50/50
when both are on, each image mixed with its neighbour in the batch as torchvision's v2.MixUp / v2.CutMix do).

With a mix the targets are class probabilities (N, num_classes), which F.cross_entropy takes as they are, label
smoothing included (it composes as in torchvision's reference); without one they stay the int64 labels, so a run
with only the policy or erasing computes the loss exactly as before.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np
import torch

from resnext_dist.data import augment_policy
from resnext_dist.data.keyed import keyed_generator, keyed_uniforms
from resnext_dist.data.normalize import scale_shift

# Independent draws of one key (keyed.py's streams).
POLICY, ERASING, MIX = 1, 2, 3
# torchvision's RandomErasing defaults: the erased area's fraction and aspect ratio range, 10 tries.
ERASE_SCALE, ERASE_RATIO, ERASE_TRIES = (0.02, 0.33), (0.3, 3.3), 10


class BatchAugment:
    def __init__(self, *, policy: Optional[str], erasing: float, mixup_alpha: float, cutmix_alpha: float, seed: int,
                 num_classes: int, device):
        self.policy = getattr(augment_policy, policy)() if policy else None
        self.erasing, self.mixup_alpha, self.cutmix_alpha = erasing, mixup_alpha, cutmix_alpha
        self.seed, self.num_classes = seed, num_classes
        self.scale, self.shift = scale_shift(torch.device(device))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, positions: np.ndarray, epoch: int) \
            -> Tuple[torch.Tensor, torch.Tensor]:
        """In place where it can: `images` is the loader's batch, handed over for this step only."""
        if self.policy is not None:
            images = self.apply_policy(images, positions, epoch)
        if self.erasing > 0:
            images = self.erase(images, positions, epoch)
        if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
            return self.mix(images, labels, int(positions[0]), epoch)
        return images, labels

    def wrap(self, batches: Iterator, positions: Iterable[np.ndarray], epoch: int) -> Iterator:
        """The loader's micro-batches, augmented; `positions`: each micro-batch's places in the epoch's order."""
        for (images, labels), where in zip(batches, positions):
            yield self(images, labels, where, epoch)

    def apply_policy(self, images: torch.Tensor, positions: np.ndarray, epoch: int) -> torch.Tensor:
        pixels = images.sub(self.shift).div_(self.scale).round_().clamp_(0, 255).to(torch.uint8).contiguous()
        u = keyed_uniforms(self.seed, epoch, positions, self.policy.draws, stream=POLICY)
        pixels = self.policy(pixels, u)
        return torch.addcmul(self.shift, pixels, self.scale, out=images)  # back in the batch's own memory

    def erase(self, images: torch.Tensor, positions: np.ndarray, epoch: int) -> torch.Tensor:
        boxes = erase_boxes(keyed_uniforms(self.seed, epoch, positions, 3 + 2 * ERASE_TRIES, stream=ERASING),
                            images.shape[-2], images.shape[-1], self.erasing)
        for n in np.flatnonzero(boxes[:, 2]):  # in place, only the erased boxes: about p x N small fills
            top, left, h, w = (int(v) for v in boxes[n])
            images[n, :, top:top + h, left:left + w] = 0.0
        return images

    def mix(self, images: torch.Tensor, labels: torch.Tensor, key: int, epoch: int):
        """Mixup or cutmix of the micro-batch whose first image sits at epoch position `key`."""
        rng = keyed_generator(self.seed, epoch, key, MIX)
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < 0.5)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        targets = torch.nn.functional.one_hot(labels, self.num_classes).to(images.dtype)
        if use_cutmix:  # in place: only the box is copied (rolled)
            y1, y2, x1, x2 = cutmix_box(rng, images.shape[-2], images.shape[-1], lam)
            images[..., y1:y2, x1:x2] = images[..., y1:y2, x1:x2].roll(1, 0)
            lam = 1.0 - (x2 - x1) * (y2 - y1) / (images.shape[-1] * images.shape[-2])
        else:
            images = images.roll(1, 0).mul_(1.0 - lam).add_(images, alpha=lam)
        return images, targets.roll(1, 0).mul_(1.0 - lam).add_(targets, alpha=lam)


def cutmix_box(rng: np.random.Generator, height: int, width: int, lam: float) -> Tuple[int, int, int, int]:
    """(y1, y2, x1, x2): torchvision v2.CutMix's box, centre uniform, sides sqrt(1 - lam) of the image's, clipped."""
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * width), int(r * height)
    return max(cy - half_h, 0), min(cy + half_h, height), max(cx - half_w, 0), min(cx + half_w, width)


def erase_boxes(u: np.ndarray, height: int, width: int, p: float) -> np.ndarray:
    """(N, 4) boxes (top, left, h, w) to erase, h = w = 0 for none: torchvision's RandomErasing.get_params per image
    (erase with probability p; 10 tries of an area fraction in ERASE_SCALE and a log-uniform ratio in ERASE_RATIO;
    the first that fits) on the uniforms of its row: u[:, 0] whether, u[:, 1 + 2t], u[:, 2 + 2t] try t,
    u[:, -2], u[:, -1] the place."""
    area = float(height * width)
    target = area * (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * u[:, 1:1 + 2 * ERASE_TRIES:2])
    log_r = np.log(ERASE_RATIO)
    ratio = np.exp(log_r[0] + (log_r[1] - log_r[0]) * u[:, 2:2 + 2 * ERASE_TRIES:2])
    h = np.round(np.sqrt(target * ratio)).astype(np.int64)
    w = np.round(np.sqrt(target / ratio)).astype(np.int64)
    fits = (h < height) & (w < width)
    rows, first = np.arange(len(u)), fits.argmax(1)
    h, w = h[rows, first], w[rows, first]
    on = (u[:, 0] < p) & fits.any(1)
    top = (u[:, -2] * (height - h + 1)).astype(np.int64)
    left = (u[:, -1] * (width - w + 1)).astype(np.int64)
    return np.stack([top, left, np.where(on, h, 0), np.where(on, w, 0)], 1)
