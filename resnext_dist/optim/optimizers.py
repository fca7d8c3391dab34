"""The optimizers, one entry each (OPTIMIZERS): the `optim` values it refuses, and how it is built.

`optim.optimizer`: SGD with (Nesterov) momentum, or AdamW (torch's; timm's and DeiT-style recipes). BN parameters and
biases get no weight decay (they are scale/shift parameters, and decaying them only hurts, as the NVIDIA and FFCV
recipes note). The peak learning rate is `optim.lr x global_batch / 256` when `optim.scale_lr` (Goyal et al. 2017's
linear scaling rule). Both are torch's fused implementations (one kernel per parameter group and device, on CPU and
CUDA): they take a `found_inf` flag on the device and then skip the whole update, step counts included, which is
how run/step.py skips a non-finite step exactly without reading anything back. Importing it imports no torch (the
config checks run the entries').
"""
from __future__ import annotations

from resnext_dist.errors import InputError


class Sgd:
    @staticmethod
    def check(cfg) -> None:
        if cfg.nesterov and cfg.momentum == 0:
            # torch.optim.SGD: "Nesterov momentum requires a momentum and zero dampening"
            raise InputError("optim.nesterov=true needs optim.momentum > 0 (or set optim.nesterov=false)")

    @staticmethod
    def build(groups, cfg, lr: float):
        import torch  # only when a run is built: the config checks import this module
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               fused=True)


class AdamW:
    @staticmethod
    def check(cfg) -> None:
        """optim.momentum and optim.nesterov are SGD's: AdamW keeps torch's betas (0.9, 0.999)."""

    @staticmethod
    def build(groups, cfg, lr: float):
        import torch  # only when a run is built: the config checks import this module
        return torch.optim.AdamW(groups, lr=lr, fused=True)  # each group's weight_decay: decoupled, as AdamW's


OPTIMIZERS = {"sgd": Sgd, "adamw": AdamW}


def optimizer_for(cfg):
    """The entry the `optim` section `cfg` uses (optim.optimizer)."""
    return OPTIMIZERS[cfg.optimizer]


def peak_lr(cfg, global_batch_size: int) -> float:
    return cfg.lr * global_batch_size / 256 if cfg.scale_lr else cfg.lr


def build_optimizer(model, cfg, global_batch_size: int):
    import torch  # only when a run is built: the config checks import this module
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                (no_decay if is_norm or name == "bias" else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return optimizer_for(cfg).build(groups, cfg, peak_lr(cfg, global_batch_size))
