"""Keeping CPython's cyclic garbage collector off long-lived state (the gate's conversations).

A gate keeps its conversations for a while, and a run allocates a lot per conversation. CPython's
full collections walk every tracked object, so with tens of thousands of conversations each one
pauses for tens of milliseconds, and young-generation collections run every 700 allocations.
Freezing what survives a full collection moves it to the permanent generation: later collections
scan only new objects. ``harness serve`` does it for its whole life; a run does it for its own
duration (:func:`long_lived_state_out_of_gc`) and puts everything back afterwards, since a notebook's
process goes on after the run.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["keep_long_lived_state_out_of_gc", "long_lived_state_out_of_gc"]

RUN_GEN0_THRESHOLD = 20_000  # young collections during a run: every 20k allocations, not 700


def _freeze_survivors(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


def keep_long_lived_state_out_of_gc() -> None:
    """From now on, freeze what survives a full collection (for a server's whole life)."""
    gc.freeze()
    gc.callbacks.append(_freeze_survivors)


_runs_lock = threading.Lock()
_runs = 0  # runs in progress in this process (threads may run several at once)
_saved_thresholds = gc.get_threshold()


@contextmanager
def long_lived_state_out_of_gc() -> Iterator[None]:
    """The same for the duration of a run, with fewer young collections; undone when the last
    run of the process ends."""
    global _runs, _saved_thresholds
    with _runs_lock:
        _runs += 1
        if _runs == 1:
            _saved_thresholds = gc.get_threshold()
            gc.callbacks.append(_freeze_survivors)
            gc.set_threshold(max(_saved_thresholds[0], RUN_GEN0_THRESHOLD), *_saved_thresholds[1:])
        gc.freeze()
    try:
        yield
    finally:
        with _runs_lock:
            _runs -= 1
            if _runs == 0:
                gc.set_threshold(*_saved_thresholds)
                gc.callbacks.remove(_freeze_survivors)
                gc.unfreeze()
                # What died while frozen (cycles of finished conversations) is garbage now: a
                # worker running piece after piece would otherwise carry every piece's cycles.
                gc.collect()
