"""The error every data problem raises: a bad path, a bad file, bad contents.

`DataError` is an `InputError`, so the trainer and the writer report it the same way: one line naming
the file (and the image or label at fault), exit code 2.
"""
from __future__ import annotations

from resnext_dist.errors import InputError


class DataError(InputError):
    """A data path or dataset content problem; the message is one line naming the file."""


class CorruptImage(DataError):
    """One image file that cannot be decoded (truncated, not an image, unsupported)."""
