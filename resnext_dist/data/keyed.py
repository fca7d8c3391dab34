"""Counter-based uniforms keyed by (seed, epoch, key, stream): the draws of one image's augmentation are a function
of those numbers only, so a rank, a world size or a resume cannot change them and no generator state needs saving.

data/device_decode.py's crop boxes use the same SplitMix64 (`mix`) without a stream; here `stream` separates
independent uses of one key (the crop, the policy, erasing, the batch's mix), so they never share draws. numpy only.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (a bijection of uint64 that scrambles every bit)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def keyed_uniforms(seed: int, epoch: int, keys, count: int, stream: int = 0) -> np.ndarray:
    """(len(keys), count) float64 uniforms in [0, 1), a function of (seed, epoch, stream, key, k) only."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as intended
        base = mix(mix(np.full(1, seed, np.uint64)) + np.uint64(epoch))
        base = mix(base + np.uint64(stream) * _GOLDEN)
        rows = mix(base + np.asarray(keys, np.uint64).reshape(-1))
        bits = mix(rows[:, None] + np.arange(count, dtype=np.uint64)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def keyed_generator(seed: int, epoch: int, key: int, stream: int) -> np.random.Generator:
    """A numpy Generator for draws that need a distribution (a Beta), keyed like keyed_uniforms."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, stream, int(key)])))
