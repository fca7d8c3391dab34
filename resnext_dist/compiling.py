"""The values of `train.compile_mode` (COMPILE_MODES): what torch.compile is asked for when `train.compile=true`.

`reduce-overhead` adds CUDA graphs (torch's cudagraph trees): each compiled region is replayed as one graph, so the
host no longer launches every kernel of the step, which matters when the step is short and the host is busy feeding
the GPU (decode ahead, augmentations). With DDP, torch.compile splits the graph at DDP's bucket boundaries
(DDPOptimizer) and each piece is graphed apart, so the all-reduces stay between graphs: safe, though fewer kernels
are saved. On a CPU the graphs are skipped (torch says so once) and the mode compiles as `default` does. Importing it
imports no torch (the config checks read COMPILE_MODES).
"""
from __future__ import annotations

# train.compile_mode -> torch.compile's `mode` (None: torch's default)
COMPILE_MODES = {"default": None, "reduce-overhead": "reduce-overhead", "max-autotune": "max-autotune",
                 "max-autotune-no-cudagraphs": "max-autotune-no-cudagraphs"}


def compile_module(module, mode_name: str):
    """torch.compile(module) in the mode `mode_name` (a COMPILE_MODES key)."""
    import torch  # only when a run is built
    mode = COMPILE_MODES[mode_name]
    return torch.compile(module, mode=mode) if mode else torch.compile(module)
