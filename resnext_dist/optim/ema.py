"""train.ema_decay: the exponential moving average of the weights (and BN buffers), torch's AveragedModel with its
EMA function (get_ema_multi_avg_fn: one foreach lerp per device and dtype), updated without a host read.

AveragedModel.update_parameters asks `n_averaged == 0` and `n_averaged > 0` of its device buffer every step: on a
GPU each is a wait for everything queued before it, which the step otherwise never does (run/step.py). Here the
count also lives on the host (`count`), so the update only queues kernels; the buffer is still kept (and saved, so
checkpoints are AveragedModel's, key for key), and read once when a checkpoint is loaded into it. The values are
AveragedModel's own: the same copy at the first update, the same function after.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class Ema(AveragedModel):
    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.count = 0  # = n_averaged, on the host
        self.register_load_state_dict_post_hook(_count_from_buffer)

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [t.detach().to(a.device) for a, t in zip(averaged, [*model.parameters(), *model.buffers()])]
        if self.count == 0:
            for a, c in zip(averaged, current):
                a.detach().copy_(c)
        else:
            # AveragedModel's grouping: get_ema_multi_avg_fn takes one dtype per call (a lerp for floats, the
            # integer BN counters by multiply-add)
            groups: Dict[Tuple[torch.device, torch.dtype], Tuple[List[torch.Tensor], List[torch.Tensor]]] = {}
            for a, c in zip(averaged, current):
                group = groups.setdefault((a.device, a.dtype), ([], []))
                group[0].append(a.detach())
                group[1].append(c)
            for mine, theirs in groups.values():
                self.multi_avg_fn(mine, theirs, self.n_averaged)
        self.n_averaged += 1  # on the device, queued: no read
        self.count += 1


def _count_from_buffer(module: Ema, _incompatible) -> None:
    """After a load (a resume): the host count from the loaded buffer, one read at load time."""
    module.count = int(module.n_averaged)
