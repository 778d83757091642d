"""Refusals: every "no" the gate or the server gives, as one exception type with a stable code.

The codes are the contract's error codes (SPEC §3–4). The HTTP adapter maps each code to a
status in one table (:data:`harness.server.STATUS_BY_CODE`); the core never speaks HTTP.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Refused"]


class Refused(Exception):
    """A refused request. ``code`` is machine-readable, ``detail`` is for people."""

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}
