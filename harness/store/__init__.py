"""Where bots and conversations live.

The gate talks to a store through the small :class:`Store` protocol. :class:`MemoryStore` is the
default and what simulations use: plain dicts, no I/O, nothing that could let virtual time jump.
:class:`SqliteStore` keeps everything in one SQLite file, so waits survive a restart.
"""

from __future__ import annotations

import time

from ..core.conversations import WallClock
from ..core.store import Store
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = ["Store", "MemoryStore", "SqliteStore", "open_store", "store_clock"]

POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def open_store(spec: str) -> Store:
    """A store from its command-line spelling: ``memory``, ``sqlite:PATH`` or
    ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME``. Raises :class:`ValueError` with a message
    for people when the spelling is wrong or the store cannot be used."""
    if spec == "memory":
        return MemoryStore()
    if spec.startswith("sqlite:") and spec != "sqlite:":
        return SqliteStore(spec.removeprefix("sqlite:"))
    if spec.startswith(POSTGRES_PREFIXES):
        from .postgres import PostgresStore  # psycopg is an optional extra

        return PostgresStore(spec)
    raise ValueError(f"unknown store {spec!r}; use 'memory', 'sqlite:PATH' or 'postgresql://USER@HOST[:PORT]/DBNAME'")


def store_clock(store: Store) -> WallClock:
    """The wall clock a gate on ``store`` shows and judges times by: the database's on PostgreSQL
    (so processes whose clocks differ agree, SPEC §13.2), this machine's otherwise."""
    new_clock = getattr(store, "new_clock", None)
    return new_clock() if new_clock is not None else WallClock(time.time)
