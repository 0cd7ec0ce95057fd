"""Typed dataclass arguments -> argparse, with each field's docstring as its ``--help``.

Field docstrings (a string literal right after the field, cleanrl/tyro style) are read
from the class source, so the configuration class is the single place that documents
an option.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import textwrap
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass, by field name."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--option`` per field of ``cls`` (bools become ``--flag/--no-flag``)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{docs.get(f.name, '')} (default: {default})"
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        if hint is bool:
            parser.add_argument(
                name, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif origin is tuple:
            args = typing.get_args(hint)
            parser.add_argument(name, dest=f.name, type=args[0], nargs="+", default=default, help=help_text)
        else:
            base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if origin else hint
            parser.add_argument(name, dest=f.name, type=base, default=default, help=help_text)


def dataclass_from_args(cls: type[T], ns: argparse.Namespace) -> T:
    """Build ``cls`` from parsed arguments."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        v = getattr(ns, f.name)
        values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The sub-command action of a group parser (argparse keeps no public handle to it)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError(f"parser {parser.prog!r} has no sub-commands")
