"""Memory of a long-running gate: flat once finished conversations leave memory (``--retention``).

One gate, in virtual time, runs three batches; each batch starts and resolves N conversations
(start, webhook call, flow to the end), then lets virtual time pass the retention so the sweep
drops them (the waits time out after 30 s, so no deadline entry outlives its batch). RSS (what the OS sees) and Python's own allocations (tracemalloc) are read after each
batch; a gate that keeps what it finished grows by the same amount every batch, a bounded one
stays where the first batch left it.

    python3 -m bench.retention_memory            # 3 × 20,000, memory and SQLite stores
    python3 -m bench.retention_memory --quick    # 3 × 2,000
"""

from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import trio
import trio.testing

from harness.core.bots import parse_bot
from harness.core.gate import SWEEP_EVERY_S, Gate
from harness.store import open_store

from ._report import header, row

RETENTION_S = 60.0
BOT = parse_bot({"id": "b", "start": "w", "blocks": {
    "w": {"type": "webhook", "timeout_s": 30, "mappings": {"amount": "amount"}, "success": "ok", "failure": "ok"},
    "ok": {"type": "message", "text": "paid {{amount}}"}}})


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def measure(store_spec: str, per_batch: int, batches: int = 3) -> list[tuple[float, float, float]]:
    """(RSS MiB, traced MiB, seconds) after each batch and its sweep."""

    async def main() -> list[tuple[float, float, float]]:
        gate = Gate(store=open_store(store_spec), retention=RETENTION_S)
        figures = []
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            await gate.add_bot(BOT)
            tracemalloc.start()
            for _ in range(batches):
                started = time.perf_counter()
                for amount in range(per_batch):
                    key = (await gate.start_conversation("b")).key
                    await gate.deliver("b", "w", {"conversation_key": key, "amount": amount})
                await trio.sleep(RETENTION_S + SWEEP_EVERY_S + 1)
                gc.collect()
                figures.append((rss_mib(), tracemalloc.get_traced_memory()[0] / 2**20, time.perf_counter() - started))
            tracemalloc.stop()
            nursery.cancel_scope.cancel()
        return figures

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    per_batch = 2_000 if args.quick else 20_000
    header(f"memory after each batch of {per_batch:,} finished conversations (retention {RETENTION_S:g} s)")
    row("store", "batch", "RSS MiB", "traced MiB", "batch s", widths=(10, 8, 12, 12, 10))
    with tempfile.TemporaryDirectory() as folder:
        for name, spec in (("memory", "memory"), ("sqlite", f"sqlite:{Path(folder) / 'gate.db'}")):
            for batch, (rss, traced, seconds) in enumerate(measure(spec, per_batch), start=1):
                row(name, batch, f"{rss:.1f}", f"{traced:.2f}", f"{seconds:.1f}", widths=(10, 8, 12, 12, 10))


if __name__ == "__main__":
    main()
