"""The values of `data.auto_augment` (POLICIES) and the builder of a run's training batch augmentation.

The augmentations run on the training device, on each micro-batch the loader hands over (whichever loader and
decode made it): the policy per image (augment_policy.py), random erasing per image, then mixup or cutmix per
micro-batch (augment_batch.py). Every draw is keyed by (seed, epoch, the image's position in the epoch's global
order), so a rank, a world size or a resume cannot change what an image becomes. The position rather than the
image's index: with repeated augmentation (data.ra_reps) an image appears several times in an epoch, and each
copy must be augmented differently. Importing it imports no torch (the config checks import it).
"""
from __future__ import annotations

from typing import Optional

# data.auto_augment -> the name of its builder in augment_policy.py (None: no policy)
POLICIES = {"none": None, "trivialaugment": "trivialaugment", "randaugment": "randaugment"}


def wanted(d) -> bool:
    """Whether the data section `d` asks for any training batch augmentation."""
    return POLICIES[d.auto_augment] is not None or d.random_erasing > 0 or d.mixup_alpha > 0 or d.cutmix_alpha > 0


def describe(d) -> str:
    """The training augmentations of the data section `d` in a few words, for the banner: e.g. "trivialaugment,
    erasing 0.1, mixup 0.2 | cutmix 1.0, ra x4" (mixup | cutmix: one of the two per micro-batch); "" for none."""
    mixes = [f"{name} {float(alpha)}" for name, alpha in (("mixup", d.mixup_alpha), ("cutmix", d.cutmix_alpha))
             if alpha > 0]
    parts = [d.auto_augment if POLICIES[d.auto_augment] else "",
             f"erasing {float(d.random_erasing)}" if d.random_erasing > 0 else "", " | ".join(mixes),
             f"ra x{d.ra_reps}" if d.ra_reps > 1 else ""]
    return ", ".join(p for p in parts if p)


def build_augment(d, *, seed: int, num_classes: int, device) -> Optional[object]:
    """The run's BatchAugment, or None when the data section `d` asks for none (nothing changes in the step)."""
    if not wanted(d):
        return None
    from resnext_dist.data.augment_batch import BatchAugment  # torch, torchvision: only when a run augments
    return BatchAugment(policy=POLICIES[d.auto_augment], erasing=d.random_erasing, mixup_alpha=d.mixup_alpha,
                        cutmix_alpha=d.cutmix_alpha, seed=seed, num_classes=num_classes, device=device)
