"""Whether this trio run is in virtual time (trio's ``MockClock``), asked one way everywhere.

In virtual time work that could run in a worker runs inline instead — a script, a SQL statement —
since virtual time would jump ahead while a thread or process worked; the runner moves the clock
itself when nothing else could run first; and a signature's freshness is judged by the run's fixed
mapping of the clock, never by the wall.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from trio.testing import MockClock

__all__ = ["in_virtual_time", "virtual_clock"]


def virtual_clock() -> MockClock | None:
    """This trio run's ``MockClock``, or None when it runs in real time."""
    clock = trio.lowlevel.current_clock()
    return clock if isinstance(clock, _mock_clock_class()) else None


def in_virtual_time() -> bool:
    """True when this trio run's clock is a ``MockClock``."""
    return virtual_clock() is not None


@functools.cache
def _mock_clock_class() -> type[MockClock]:
    from trio.testing import MockClock  # here: trio.testing imports pytest, which a script worker does not need

    return MockClock
