"""Files in and out, safely: a file expected to be a regular file is opened without blocking and refused when it is
anything else; an output is checked writable before the work that produces it; a write is atomic.

Reading: `open_regular` opens with O_NONBLOCK and checks the open file (fstat), not the name, so a FIFO, a device or
a socket swapped in after any earlier check is refused at once instead of blocking the process (a FIFO's open waits
for a writer, in the kernel, where no stop signal is answered) or reading forever (/dev/zero). Libraries that
insist on a path (torch's mmap, FFCV's reader) get `fd_path(f)`: the very file already checked.

Writing: a temporary file beside the target, fsync, rename, fsync of the folder. A crash, a full disk or a signal at
any moment leaves either the old file or the new one, and no temporary file behind.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import IO, BinaryIO, Callable, Union

from resnext_dist.errors import InputError


class NotRegularFile(InputError):
    """A path where a file is expected names a FIFO, a device, a socket or a directory."""


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, what: str = "file") -> BinaryIO:
    """`path` opened for binary reading if it is a regular file (a link to one is one); NotRegularFile naming it and
    saying `what` was expected otherwise; OSError (FileNotFoundError, PermissionError) as open() raises it."""
    try:
        # O_NONBLOCK: opening a FIFO for reading returns at once (a blocking open waits for a writer), a socket
        # fails with ENXIO; only then do we know what the name points at.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENXIO:  # a socket, or a device with no driver
            raise NotRegularFile(f"{path}: {regular_file_problem(path)}; expected {what}") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(f"{path}: {kind_of(mode)}, not a regular file; expected {what}")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)  # a regular file never blocks
    return os.fdopen(fd, "rb")


def regular_file_problem(path: str) -> str:
    """Why `path` is not an existing regular file ("" when it is), by its name only (no open): for config rules and
    listings, which a later `open_regular` confirms."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return (e.strerror or str(e)).lower()
    return "" if stat.S_ISREG(mode) else f"{kind_of(mode)}, not a regular file"


def fd_path(f: IO) -> str:
    """A path naming the open file `f` itself (Linux: /proc/self/fd/N), for a library that opens by name: the file
    it opens is the one checked, whatever the original name points at by then."""
    path = f"/proc/self/fd/{f.fileno()}"
    return path if os.path.exists(path) else f.name


def check_output_file(path: str, what: str) -> None:
    """Raise InputError unless `path` can be written as a new or replaced file (`what` names the option): an existing
    directory, a non-regular file, an unwritable or missing-and-uncreatable folder are refused before any work."""
    target = os.path.abspath(path)
    if os.path.lexists(target):
        problem = regular_file_problem(target)
        if problem and problem != "no such file":  # a dangling link is replaced like a missing file
            raise InputError(f"{what} {path}: {problem}")
    folder = os.path.dirname(target)
    while not os.path.exists(folder):  # created on writing: the nearest existing folder must let us
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise InputError(f"{what} {path}: cannot be created: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: cannot be written: {folder} is not writable by this user")


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
