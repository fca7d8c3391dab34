"""The one reader of torch's pickle files (checkpoints, weights): `torch.load(weights_only=True)` onto the CPU with
no global allowed beyond torch's own, so a file holds tensors, containers and plain values or is refused, never
unpickled: nothing read can run code. numpy arrays are refused too: checkpoints hold none since format 2, and
torchvision's and timm's weights never did. Only a regular file is opened (files.open_regular: a FIFO or a device
is refused at once, never waited on). Errors (InputErrors) name the file and say `what` it was meant to be;
run/checkpoint.py words them as its own.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from typing import Any, Optional

import torch

from resnext_dist.errors import InputError, one_line
from resnext_dist.files import NotRegularFile, fd_path, open_regular

MESSAGE_LIMIT = 300  # characters of a foreign error quoted in ours, cut at a word boundary


class RefusedFile(InputError):
    """torch's weights-only unpickler said no: the pickle names a global (`names`; loading it would run code) or
    holds an opcode it does not read (garbage and a crafted pickle can look alike: both are refused)."""

    def __init__(self, path: str, what: str, error: pickle.UnpicklingError):
        text = str(error)
        found = re.search(r"GLOBAL (\S+?)(?: |$)", text)
        self.names: Optional[str] = found.group(1) if found else None
        # torch's message is a page of advice; the reason is its line that names the global or the opcode
        lines = [" ".join(line.split()) for line in text.replace("WeightsUnpickler error:", "\n").splitlines()]
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), one_line(text))
        self.reason = reason.split(" was not an allowed global")[0][:160]
        super().__init__(f"{path}: refused: not a plain {what}, loading it would run code ({self.reason})"
                         if self.names else
                         f"{path}: refused: not a {what} torch.load(weights_only=True) reads ({self.reason})")


class UnreadableFile(InputError):
    """A missing, truncated or foreign file, or no regular file (`missing` says whether it is the first)."""

    def __init__(self, path: str, what: str, error: BaseException):
        self.missing = isinstance(error, FileNotFoundError)
        super().__init__(f"{path}: no such {what}" if self.missing else str(error) if isinstance(
            error, NotRegularFile) else f"{path}: unreadable {what} ({type(error).__name__}: {brief(error)})")


def safe_load(path: str, what: str, mmap: bool = False) -> Any:
    """The object in the torch file at `path`, on the CPU. `mmap` maps tensor storage instead of reading it (a cheap
    validity check of a large file)."""
    try:
        f = open_regular(path, f"a {what}")  # a FIFO or device is refused here, never waited on
    except (NotRegularFile, OSError) as e:
        raise UnreadableFile(path, what, e) from None
    try:
        with f:
            # A legacy (non-zip) pickle cannot be mapped; it still goes through the weights-only unpickler. torch
            # maps by name: fd_path names the file checked, whatever `path` points at by now.
            if mmap and zipfile.is_zipfile(f):
                return torch.load(fd_path(f), map_location="cpu", weights_only=True, mmap=True)
            f.seek(0)
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RefusedFile(path, what, e) from None
    except Exception as e:  # torch's zip reader says RuntimeError for a torn file; any failure means unreadable
        raise UnreadableFile(path, what, e) from None


def brief(exc: BaseException) -> str:
    """A foreign error's first line, cut after its last whole sentence that fits MESSAGE_LIMIT (torch's messages
    run on for several sentences of advice); a first sentence that is itself too long is cut at a word."""
    text = one_line(exc)
    if len(text) <= MESSAGE_LIMIT:
        return text
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", text) if m.end() <= MESSAGE_LIMIT]
    return text[:ends[-1]] if ends else one_line(exc, MESSAGE_LIMIT)
