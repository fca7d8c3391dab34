"""Import before FFCV: numba's typed-Dict functions, which `import ffcv` compiles (ffcv.fields.rgb_image fills a
numba.typed.Dict at import), are kept in numba's on-disk cache instead of being compiled again in every process.

That compile is ~5 s of CPU in every process that imports FFCV (each rank, the writer, evaluate, the checks): the
largest part of an FFCV process's start-up on a small machine. numba compiles these functions without its cache
(`cache=True` is not set on them); `Dispatcher.enable_caching()` is what `cache=True` does. The cache lives where
numba puts any cache (NUMBA_CACHE_DIR, else a __pycache__ beside numba's sources, else the user's cache folder),
is keyed by signature, source file, its timestamp and the CPU, and is written atomically: ranks may share it.
"""
from __future__ import annotations

import numba.typed.dictobject
import numba.typed.typeddict
from numba.core.registry import CPUDispatcher


def cache_typed_dict_functions() -> int:
    """Turn on numba's disk cache for the typed-Dict functions; returns how many. Idempotent."""
    n = 0
    for module in (numba.typed.typeddict, numba.typed.dictobject):
        for fn in vars(module).values():
            if isinstance(fn, CPUDispatcher):
                fn.enable_caching()  # a new FunctionCache object over the same files: harmless when repeated
                n += 1
    return n


cache_typed_dict_functions()
