"""The training losses, one entry each (LOSSES): `loss(logits, targets, label_smoothing)` -> the mean over the batch.
`targets` are int64 labels, or class probabilities (N, classes) after mixup / cutmix (data/augment_batch.py).

ce: torch's cross-entropy (label smoothing as torch applies it, probabilities included). bce: the binary
cross-entropy of timm's ResNet-strikes-back recipes (timm's BinaryCrossEntropy without its threshold): each class a
binary problem, targets smoothed to smoothing / classes off and 1 - smoothing + smoothing / classes on, the mean
over images and classes. Importing it imports no torch (the config checks read the registry).
"""
from __future__ import annotations


def cross_entropy(logits, targets, label_smoothing: float):
    import torch.nn.functional as F  # only when a step runs: the config checks import this module
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def binary_cross_entropy(logits, targets, label_smoothing: float):
    import torch.nn.functional as F  # only when a step runs: the config checks import this module
    classes = logits.shape[-1]
    if targets.dim() == 1:  # labels -> one-hot
        targets = F.one_hot(targets, classes).to(logits.dtype)
    off = label_smoothing / classes
    return F.binary_cross_entropy_with_logits(logits, targets * (1.0 - label_smoothing) + off)


LOSSES = {"ce": cross_entropy, "bce": binary_cross_entropy}
