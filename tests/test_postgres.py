"""What only the PostgreSQL store does: following the database's clock (SPEC §13.2) and answering
the live page's figures without a scan (§17.7). The store contract it shares with the other
stores is in test_store.py, test_gate.py, test_server.py and test_durability.py."""

from __future__ import annotations

import psycopg
import pytest
import trio

from harness.core.gate import Gate
from harness.store import open_store, store_clock
from harness.store.postgres import MAX_SLEW, STEP_S, DatabaseClock, PostgresStore

from .conftest import PUBLIC_URL, webhook_bot


def database_now(url: str) -> float:
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT extract(epoch FROM clock_timestamp())::double precision").fetchone()
    assert row is not None
    return float(row[0])


async def test_a_small_clock_error_is_slewed_and_now_never_runs_backwards(autojump_clock: trio.testing.MockClock) -> None:
    # Virtual time: trio's clock does not move between the readings, so the mapping is exact.
    clock = DatabaseClock(lambda: 1_000_000.0)
    start = trio.current_time()
    assert clock.unix(start) == pytest.approx(1_000_000.0, abs=1e-3)
    assert not clock.aim(clock.offset - 0.2, start)  # the mapping runs 0.2 s ahead of the database: slew
    readings = []
    for second in range(1, 61):
        now = start + second
        clock.slew(now)
        readings.append(clock.unix(now))
    assert all(later > earlier for earlier, later in zip(readings, readings[1:]))
    # 60 s at MAX_SLEW per second: 0.2 s corrected at most that fast, then exactly.
    assert readings[0] == pytest.approx(1_000_001.0 - MAX_SLEW, abs=1e-3)
    assert readings[-1] == pytest.approx(1_000_060.0 - 0.2, abs=1e-3)


async def test_a_mapping_far_behind_the_database_catches_up_at_once(autojump_clock: trio.testing.MockClock) -> None:
    clock = DatabaseClock(lambda: 1_000_000.0)
    now = trio.current_time()
    assert clock.aim(clock.offset + STEP_S + 30.0, now)
    assert clock.unix(now) == pytest.approx(1_000_000.0 + STEP_S + 30.0, abs=1e-3)


async def test_a_process_whose_mapping_fell_behind_catches_up_and_times_waits_out(pg_url: str) -> None:
    """A process whose mapping of the database's clock fell 30 s behind (suspended, or a drifting
    clock) re-measures it while it runs, and then times out a stopped process's wait on time."""
    opener = open_store(pg_url)
    first = Gate(public_url=PUBLIC_URL, store=opener, clock=store_clock(opener))
    with trio.CancelScope() as stopped:  # a process that opens a wait and stops
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            await first.add_bot(webhook_bot(timeout_s=2))
            key = (await first.start_conversation("pay")).key
            stopped.cancel()
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    clock = store_clock(store)
    assert isinstance(clock, DatabaseClock)
    clock.aim(clock.offset - 30.0, trio.current_time())
    clock.slew(trio.current_time() + 1e6)  # as if it had always been 30 s behind
    assert clock.unix(trio.current_time()) < database_now(pg_url) - 29
    second = Gate(public_url=PUBLIC_URL, store=store, clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        with trio.move_on_after(20):
            while (await store.get_conversation(key)).waits[0].is_open:  # type: ignore[union-attr]
                await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert abs(clock.unix(trio.current_time()) - database_now(pg_url)) < 0.5
    with psycopg.connect(pg_url) as connection:
        row = connection.execute("SELECT outcome, reason, resolved_at - deadline FROM waits").fetchone()
    assert row is not None and row[:2] == ("failure", "timeout")
    assert 0 <= row[2] <= 2.0
    await opener.close()
    await store.close()


def stored_open_waits(url: str) -> int:
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT count(*) FROM waits WHERE outcome IS NULL").fetchone()
    assert row is not None
    return int(row[0])


async def test_the_open_wait_count_is_kept_by_every_process_without_a_scan(pg_url: str, autojump_clock) -> None:
    """Two gates on one database: starts, calls through the other gate, a second call for a
    resolved wait, timeouts — the count the live page shows always matches the waits table."""
    stores = [open_store(pg_url), open_store(pg_url)]
    first, second = (Gate(public_url=PUBLIC_URL, store=store, clock=store_clock(store)) for store in stores)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await nursery.start(second.run)
        await first.add_bot(webhook_bot(timeout_s=30))
        keys = [(await gate.start_conversation("pay")).key for gate in (first, second) * 6]
        assert [await first.open_wait_count(), await second.open_wait_count(), stored_open_waits(pg_url)] == [12] * 3
        for key in keys[:3]:
            await second.deliver("pay", "wait", {"conversation_key": key, "data": {"amount": 1}})
        with pytest.raises(Exception, match="not waiting|already"):
            await first.deliver("pay", "wait", {"conversation_key": keys[0], "data": {"amount": 2}})
        assert [await first.open_wait_count(), stored_open_waits(pg_url)] == [9, 9]
        await trio.sleep(31)
        assert [await second.open_wait_count(), stored_open_waits(pg_url)] == [0, 0]
        nursery.cancel_scope.cancel()
    with psycopg.connect(pg_url) as connection:
        plan = "\n".join(row[0] for row in connection.execute(
            "EXPLAIN SELECT coalesce(sum(value), 0) FROM open_wait_counts").fetchall())
    assert "waits" not in plan.replace("open_wait_counts", "")  # the count never reads the waits table
    for store in stores:
        await store.close()
