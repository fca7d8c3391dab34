"""Writing a file so that a reader never sees half of it: a temporary file beside it, fsync, rename, fsync of
the folder. A crash, a full disk or a signal at any moment leaves either the old file or the new one, and no
temporary file behind."""
from __future__ import annotations

import os
from typing import Callable, IO, Union


def atomic_write(path: str, content: Union[str, bytes, Callable[[IO[bytes]], None]], mode: int = 0o644) -> None:
    """Write `content` (text, bytes, or a function that writes to a binary file) to `path` atomically."""
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".tmp-{base}")  # a leftover of a killed write is simply overwritten
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
