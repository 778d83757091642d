"""Is this value safe to keep and to answer with? One check for payloads, variables and scripts.

A value the gate stores must later be written to SQLite and sent back as JSON. Two things pass
``json.loads`` but fail there: strings holding lone surrogates (``"\\ud800"`` is valid JSON, but
not valid UTF-8, so encoding the answer raises), and documents nested so deeply that encoding
them recurses past Python's limit. :func:`check_json_value` finds both *before* any state changes,
so such input is refused (400 ``invalid_payload``, or a failing ``javascript`` block) instead of
resolving a wait and then answering 500.

>>> check_json_value({"a": [1, "ok", None]})
>>> check_json_value({"a": "\\ud800"})
Traceback (most recent call last):
...
harness.core.jsonsafe.UnsafeValue: a string at a is not valid Unicode (lone surrogate)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from itertools import chain, compress
from typing import Any

__all__ = ["MAX_DEPTH", "UnsafeValue", "check_json_value", "safe_by_its_text"]

MAX_DEPTH = 64


class UnsafeValue(ValueError):
    """A value that could not be stored or answered; the message says where and why."""


def check_json_value(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`UnsafeValue` unless ``value`` is plain JSON data that encodes as UTF-8.

    Plain JSON data: dicts with string keys, lists, strings, finite numbers, booleans and None,
    nested at most ``max_depth`` levels (the top-level object is level 1).

    Linear, and cheap per element: the input may be a 1 MiB body of 300,000 tiny values sent by
    anyone (SPEC §17.2). Each container's values are judged in bulk by C-level passes (their
    types, then ``str.isascii`` over its strings, ``math.isfinite`` over its floats); Python code
    runs once per *container*, and no path string is built per element. Only when something is
    wrong does a second, slower walk (:func:`_locate`) find where, for the message.
    """
    if not _is_plain(value, max_depth):
        _locate(value, max_depth)
        raise UnsafeValue("not plain JSON data")  # _locate raises first; this is a backstop


# A number that might overflow to inf: one with an exponent, or more digits than a double's range
# ("ab3e" inside a key is no number: what precedes a number token is a separator or a sign).
_MAYBE_HUGE_NUMBER = re.compile(r"(?:^|[\s:,\[-])[0-9]+(?:\.[0-9]*)?[eE]|[0-9]{300}")


def safe_by_its_text(text: str) -> bool:
    """True when ``json.loads(text)`` cannot hold anything that :func:`check_json_value` refuses,
    as the text itself shows: ASCII with no ``\\u`` escape has no lone surrogate, each level of
    nesting needs a ``[`` or ``{``, and a non-finite float needs ``NaN``, ``Infinity``, an
    exponent or 300+ digits. A usual webhook body, or a script's variables, passes these
    C-speed scans and skips the walk.
    """
    return (text.isascii() and "\\u" not in text and text.count("[") + text.count("{") <= MAX_DEPTH
            and "NaN" not in text and "Infinity" not in text and _MAYBE_HUGE_NUMBER.search(text) is None)


_SCALARS = frozenset({str, int, float, bool, type(None)})
_JSON_TYPES = _SCALARS | {dict, list}
_is_str = {str}.__contains__
_is_float = {float}.__contains__
_is_list = {list}.__contains__
_is_dict = {dict}.__contains__


def _is_plain(value: Any, max_depth: int) -> bool:
    """The check, one *level* of nesting at a time: every value of every container at a level is
    gathered into one flat list by ``itertools.chain`` and judged in bulk, so Python code runs
    once per level (at most ``max_depth``), never once per element or per container."""
    kind = type(value)
    if kind not in (dict, list):
        return kind in _SCALARS and _scalars_ok([value], [kind])
    lists: list[list[Any]] = [value] if kind is list else []
    dicts: list[dict[Any, Any]] = [value] if kind is dict else []
    depth = 1
    while lists or dicts:
        if depth > max_depth:
            return False
        keys = list(chain.from_iterable(dicts))
        if set(map(type, keys)) - {str} or not _scalars_ok(keys, [str] * len(keys)):
            return False
        values = list(chain(chain.from_iterable(lists), chain.from_iterable(map(dict.values, dicts))))
        types = list(map(type, values))
        if set(types) - _JSON_TYPES or not _scalars_ok(values, types):
            return False
        lists = list(compress(values, map(_is_list, types)))
        dicts = list(compress(values, map(_is_dict, types)))
        depth += 1
    return True


def _scalars_ok(values: list[Any], types: list[type]) -> bool:
    """Every string among ``values`` encodes as UTF-8 and every float is finite (C-level passes)."""
    strings = list(compress(values, map(_is_str, types)))
    if not all(map(str.isascii, strings)) and not all(map(_encodes, strings)):
        return False
    return all(map(math.isfinite, compress(values, map(_is_float, types))))


def _locate(value: Any, max_depth: int) -> None:
    """Walk ``value`` keeping the path, and raise :class:`UnsafeValue` saying where it is not plain.

    One iterator per open container (at most ``max_depth``); the path is spelled only on error.
    """
    if not isinstance(value, (dict, list)):
        _check_leaf(value, [])
        return
    frames: list[tuple[Iterator[tuple[Any, Any]], bool]] = [(iter(value.items()) if isinstance(value, dict)
                                                             else enumerate(value), isinstance(value, dict))]
    trail: list[Any] = [None]  # the key or index each open container is at
    while frames:
        children, is_dict = frames[-1]
        entry = next(children, None)
        if entry is None:
            frames.pop()
            trail.pop()
            continue
        key, child = entry
        trail[-1] = key
        if is_dict:
            if not isinstance(key, str):
                trail.pop()
                raise UnsafeValue(f"a key at {_where(trail)} is not a string")
            if not key.isascii() and not _encodes(key):
                trail.pop()
                raise UnsafeValue(f"a key at {_where(trail)} is not valid Unicode (lone surrogate)")
        if isinstance(child, (dict, list)):
            if len(frames) >= max_depth:
                raise UnsafeValue(f"nested deeper than {max_depth} levels at {_where(trail)}")
            frames.append((iter(child.items()) if isinstance(child, dict) else enumerate(child),
                           isinstance(child, dict)))
            trail.append(None)
        else:
            _check_leaf(child, trail)


def _check_leaf(item: Any, trail: list[Any]) -> None:
    if isinstance(item, str):
        if not item.isascii() and not _encodes(item):
            raise UnsafeValue(f"a string at {_where(trail)} is not valid Unicode (lone surrogate)")
    elif item is None or isinstance(item, (bool, int)):
        return
    elif isinstance(item, float):
        if not math.isfinite(item):
            raise UnsafeValue(f"a number at {_where(trail)} is not finite")
    else:
        raise UnsafeValue(f"a {type(item).__name__} at {_where(trail)} is not JSON data")


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(trail: list[Any]) -> str:
    """``data.items[0]`` from the keys and indices the walk is at (only ever built for an error)."""
    where = ""
    for step in trail:
        if isinstance(step, int) and not isinstance(step, bool):
            where += f"[{step}]"
        elif step is not None:
            where = f"{where}.{step}" if where else str(step)
    return where or "the top level"
