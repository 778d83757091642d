"""Payload paths such as ``data.items[0].sku``.

A path is parsed once, when the bot is loaded, into a tuple of steps: a ``str`` step looks a key
up in an object, an ``int`` step indexes a list. Extraction at call time is then a plain loop.

>>> path = parse_path("data.items[0].sku")
>>> path.steps
('data', 'items', 0, 'sku')
>>> path.extract({"data": {"items": [{"sku": "A1"}]}})
(True, 'A1')
>>> path.extract({"data": {}})
(False, None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_INDEX_DIGITS", "PayloadPath", "PathSyntaxError", "parse_path"]

# One dotted segment: a key made of anything but '.', '[' and ']', then zero or more [n] indices.
_SEGMENT = re.compile(r"(?P<key>[^.\[\]]+)(?P<indices>(?:\[[0-9]+\])*)")
_INDEX = re.compile(r"\[([0-9]+)\]")
# An index has at most this many digits (SPEC §17.4): no payload list is longer, and a
# 5,000-digit index would not even convert to an int.
MAX_INDEX_DIGITS = 6


class PathSyntaxError(ValueError):
    """A mapping path that does not parse; the message says where and why."""


@dataclass(frozen=True, slots=True)
class PayloadPath:
    text: str
    steps: tuple[str | int, ...]

    def extract(self, payload: Any) -> tuple[bool, Any]:
        """Follow the path; return ``(found, value)``. Values keep their JSON type."""
        value = payload
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(value, list) or step >= len(value):
                    return False, None
            elif not isinstance(value, dict) or step not in value:
                return False, None
            value = value[step]
        return True, value


def parse_path(text: str) -> PayloadPath:
    """Parse ``a.b[0].c``; raise :class:`PathSyntaxError` naming the bad part."""
    if not isinstance(text, str) or not text.strip():
        raise PathSyntaxError("the path is empty")
    steps: list[str | int] = []
    for position, segment in enumerate(text.split(".")):
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            if not segment:
                raise PathSyntaxError(f"empty segment at position {position + 1} in {text!r}")
            raise PathSyntaxError(
                f"segment {segment!r} in {text!r} is not a key with optional [n] indices"
            )
        steps.append(match["key"])
        for index in _INDEX.findall(match["indices"]):
            if len(index) > MAX_INDEX_DIGITS:
                raise PathSyntaxError(f"index [{index[:12]}{'…' if len(index) > 12 else ''}] in segment "
                                      f"{position + 1} has more than {MAX_INDEX_DIGITS} digits")
            steps.append(int(index))
    return PayloadPath(text=text, steps=tuple(steps))
