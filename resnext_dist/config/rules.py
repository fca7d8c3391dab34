"""The rules a single config value must follow, against what torch, FFCV, OpenCV, Slurm and the OS accept when they
use it later. A rule returns what is wrong with a value, or None (validation words the line `key=value: problem`);
one that words the whole line itself, for a hint, raises InputError (models.presets.known_arch). Each key names its
rule where it is declared (schema.py); a choice's rule is `one_of` its registry. Importing it imports no torch.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Optional

from resnext_dist.data.embedded import NAMES as EMBEDDED_NAMES, is_embedded
from resnext_dist.files import regular_file_problem

Rule = Callable[[Any], Optional[str]]  # value -> what is wrong with it, or None

MAX_RES = 4096  # px: beyond any classification recipe; a typo like 22400 would exhaust memory at the first batch
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_TIMEOUT_S = 10**7  # ~4 months; far beyond it Python's timedelta (the process group's timeout) overflows


def positive(v):
    return None if v > 0 else "must be > 0"


def at_least(lo):
    return lambda v: None if v >= lo else f"must be >= {lo}"


non_negative = at_least(0)


def between(lo, hi, *, lo_open=False, hi_open=False):
    """lo <= v <= hi, with either end open."""
    def rule(v):
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return None if ok else f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return rule


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


def one_of(choices: Iterable[str]) -> Rule:
    """A choice: one of `choices` (a registry's names, in its order)."""
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def resolution(v):
    return None if 1 <= v <= MAX_RES else f"must be in [1, {MAX_RES}] px"


def block_counts(v):
    return None if len(v) == 4 and min(v) >= 1 else "must be 4 positive block counts"


def increasing_epochs(v):
    ok = all(m >= 1 for m in v) and all(a < b for a, b in zip(v, v[1:]))
    return None if ok else "must be increasing epochs >= 1"


def text(v):
    """A value that goes into file names, logs and MLflow: printable, one line."""
    # isprintable is False for newline, CR, tab, other C0/C1 controls and line/paragraph separators
    return None if v.isprintable() else "must be printable text on one line (no newline or control character)"


def nonempty_text(v):
    return "must not be empty" if not v else text(v)


def data_path(v):
    """A data path as written (checked against the data when the run starts), or an embedded dataset's name."""
    if is_embedded(v) and v not in EMBEDDED_NAMES:
        return f"no such embedded dataset; known: {', '.join(EMBEDDED_NAMES)}"
    return text(v)


def run_name(v):
    if not v or "/" in v or v in (".", ".."):
        return "must be a non-empty name without '/'"
    return text(v)


def resume_from(v):
    """checkpoint.resume: auto, never, or a checkpoint file that exists now."""
    if v in ("auto", "never"):
        return None
    problem = nonempty_text(v) or regular_file_problem(v)  # a FIFO named here would hang the load
    return "no such checkpoint file" if problem == "no such file" else problem or None


def sbatch_value(v):
    """A value submitit writes on one `#SBATCH --key=value` line (shell-quoted, but a line break would still
    start a new line of the script)."""
    ok = str(v).isprintable()
    return None if ok else "cannot go on one #SBATCH line: it holds a newline or another control character"


def sbatch_job_name(v):
    if not v or any(c.isspace() for c in v):
        return "must be a non-empty name without spaces"
    return sbatch_value(v)


SBATCH_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")


def sbatch_options(v):
    if not isinstance(v, dict):
        return "must be a mapping of sbatch option -> value"
    for name, value in v.items():
        if not isinstance(name, str) or not SBATCH_OPTION.match(name):
            return f"option name {name!r} is not an sbatch option name (letters, digits, '-', '_')"
        if not isinstance(value, (str, int, float, bool)):
            return f"option {name}: value must be a string, number or true"
        if sbatch_value(value):
            return f"option {name}: {sbatch_value(value)}"
    return None


def tracking_uri(v):
    if text(v):
        return text(v)
    scheme, sep, rest = v.partition("://")
    if sep and scheme in ("http", "https") and not rest.split("/", 1)[0]:
        return "an http(s) URI needs a host"
    return None
