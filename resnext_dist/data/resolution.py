"""Progressive resizing: the training resolution of each epoch (FFCV ImageNet's schedule).

Low resolution early (cheap epochs), full resolution at the end: `data.min_train_res` until epoch
`data.ramp_start_epoch`, then a linear ramp that reaches `data.train_res` at `data.ramp_end_epoch`.
Values on the ramp are rounded to a multiple of 32 as FFCV does (sizes the convolutions handle well),
or of 8 when train_res < 128 (small test and CIFAR-sized images, where 32 would skip the ramp), and kept
within [min_train_res, train_res]. Epochs count from 0, as the trainer counts them.
"""
from __future__ import annotations

import math


def train_res_for_epoch(data_cfg, epoch: int) -> int:
    """The training crop size for `epoch`; data.train_res when progressive resizing is off (min_train_res=0)."""
    low, high = data_cfg.min_train_res, data_cfg.train_res
    start, end = data_cfg.ramp_start_epoch, data_cfg.ramp_end_epoch
    if not low or low >= high or epoch >= end:
        return high
    if epoch <= start:
        return low
    step = 32 if high >= 128 else 8
    res = low + (high - low) * (epoch - start) / (end - start)
    res = int(math.floor(res / step + 0.5)) * step
    return min(high, max(low, res))
