"""The values of `train.precision` (PRECISIONS): the dtype the forward pass runs in under torch.autocast (none for
fp32), and whether a GradScaler keeps fp16's small gradients from underflowing. The trainer and evaluate ask the
entry (run/build.py). Importing it imports no torch (the config checks read PRECISIONS).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Precision:
    dtype: Optional[str]  # torch's name of the autocast dtype; None: no autocast
    scaled: bool          # the loss is scaled (GradScaler) so that small gradients survive in the dtype

    def autocast(self, device):
        """A zero-argument context factory: autocast in the dtype, or nothing."""
        if self.dtype is None:
            return contextlib.nullcontext
        import torch  # only when a run is built: the config checks import this module
        return lambda: torch.autocast(device.type, dtype=getattr(torch, self.dtype))

    def grad_scaler(self, device):
        import torch  # only when a run is built: the config checks import this module
        return torch.amp.GradScaler(device.type) if self.scaled else None


PRECISIONS = {"bf16": Precision("bfloat16", scaled=False),  # fp32's exponent range: nothing underflows
              "fp16": Precision("float16", scaled=True), "fp32": Precision(None, scaled=False)}
