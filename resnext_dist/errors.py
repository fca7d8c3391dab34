"""Bad input, and how errors are said in one line.

`InputError` is every problem the user can fix by changing what they gave us (a config key or value, a data
path or file, a checkpoint that does not fit or is not safe to load, a Slurm option, a run directory held by
another trainer). Entry points catch it, print its one-line message once and exit 2; anything else is a crash
with a traceback. `DataError`, `CheckpointError` and `SlurmOptionError` are its subclasses.
"""
from __future__ import annotations

EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """Bad input; the message is one line naming the culprit (key, file, option)."""


def one_line(exc: BaseException, limit: int = 0) -> str:
    """The first non-empty line of an exception's message (or its type name), cut to `limit` characters at a
    word boundary when `limit` is set, never mid-word."""
    text = type(exc).__name__
    for line in str(exc).splitlines():
        if line.strip():
            text = line.strip()
            break
    if limit and len(text) > limit:
        text = text[: limit - 1].rsplit(" ", 1)[0] + "…"
    return text
