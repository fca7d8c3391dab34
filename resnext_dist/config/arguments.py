"""The config's command line, shared by the entry points (train, evaluate, submit, bench): --config, --print-config,
--version, key=value overrides, and a --help that lists the config keys the command uses with their defaults and
docs.

    parser = arg_parser("resnext_dist.train", "Train ...", "data.batch_size=128")
    args = parser.parse_args(argv)          # `--epochs 3` -> "error: unknown option --epochs; did you mean
                                            #  train.epochs=3?", exit 2
    cfg, note = load_train_config(args)     # no --config: the embedded default, and a note saying so

Importing this module imports no torch (a test checks it): `--help` and `--version` answer at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from omegaconf import MISSING

from resnext_dist.config.load import find_config, load_config
from resnext_dist.config.schema import TrainConfig, declared_keys, section_types
from resnext_dist.commandline import command_name, version
from resnext_dist.errors import EXIT_BAD_INPUT

DEFAULT_RECIPE = "quickstart"  # what the trainer runs without --config: configs/quickstart.yaml, embedded digits
IMAGENET_RECIPE = "configs/resnext50_imagenet.yaml"
DEFAULT_NOTE = (f"no --config: training the embedded default (digits {DEFAULT_RECIPE}); "
                f"for ImageNet use --config {IMAGENET_RECIPE}")
SUBMIT_ONLY = ("slurm",)  # sections only the Slurm submitter reads; the trainer's --help leaves them out


def arg_parser(module: str, description: str, example: str,
               sections: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The command line every entry point shares, for the entry point `module` (e.g. "resnext_dist.train";
    "python -m resnext_dist.train" is read the same). `sections`: the config sections its --help lists and
    its "did you mean" considers; by default the trainer's (all but slurm.*)."""
    module = module.split()[-1]
    keep = tuple(sections or [s for s in section_types() if s not in SUBMIT_ONLY])
    default = f"; without it the trainer runs {DEFAULT_RECIPE} on the embedded digits" if sections is None else ""
    parser = _KeysHelpParser(prog=command_name(module), description=description,
                             formatter_class=argparse.RawDescriptionHelpFormatter, sections=keep,
                             bare_run=sections is None and module == "resnext_dist.train",
                             epilog=f"overrides are key=value pairs, e.g. {example}\n\nconfig keys:\n")
    parser.add_argument("--config", metavar="FILE|NAME",
                        help=f"YAML recipe: a path, or the name of one in configs/ (e.g. resnext50_imagenet){default}")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def all_sections() -> List[str]:
    return list(section_types())


class _KeysHelpParser(argparse.ArgumentParser):
    """Lists the config keys at the end of --help, built only when the help is printed, and answers an unknown
    `--option` with the config key it most likely meant."""

    def __init__(self, *args, sections: Sequence[str] = (), bare_run: bool = False, **kwargs):
        self.sections, self.bare_run = tuple(sections), bare_run
        super().__init__(*args, **kwargs)

    @property
    def epilog(self) -> str:
        return self._epilog_head + describe_keys(self.sections, bare_run=self.bare_run)

    @epilog.setter
    def epilog(self, head: str) -> None:
        self._epilog_head = head

    def parse_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        parsed, unknown = self.parse_known_args(argv, namespace)
        options = [a for a in unknown if a.startswith("-")]
        if options:
            print(f"error: {unknown_option_message(options[0], argv, self.sections)}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        if unknown:  # argparse's own wording for anything else
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return parsed


def unknown_option_message(option: str, argv: List[str], sections: Sequence[str]) -> str:
    """`unknown option --epochs; did you mean train.epochs=3?` (the value taken from the command line)."""
    name, _, value = option.lstrip("-").partition("=")
    if not value and option in argv:
        i = argv.index(option)
        if i + 1 < len(argv) and not argv[i + 1].startswith("-") and "=" not in argv[i + 1]:
            value = argv[i + 1]
    shown = option.partition("=")[0]
    key = closest_key(name.replace("-", "_"), sections)
    if not key:
        return f"unknown option {shown}; config values are given as key=value (see --help)"
    return f"unknown option {shown}; did you mean {key}={value or '...'}?"


def closest_key(name: str, sections: Sequence[str]) -> Optional[str]:
    """The config key a `--name` most likely meant: a full key (optim.lr), else the nearest leaf name."""
    keys = [name for name, _ in declared_keys() if name.split(".")[0] in sections]
    if name in keys:
        return name
    near = difflib.get_close_matches(name, keys, n=1, cutoff=0.75)
    if near:
        return near[0]
    leaves: Dict[str, str] = {}
    for key in keys:  # the first section wins a shared leaf name (train before tracking, ...)
        leaves.setdefault(key.split(".", 1)[1], key)
    near = difflib.get_close_matches(name.split(".")[-1], list(leaves), n=1, cutoff=0.6)
    return leaves[near[0]] if near else None


@functools.lru_cache(maxsize=None)
def describe_keys(sections: Tuple[str, ...], schema: type = TrainConfig, bare_run: bool = False) -> str:
    """Two lines per key of `sections`, its default and its doc, for --help."""
    bare = _bare_run_values() if bare_run else {}  # the trainer's: what it runs without --config
    lines = []
    for name, f in declared_keys(schema):
        if name.split(".")[0] not in sections:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if default is MISSING:
            default = "<the recipe's name>-<the identity keys set otherwise, e.g. lr0.2>-<a hash of the identity keys>"
        shown = "''" if default == "" else default
        if name in bare and bare[name] != default:
            shown = f"{shown} (no --config: {bare[name]})"
        default = shown
        lines.append(f"  {name} = {default}\n      {f.metadata['doc']}")
    return "\n".join(lines)


def _bare_run_values() -> Dict[str, object]:
    """What a run without --config uses, key by key (the quickstart recipe, its data following data.train), so
    --help says what a bare command does and not only the schema's defaults; {} if the recipe does not load."""
    from resnext_dist.config.schema import get_key
    try:
        cfg = load_config(find_config(DEFAULT_RECIPE), [])
    except Exception:  # --help must answer even where the recipe is broken; its error shows when a run loads it
        return {}
    return {name: get_key(cfg, name) for name, _ in declared_keys()}


def load_train_config(args: argparse.Namespace):
    """(cfg, note) for the trainer: `--config FILE|NAME` and the overrides, or without --config the embedded
    default recipe (configs/quickstart.yaml: digits, made on first use); `note` is the line to print first
    in that case, else None. Raises InputError."""
    if args.config:
        return load_config(find_config(args.config), args.overrides, data_required=True), None
    cfg = load_config(find_config(DEFAULT_RECIPE), args.overrides, data_required=True)
    if not cfg.data.train.startswith("embedded:"):  # your data on the quickstart's net: not "the embedded default"
        return cfg, (f"no --config: the {DEFAULT_RECIPE} recipe's net and schedule on {cfg.data.train} "
                     f"({cfg.model.num_classes} classes, data.loader={cfg.data.loader})")
    return cfg, DEFAULT_NOTE
