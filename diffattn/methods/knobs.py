"""Knob syntax: how a method's knobs are written on the command line, in ``--config`` strings, in JSON and on
the demo page, parsed and checked here once for every front end.

Values are typed by the method's config dataclass: a field typed ``int | tuple[int, ...]`` takes ``8`` or
``8,8`` (one value per axis), ``bool`` takes ``true``/``false``, ``float`` and ``int`` their numbers, a
``Literal`` one of its choices, ``str`` any text. Blank text and None mean "unset" (the preset's or the
config's default applies).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from .registry import get_method


@dataclasses.dataclass(frozen=True)
class KnobSpec:
    """One config field of a method, as a widget: ``kind`` is int, float, bool, ints (int or per-axis
    tuple, typed as ``8`` or ``8,8``), str or choice (``choices`` set)."""

    name: str
    kind: str
    default: Any
    info: str
    choices: tuple[Any, ...] = ()


def parse_ints(text: str) -> int | tuple[int, ...]:
    """``"16"`` -> 16, ``"8,16,16"`` -> (8, 16, 16); an ``argparse.ArgumentTypeError`` (a ValueError) otherwise."""
    try:
        values = tuple(int(x) for x in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int or a comma-separated list of ints") from None
    return values[0] if len(values) == 1 else values


def split_assignment(text: str) -> tuple[str, str]:
    """``"window=8,8"`` -> ``("window", "8,8")``: the syntax of one knob (its value is typed by `parse_knobs`,
    once the method is known); an ``argparse.ArgumentTypeError`` if it is not ``NAME=VALUE``."""
    name, sep, raw = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, raw


def _field_docs(cls: type) -> dict[str, str]:
    """``name: text`` entries of a config's docstring (our configs document every knob and its range
    there), continuation lines joined."""
    docs: dict[str, str] = {}
    current = None
    for line in (cls.__doc__ or "").splitlines():
        name, sep, text = line.strip().partition(":")
        if sep and name.isidentifier() and line.startswith(" " * 4) and not line.startswith(" " * 8):
            current = name
            docs[name] = text.strip()
        elif current and line.startswith(" " * 8):
            docs[current] += " " + line.strip()
        else:
            current = None
    return docs


def _kind(hint: Any) -> tuple[str, tuple[Any, ...]]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "choice", args
    if hint in (bool, int, float, str):
        return hint.__name__, ()
    members = [a for a in args if a is not type(None)]
    if len(members) == 1 and origin in (typing.Union, types.UnionType):
        return _kind(members[0])  # Optional[X]
    flat = {typing.get_origin(a) or a for a in members}
    if flat <= {int, tuple}:
        return "ints", ()
    return "str", ()


def knob_specs(method: str) -> list[KnobSpec]:
    """The knobs of ``method``, from its config dataclass (types, defaults, documented ranges)."""
    config = get_method(method).Config
    hints = typing.get_type_hints(config)
    docs = _field_docs(config)
    specs = []
    for f in dataclasses.fields(config):
        kind, choices = _kind(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        specs.append(KnobSpec(f.name, kind, default, docs.get(f.name, ""), choices))
    return specs


def _typed(spec: KnobSpec, value: Any) -> Any:
    kind = spec.kind
    if kind == "ints" and isinstance(value, list | tuple):  # JSON has no tuples
        return tuple(int(x) for x in value)
    if kind == "ints" and isinstance(value, str):
        try:
            return parse_ints(value)
        except argparse.ArgumentTypeError as e:  # argparse's type for its own messages; a ValueError here
            raise ValueError(str(e)) from None
    if kind in ("int", "ints") and isinstance(value, float):
        if not value.is_integer():
            raise ValueError("not a whole number")
        return int(value)
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool" and isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return value.lower() == "true"
    if kind == "choice":
        matches = [c for c in spec.choices if str(c) == str(value)]
        if not matches:
            raise ValueError(f"expected one of {list(spec.choices)}")
        return matches[0]
    return value


def parse_knobs(method: str, raw: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Knob values as written (text, numbers, JSON lists) -> the method's config knobs, typed by its config.

    Blank text and None are left out (unset). An unknown method is a ValueError naming the known ones; an unknown
    knob an `UnknownKnobError` naming the accepted ones; a value that does not parse a ValueError naming it.
    """
    cls = get_method(method)
    items = dict(raw.items() if isinstance(raw, Mapping) else raw)
    cls.check_knob_names(items)
    specs = {s.name: s for s in knob_specs(method)}
    knobs: dict[str, Any] = {}
    for name, value in items.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            knobs[name] = _typed(specs[name], value)
        except ValueError as e:
            raise ValueError(f"knob {name}={value!r} of {method!r} is not a valid {specs[name].kind} ({e})") from None
    return knobs


def format_knobs(knobs: Iterable[tuple[str, Any]]) -> str:
    """``window=8,8 stride=1``: knobs written back in the syntax `split_assignment` reads."""
    return " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in knobs)
