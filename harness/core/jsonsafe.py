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
from typing import Any

__all__ = ["MAX_DEPTH", "UnsafeValue", "check_json_value"]

MAX_DEPTH = 64


class UnsafeValue(ValueError):
    """A value that could not be stored or answered; the message says where and why."""


def check_json_value(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`UnsafeValue` unless ``value`` is plain JSON data that encodes as UTF-8.

    Plain JSON data: dicts with string keys, lists, strings, finite numbers, booleans and None,
    nested at most ``max_depth`` levels (the top-level object is level 1).
    """
    # An explicit stack, not recursion: the input may be deeper than Python's recursion limit.
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, where)
        elif item is None or isinstance(item, (bool, int)):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnsafeValue(f"a number at {where or 'the top level'} is not finite")
        elif isinstance(item, (dict, list)):
            if depth > max_depth:
                raise UnsafeValue(f"nested deeper than {max_depth} levels at {where or 'the top level'}")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise UnsafeValue(f"a key at {where or 'the top level'} is not a string")
                    _check_text(key, where)
                    stack.append((child, depth + 1, f"{where}.{key}" if where else key))
            else:
                stack.extend((child, depth + 1, f"{where}[{index}]") for index, child in enumerate(item))
        else:
            raise UnsafeValue(f"a {type(item).__name__} at {where or 'the top level'} is not JSON data")


def _check_text(text: str, where: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UnsafeValue(f"a string at {where or 'the top level'} is not valid Unicode (lone surrogate)") from None
