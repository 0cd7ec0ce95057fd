"""Typed dataclass arguments -> argparse, with each field's docstring as its ``--help``.

Field docstrings (a string literal right after the field, cleanrl/tyro style) are read
from the class source, so the configuration class is the single place that documents
an option.

Every numeric option is range-checked when parsed: its ``type=`` is a :class:`NumberType`
(:data:`finite_float`, :data:`positive_float`, :data:`nonnegative_float`,
:data:`unit_interval`, :data:`positive_fraction`, :data:`number_or_infinity`,
:func:`int_at_least` and its :data:`positive_int`, :data:`nonnegative_int`), so a bad
number ends as one line (``gistgym train: error: --learning-rate must be > 0, got -1``,
exit 2) before any work, and ``--help`` says the range.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import math
import textwrap
import typing
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

from gistgym.options import is_group, leaf_fields

T = TypeVar("T")


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``PROG: error: --opt must be ...``) and exit 2.

    The project's rule for bad input is one line on stderr; argparse's usage block would
    bury it. ``argument --x: must be ...`` (a :class:`NumberType`'s refusal) reads
    ``--x must be ...``, as the library's own ``ConfigError`` messages do.
    """

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line and exit 2."""
        head, sep, rest = message.partition(": ")
        if head.startswith("argument ") and sep and rest.startswith("must be"):
            message = f"{head.removeprefix('argument ').split('/')[0]} {rest}"
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


@dataclasses.dataclass(frozen=True)
class NumberType:
    """An argparse ``type=`` that parses one number and refuses it outside its range.

    Args:
        name: What to call it (its ``repr``).
        integer: Parse an integer (else a float).
        low: Smallest allowed value (``-inf``: no bound).
        high: Largest allowed value (``inf``: no bound).
        low_open: ``low`` itself is not allowed.
        infinite: ``-inf`` and ``inf`` are allowed (NaN never is).
    """

    name: str
    integer: bool = False
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    infinite: bool = False

    @property
    def range(self) -> str:
        """The allowed range as a phrase (``> 0``, ``in [0, 1]``, ``>= 1``), or ``""``."""
        lo, hi = self.low, self.high
        if math.isfinite(lo) and math.isfinite(hi):
            return f"in {'(' if self.low_open else '['}{lo:g}, {hi:g}]"
        if math.isfinite(lo):
            return f"{'>' if self.low_open else '>='} {lo:g}"
        return f"<= {hi:g}" if math.isfinite(hi) else ""

    @property
    def expects(self) -> str:
        """What the option takes, as ``--help`` and the error say it (``a finite number > 0``)."""
        if self.integer:
            return " ".join(["an integer", self.range]).strip()
        if self.infinite:
            return "a number (or -inf / inf)"
        return " ".join(["a finite number", self.range]).strip()

    def __call__(self, text: str) -> Any:
        """Parse ``text``; ``argparse.ArgumentTypeError`` (``must be ..., got ...``) if it does not fit."""
        try:
            value: float = int(text) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.expects}, got {text!r}") from None
        if math.isnan(value) or (math.isinf(value) and not self.infinite):
            raise argparse.ArgumentTypeError(f"must be {self.expects}, got {text}")
        too_low = value <= self.low if self.low_open else value < self.low
        if (too_low or value > self.high) and math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {self.range}, got {text}")
        return value


def int_at_least(low: int) -> NumberType:
    """An integer option ``>= low`` (e.g. ``int_at_least(2)`` for a clip length, ``-1`` for "-1 = default")."""
    names = {1: "positive_int", 0: "nonnegative_int"}
    return NumberType(names.get(low, f"int_at_least_{low}".replace("-", "minus_")), integer=True, low=low)


finite_float = NumberType("finite_float")
"""Any finite number (e.g. speed rewards, which may be negative)."""
positive_float = NumberType("positive_float", low=0.0, low_open=True)
"""A finite number > 0 (learning rates, standard deviations)."""
nonnegative_float = NumberType("nonnegative_float", low=0.0)
"""A finite number >= 0 (weights of loss terms, weight decay, thresholds in pixels)."""
unit_interval = NumberType("unit_interval", low=0.0, high=1.0)
"""A probability or fraction in [0, 1]."""
positive_fraction = NumberType("positive_fraction", low=0.0, high=1.0, low_open=True)
"""A number in (0, 1] (a discount factor)."""
number_or_infinity = NumberType("number_or_infinity", infinite=True)
"""Any number, ``-inf`` or ``inf``, never NaN (a threshold whose infinities mean "never" and "always")."""
positive_int = int_at_least(1)
"""A count >= 1."""
nonnegative_int = int_at_least(0)
"""An integer >= 0 (seeds; counts where 0 means "all" or "none")."""


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


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, numbers: Mapping[str, NumberType] | None = None
) -> None:
    """Add one ``--option`` per field of ``cls`` (bools become ``--flag/--no-flag``).

    A field that holds a nested options group (:mod:`gistgym.options`) becomes an argument
    group titled by the field's docstring, its options named by their flat names.

    Args:
        parser: The (sub)command's parser.
        cls: The dataclass of its arguments.
        numbers: Option name -> the range its numbers must lie in (also each element of a
            tuple field). A float field not named is still checked to be finite; every
            numeric field should be named (``tests/test_cli_numbers.py`` checks).

    Raises:
        ValueError: ``numbers`` names a field ``cls`` does not have.
    """
    numbers = dict(numbers or {})
    unknown = sorted(set(numbers) - set(leaf_fields(cls)))
    if unknown:
        raise ValueError(f"numbers names {unknown}, which are not fields of {cls.__name__}")
    _add_fields(parser, cls, numbers)


def _add_fields(parser: Any, cls: type, numbers: Mapping[str, NumberType]) -> None:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if is_group(f):
            group = parser.add_argument_group(docs.get(f.name, f.name).rstrip("."))
            _add_fields(group, f.default_factory, numbers)  # type: ignore[arg-type]
            continue
        name = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{docs.get(f.name, '')} (default: {default})"
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        if hint is bool:
            parser.add_argument(
                name, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
            continue
        nargs = "+" if origin is tuple else None
        base = typing.get_args(hint)[0] if origin is tuple else hint
        if typing.get_origin(base) is not None:  # int | None and the like
            base = next((a for a in typing.get_args(base) if a is not type(None)), base)
        kind: Callable[[str], Any] = numbers.get(f.name) or (finite_float if base is float else base)
        if isinstance(kind, NumberType):
            help_text = f"{docs.get(f.name, '')} (default: {default}; {kind.expects})"
        parser.add_argument(name, dest=f.name, type=kind, nargs=nargs, default=default, help=help_text)


def dataclass_from_args(cls: type[T], ns: argparse.Namespace) -> T:
    """Build ``cls`` (and its nested option groups) from parsed arguments."""
    groups = {path for path, _, _ in leaf_fields(cls).values()}
    values: dict[tuple[str, ...], dict[str, Any]] = {path: {} for path in groups}
    for name, (path, _, _) in leaf_fields(cls).items():
        v = getattr(ns, name)
        values[path][name] = tuple(v) if isinstance(v, list) else v

    def build(c: type, path: tuple[str, ...]) -> Any:
        kwargs = dict(values.get(path, {}))
        for f in dataclasses.fields(c):
            if is_group(f):
                kwargs[f.name] = build(f.default_factory, (*path, f.name))  # type: ignore[arg-type]
        return c(**kwargs)

    result: T = build(cls, ())
    return result


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The sub-command action of a group parser (argparse keeps no public handle to it)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError(f"parser {parser.prog!r} has no sub-commands")
