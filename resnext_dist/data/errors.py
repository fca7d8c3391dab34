"""The error every data problem raises: a bad path, a bad file, bad contents.

`DataError` is a `ConfigError`, so the trainer and the writer report it the same way: one line naming
the file (and the image or label at fault), exit code 2.
"""
from __future__ import annotations

from resnext_dist.config import ConfigError


class DataError(ConfigError):
    """A data path or dataset content problem; the message is one line naming the file."""


class CorruptImage(DataError):
    """One image file that cannot be decoded (truncated, not an image, unsupported)."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
