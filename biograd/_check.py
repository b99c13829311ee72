"""Checking a value against a dataclass field's type and bounds, for rule options and configs.

A field says what it accepts in its annotation (int, float, str, bool, dict, list[int], each
optionally `| None`) and its metadata: `choices`, or bounds `low` (>=), `above` (>), `high`
(<=), `below` (<) for numbers and the items of a list, or for a string a regular expression
`pattern` it must match whole, with `means` saying in words what that is. `problem` returns
what is wrong, in words a user can act on, or None.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from typing import Any

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
          dict: "a mapping", list: "a list"}


def _is(kind: Any, value: Any) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _bounds(meta: Mapping[str, Any]) -> list[tuple[str, Any]]:
    signs = {"above": ">", "low": ">=", "below": "<", "high": "<="}
    return [(sign, meta[key]) for key, sign in signs.items() if meta.get(key) is not None]


def _within(value: Any, bounds: list[tuple[str, Any]]) -> bool:
    tests = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
             "<=": lambda a, b: a <= b}
    return all(tests[sign](value, bound) for sign, bound in bounds)


def wanted(kind: Any, meta: Mapping[str, Any]) -> str:
    """What a field of annotation `kind` and metadata `meta` accepts, in words."""
    optional = isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind)
    if optional:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if meta.get("choices"):
        text = f"one of {', '.join(map(repr, meta['choices']))}"
    elif meta.get("pattern"):
        text = meta.get("means") or f"a string matching {meta['pattern']!r}"
    else:
        item = typing.get_args(kind)[0] if typing.get_origin(kind) is list else None
        base = typing.get_origin(kind) or kind
        bounds = " and ".join(f"{sign} {bound}" for sign, bound in _bounds(meta))
        if item is not None:
            text = f"a list of {_NAMES[item].split(' ', 1)[1]}s" + (
                f" {bounds}" if bounds else "")
        else:
            text = _NAMES.get(base, f"a {getattr(base, '__name__', base)}") + (
                f" {bounds}" if bounds else "")
    return text + (" or null" if optional else "")


def problem(kind: Any, meta: Mapping[str, Any], value: Any) -> str | None:
    """None if `value` is what the field accepts, else what it should be ("use ...")."""
    optional = isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind)
    base = kind
    if optional:
        if value is None:
            return None
        base = next(a for a in typing.get_args(kind) if a is not type(None))
    if meta.get("choices"):
        ok = isinstance(value, str) and value in meta["choices"]
    elif meta.get("pattern"):
        ok = isinstance(value, str) and re.fullmatch(meta["pattern"], value) is not None
    elif typing.get_origin(base) is list:
        item = typing.get_args(base)[0]
        ok = isinstance(value, list) and all(
            _is(item, v) and _within(v, _bounds(meta)) for v in value)
    else:
        base = typing.get_origin(base) or base
        ok = _is(base, value) and (base not in (int, float) or _within(value, _bounds(meta)))
    return None if ok else f"use {wanted(kind, meta)}"
