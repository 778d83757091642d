"""The run-long garbage collector tuning gives back what died while it was on."""

from __future__ import annotations

import gc
import weakref

from harness.gc_tuning import long_lived_state_out_of_gc


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector can free it


def test_cycles_that_died_during_a_run_are_freed_when_it_ends() -> None:
    """A worker runs piece after piece: each piece's cycles must not outlive it (they did: +20 MiB a piece)."""
    before = gc.get_threshold()
    with long_lived_state_out_of_gc():
        node = _Node()
        gc.collect()  # node survives a full collection: frozen, as a gate's conversation would be
        alive = weakref.ref(node)
        del node
        assert alive() is not None  # frozen: no collection may look at it during the run
    assert alive() is None
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
