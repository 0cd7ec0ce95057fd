"""Option dataclasses with nested groups, addressed by flat names.

``TrainConfig`` and ``CompareConfig`` keep each task family's options in a group of their own
(``config.keyframe.max_distance``), while the command line, sweep files and callers name every
option by its flat name (``--max-distance``, ``max_distance: 10``, ``TrainConfig.of(max_distance=10)``).
A leaf's flat name is its field name, so flat names are unique across a class and its groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T", bound="NestedOptions")


def is_group(f: dataclasses.Field[Any]) -> bool:
    """Whether a field holds a nested group (a dataclass default factory), not an option."""
    factory = f.default_factory
    return factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory)


def leaf_fields(cls: type) -> dict[str, tuple[tuple[str, ...], dataclasses.Field[Any], type]]:
    """Flat name -> ``(group path, field, the class that declares it)`` of every option of ``cls``.

    Raises:
        TypeError: Two options share a flat name.
    """
    out: dict[str, tuple[tuple[str, ...], dataclasses.Field[Any], type]] = {}

    def walk(c: type, path: tuple[str, ...]) -> None:
        for f in dataclasses.fields(c):
            if is_group(f):
                walk(f.default_factory, (*path, f.name))  # type: ignore[arg-type]
                continue
            if f.name in out:
                raise TypeError(f"{cls.__name__}: option {f.name!r} is declared twice ({'.'.join(path)})")
            out[f.name] = (path, f, c)

    walk(cls, ())
    return out


def _nest(cls: type, flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    leaves = leaf_fields(cls)
    unknown = sorted(set(flat) - set(leaves))
    if unknown:
        raise TypeError(f"{cls.__name__} has no option {unknown[0]!r}")
    groups: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        path, f, _ = leaves[name]
        if isinstance(value, list) and isinstance(f.default, tuple):  # as JSON (a run's config.json) gives it back
            value = tuple(value)
        groups.setdefault(".".join(path), {})[name] = value
    return groups


def _build(cls: type, groups: Mapping[str, Mapping[str, Any]], path: tuple[str, ...], base: Any) -> Any:
    values: dict[str, Any] = dict(groups.get(".".join(path), {}))
    for f in dataclasses.fields(cls):
        if is_group(f):
            inner = getattr(base, f.name) if base is not None else None
            values[f.name] = _build(f.default_factory, groups, (*path, f.name), inner)  # type: ignore[arg-type]
    return cls(**values) if base is None else dataclasses.replace(base, **values)


class NestedOptions:
    """Mixin of an options dataclass whose groups are nested dataclasses (see the module docstring)."""

    @classmethod
    def of(cls: type[T], **flat: Any) -> T:
        """An instance from flat option names (``TrainConfig.of(cache=..., cues=True)``).

        Raises:
            TypeError: No option of that name (as the dataclass's own constructor says).
        """
        result: T = _build(cls, _nest(cls, flat), (), None)
        return result

    def replace(self: T, **flat: Any) -> T:
        """A copy with the options named by their flat names changed."""
        result: T = _build(type(self), _nest(type(self), flat), (), self)
        return result

    def flat(self) -> dict[str, Any]:
        """Every option by its flat name (the command line's view)."""
        out: dict[str, Any] = {}
        for name, (path, _, _) in leaf_fields(type(self)).items():
            obj: Any = self
            for group in path:
                obj = getattr(obj, group)
            out[name] = getattr(obj, name)
        return out
