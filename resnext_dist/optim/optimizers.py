"""The optimizer, built from the `optim` config section.

SGD with (Nesterov) momentum; BN parameters and biases get no weight decay (they are scale/shift
parameters, and decaying them only hurts, as the NVIDIA and FFCV recipes note). The peak learning rate is
`optim.lr x global_batch / 256` when `optim.scale_lr` (Goyal et al. 2017's linear scaling rule).
"""
from __future__ import annotations

import torch


def peak_lr(cfg, global_batch_size: int) -> float:
    return cfg.lr * global_batch_size / 256 if cfg.scale_lr else cfg.lr


def build_optimizer(model: torch.nn.Module, cfg, global_batch_size: int) -> torch.optim.SGD:
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                (no_decay if is_norm or name == "bias" else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=peak_lr(cfg, global_batch_size), momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0)
