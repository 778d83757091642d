"""Where bots and conversations live.

The gate talks to a store through the small :class:`Store` protocol. :class:`MemoryStore` is the
default and what simulations use: plain dicts, no I/O, nothing that could let virtual time jump.
:class:`SqliteStore` keeps everything in one SQLite file, so waits survive a restart.
"""

from __future__ import annotations

from ..core.store import Store
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = ["Store", "MemoryStore", "SqliteStore", "open_store"]


def open_store(spec: str) -> Store:
    """A store from its command-line spelling: ``memory`` or ``sqlite:PATH``."""
    if spec == "memory":
        return MemoryStore()
    if spec.startswith("sqlite:") and spec != "sqlite:":
        return SqliteStore(spec.removeprefix("sqlite:"))
    raise ValueError(f"unknown store {spec!r}; use 'memory' or 'sqlite:PATH'")
