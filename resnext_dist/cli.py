"""The command line the entry points share (train, submit): --config, --print-config, key=value overrides,
and a --help that lists every config key with its default and the docstring written under its field."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
from typing import Dict

from omegaconf import MISSING

from resnext_dist.config_schema import _section_types


def arg_parser(prog: str, description: str, example: str):
    """The command line every entry point shares: --config, --print-config, key=value overrides, --help
    listing every key."""
    parser = _KeysHelpParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                             epilog=f"overrides are key=value pairs, e.g. {example}\n\nconfig keys:\n")
    parser.add_argument("--config", help="YAML recipe (see configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


class _KeysHelpParser(argparse.ArgumentParser):
    """Lists the config keys at the end of --help, built only when the help is printed: reading the field
    docs parses config_schema.py's source, which parsing a command line has no need for."""

    @property
    def epilog(self) -> str:
        return self._epilog_head + describe_keys()

    @epilog.setter
    def epilog(self, head: str) -> None:
        self._epilog_head = head


@functools.lru_cache(maxsize=1)
def describe_keys() -> str:
    """One line per key with its default and docstring, for --help."""
    lines = []
    for section, cls in _section_types().items():
        docs = _field_docs(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
            if default is MISSING:
                default = "(required)"
            lines.append(f"  {section}.{f.name} = {default}\n      {docs.get(f.name, '')}")
    return "\n".join(lines)


def _field_docs(cls) -> Dict[str, str]:
    """Read the string literal that follows each field in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = nxt.value.value
    return docs
