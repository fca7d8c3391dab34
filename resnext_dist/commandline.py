"""What every command-line entry point shares, whatever it does: the command as the user typed it (for usage lines),
a help formatter, which rank says a bad input, and how a finished entry point ends.

Importing this module imports nothing heavy (a test checks the command line stays torch-free).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional


def version() -> str:
    """The installed distribution's version (the package's own when it is run from a clone uninstalled)."""
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version("resnext_dist")
    except PackageNotFoundError:
        from resnext_dist import __version__
        return __version__


def command_name(module: str, argv0: Optional[str] = None) -> str:
    """The command as the user typed it, for usage lines: a console script by its name (`resnext-train`),
    `python -m module` when argv[0] is the module's own file (also under torchrun), else `python argv0`
    (e.g. `python launch/submit.py`)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    base = os.path.basename(argv0)
    if base in ("", "-c", "-m"):
        return f"python -m {module}"
    if not base.endswith(".py"):
        return base  # a console script (resnext-train, resnext-submit)
    if base == "__main__.py":
        return f"python -m {os.path.basename(os.path.dirname(os.path.abspath(argv0)))}"
    if os.path.abspath(argv0).endswith(os.sep + os.path.join(*module.split(".")) + ".py"):
        return f"python -m {module}"
    return f"python {argv0}"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's ArgumentDefaultsHelpFormatter without the noise: a default is shown only when it says
    something (not None, '', False, or one the help text already gives)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        says_nothing = default is None or isinstance(default, bool) or default == "" or default == argparse.SUPPRESS
        told = "default" in text.lower() or f"{default} =" in text  # "(0 = all cores)" already gives it
        if says_nothing or told or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def launcher_rank() -> int:
    """This process's rank as the launcher set it (torchrun, srun), without joining any process group: who
    says a bad input (every rank meets the same one; rank 0 says it once)."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def exit_without_teardown(code: int) -> None:
    """End an entry point whose work is closed (files fsynced, the process group destroyed) without the
    interpreter's teardown: native destructors that run there (gloo / c10d threads) were seen to abort a finished
    rank with SIGABRT ("terminate called without an active exception", 2 runs in ~45 of a test session), which
    torchrun reports as a failed run."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
