"""The kornia candidate of `python -m resnext_dist.bench augment` (issue 28 asks the cost of the candidates): kornia's
batched TrivialAugment, RandomErasing and MixUp/CutMix on the same batch, when kornia is installed (it is not a
dependency: the chosen path is torchvision's, data/augment_policy.py). kornia takes floats in [0, 1].

What differs besides the cost: kornia's TrivialAugment draws one operation per call for the whole batch (its
get_forward_sequence samples one sub-policy), where the recipe draws one per image; its MixUp draws lambda
uniformly from a range, not from Beta(alpha, alpha). So these rows are a lower bound of what kornia would cost
doing what the recipe asks."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch


def available() -> bool:
    try:
        import kornia  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


def rows(pixels: torch.Tensor, labels: torch.Tensor, measure: Callable[[Callable[[int], object]], float]) \
        -> Optional[List[Dict]]:
    """Rows (measure, ms_per_batch) of kornia's candidates on uint8 `pixels`; None when kornia is not installed.
    `measure(fn)`: ms per call of fn(k), as bench/augment.py measures its own rows."""
    if not available():
        return None
    import warnings

    import kornia.augmentation as K
    from kornia.augmentation.auto import TrivialAugment

    x = pixels.float().div_(255.0)
    policy, erasing = TrivialAugment(), K.RandomErasing(p=0.1)
    mixup = K.RandomMixUpV2(p=1.0, data_keys=["input", "class"])
    with warnings.catch_warnings():  # its note on the default lambda of CutMix: the cost is the same either way
        warnings.simplefilter("ignore", DeprecationWarning)
        cutmix = K.RandomCutMixV2(p=1.0, data_keys=["input", "class"])

    def v2_set(k: int):
        mixed = (mixup if k % 2 else cutmix)(erasing(policy(x)), labels)  # one of the two per batch
        return mixed

    parts = {"kornia TrivialAugment (one op per batch)": lambda k: policy(x),
             "kornia RandomErasing 0.1": lambda k: erasing(x),
             "kornia MixUp / CutMix (alternating)": lambda k: (mixup if k % 2 else cutmix)(x, labels),
             "kornia V2 set (the three above)": v2_set}
    return [{"measure": name, "ms_per_batch": measure(fn)} for name, fn in parts.items()]
