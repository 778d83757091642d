"""A store on PostgreSQL (``--store postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME``), shared by
any number of gate processes on any number of machines (SPEC §13).

* **No blocking on the event loop.** psycopg's async API is asyncio-only, so the store uses sync
  psycopg connections from a :class:`psycopg_pool.ConnectionPool` in worker threads
  (``trio.to_thread.run_sync``); under trio's ``MockClock`` (tests in virtual time) it runs them
  inline instead, since a thread would let virtual time jump. Only the SQL runs in a thread: the
  process's caches change on the event loop, between two awaits.
* **Exactly-once from the database.** Resolving a wait is ``UPDATE waits … WHERE outcome IS NULL``
  plus ``UPDATE conversations … WHERE version = <the version we read>`` in one transaction; if
  either touches no row another process got there first, the transaction rolls back and
  :meth:`commit` answers False (the gate then re-reads the real state to answer 410 or 409).
* **One clock: the database's.** A :class:`DatabaseClock` maps this process's trio clock onto
  the database's ``clock_timestamp()``, whatever this machine's wall clock says. Deadlines,
  ``opened_at``, ``resolved_at`` and late calls' ``at`` are all on it, so processes whose clocks
  differ agree on which call was late. The mapping is measured at connect and again every
  :data:`CLOCK_CHECK_EVERY_S` (a monotonic clock drifts against the database's by up to 100 ppm
  without NTP — seconds a day — and stops while a machine or VM is suspended): a small error is
  slewed away (at most :data:`MAX_SLEW` s per s, so the mapped time never runs backwards and
  timers already armed move by milliseconds), a forward jump past :data:`STEP_S` is taken at once
  (waits it made overdue are then claimed at the next poll). Signature freshness stays on this
  process's wall clock (SPEC §17.8).
* **Orphaned deadlines.** Every process arms timers for the waits it knows, and once a second
  (:meth:`overdue_waits`) claims overdue open waits nobody resolved — their process died, or the
  database was down — with ``FOR UPDATE SKIP LOCKED`` on a partial index of open deadlines and a
  short lease, so live processes share that work instead of all doing it.
* **Coherent caches.** Bots never change once stored: one found is cached, one not found is asked
  for again next time (a bot registered anywhere is served everywhere at once). A conversation is
  cached with its row version and number of late calls, checked with one indexed read per use.
* **Outages.** Connect, statement and TCP timeouts bound every call to a few seconds; a database
  that cannot answer raises :class:`StoreUnavailable` (the server answers 503
  ``store_unavailable``) and a failed transaction changes nothing. The pool reconnects in the
  background; broken connections are dropped at the first error.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ..core.bots import Bot, parse_bot
from ..core.conversations import MAX_LATE_CALLS, Conversation, EarlyCall, WallClock
from ..core.errors import Refused
from ..core.store import OpenWait, StoreUnavailable
from ..core.virtual_time import in_virtual_time
from .rows import WAIT_COLUMNS, conversation_from_rows, open_wait_rows, state_json, wait_rows

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = ["DatabaseClock", "PostgresStore", "SCHEMA_VERSION"]

log = logging.getLogger("harness.store.postgres")

T = TypeVar("T")

SCHEMA_VERSION = 1
CACHE_SIZE = 10_000
POOL_SIZE = 8
CONNECT_TIMEOUT_S = 2  # libpq's connect_timeout (whole seconds)
STATEMENT_TIMEOUT_MS = 3000
POOL_WAIT_S = 3.0  # waiting for a free connection; with the timeouts above a call fails within ≈ 4 s
ORPHAN_LEASE_S = 2.0  # a process that claimed overdue waits has this long before others may claim them
CLOCK_SAMPLES = 5
COUNTER_SLOTS = 16
CLOCK_CHECK_EVERY_S = 60.0  # re-measure the database's clock this often (seconds of trio time)
MAX_SLEW = 0.005  # a small clock error is corrected at most this fast (seconds per second)
STEP_S = 0.5  # the mapping is this far behind the database's clock: catch up at once

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS harness_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS bots (
    id text PRIMARY KEY,
    document text NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY          -- registration order
);
CREATE TABLE IF NOT EXISTS conversations (
    key text PRIMARY KEY,
    bot text NOT NULL REFERENCES bots(id),
    version integer NOT NULL,
    state text NOT NULL,                             -- JSON, as on SQLite (key order kept)
    late_calls_total integer NOT NULL DEFAULT 0      -- late_calls keeps the first {MAX_LATE_CALLS}
);
CREATE TABLE IF NOT EXISTS waits (
    key text NOT NULL REFERENCES conversations(key),
    idx integer NOT NULL,
    block text NOT NULL,
    opened_at double precision NOT NULL,             -- unix seconds on the database's clock
    deadline double precision NOT NULL,
    timeout_s integer NOT NULL,
    outcome text,
    reason text,
    resolved_at double precision,
    waited_s double precision,
    claimed_until double precision,                  -- lease of a process resolving it as overdue
    PRIMARY KEY (key, idx)
);
CREATE INDEX IF NOT EXISTS open_wait_deadlines ON waits (deadline) WHERE outcome IS NULL;
CREATE TABLE IF NOT EXISTS late_calls (
    key text NOT NULL REFERENCES conversations(key),
    block text NOT NULL,
    at double precision NOT NULL,
    after_deadline_s double precision NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX IF NOT EXISTS late_calls_by_key ON late_calls (key, seq);
CREATE TABLE IF NOT EXISTS early_calls (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key text NOT NULL REFERENCES conversations(key),
    block text NOT NULL,
    at double precision NOT NULL,
    expires_at double precision NOT NULL,
    outcome text NOT NULL,                           -- pending | used | expired
    payload text NOT NULL                            -- JSON
);
CREATE INDEX IF NOT EXISTS early_calls_by_key ON early_calls (key, id);
CREATE INDEX IF NOT EXISTS pending_early_calls ON early_calls (expires_at) WHERE outcome = 'pending';
CREATE TABLE IF NOT EXISTS open_wait_counts (     -- open waits = sum(value), kept in the same transactions
    slot integer PRIMARY KEY,                         -- {COUNTER_SLOTS} rows, so concurrent commits rarely wait on one
    value bigint NOT NULL
);
INSERT INTO open_wait_counts (slot, value)
    SELECT slot, CASE WHEN slot = 0 THEN (SELECT count(*) FROM waits WHERE outcome IS NULL) ELSE 0 END
    FROM generate_series(0, {COUNTER_SLOTS} - 1) AS slot
    WHERE NOT EXISTS (SELECT 1 FROM open_wait_counts);
INSERT INTO harness_schema (version) SELECT {SCHEMA_VERSION} WHERE NOT EXISTS (SELECT 1 FROM harness_schema);
"""


class _Lost(Exception):
    """Another process changed the conversation first; the transaction rolls back."""


def _import_psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise ValueError(
            "the PostgreSQL store needs psycopg: pip install 'webhook-gate-harness[postgresql]'") from None
    return psycopg, psycopg_pool


class PostgresStore:
    shared = True

    def __init__(self, url: str, *, cache_size: int = CACHE_SIZE, pool_size: int = POOL_SIZE) -> None:
        """Connect, create the tables if needed, and measure the database's clock.

        Raises :class:`ValueError` with a message for people when the database cannot be reached,
        or holds a schema newer than this code knows.
        """
        psycopg, psycopg_pool = _import_psycopg()
        self._errors: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg_pool.PoolTimeout,
                                                        psycopg.InterfaceError)
        self.url = url
        self.cache_size = cache_size
        shown = _without_password(url)
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as error:
            raise ValueError(f"{shown}: not a PostgreSQL URL: {error}") from None
        self._pool: ConnectionPool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, timeout=POOL_WAIT_S,
            reconnect_timeout=5.0,  # give up a background attempt soon: the next request starts a fresh one
            kwargs={
                "autocommit": True,
                "connect_timeout": CONNECT_TIMEOUT_S,
                "tcp_user_timeout": STATEMENT_TIMEOUT_MS + 1000,  # an unreachable host, not only a stopped server
                "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={STATEMENT_TIMEOUT_MS}"
                           " -c idle_in_transaction_session_timeout=10000 -c TimeZone=UTC",
                "application_name": "harness",
            },
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S + POOL_WAIT_S)
            with self._pool.connection() as connection:
                version = self._create_schema(connection)
                self._skew = _database_minus(connection, time.time)[1]
        except self._errors as error:
            self._pool.close()
            raise ValueError(f"{shown}: cannot use the database: {_reason(error)}") from None
        if version > SCHEMA_VERSION:
            self._pool.close()
            raise ValueError(f"{shown}: the database holds harness schema version {version}, newer than this "
                             f"harness knows ({SCHEMA_VERSION}); upgrade the harness")
        self._limiter = trio.CapacityLimiter(pool_size)
        self._clock: WallClock | None = None
        self._next_clock_check = -math.inf
        self._bots: dict[str, Bot] = {}
        self._seen: OrderedDict[str, Conversation] = OrderedDict()  # our own copies, least recently used first

    @staticmethod
    def _create_schema(connection: psycopg.Connection[Any]) -> int:
        """Create the tables once, whoever starts first; the version the database holds."""
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(hashtext('harness_schema'))")
            connection.execute(_SCHEMA)
            row = connection.execute("SELECT max(version) FROM harness_schema").fetchone()
        return int(row[0]) if row and row[0] is not None else SCHEMA_VERSION

    def wall_time(self) -> float:
        """Unix seconds on the database's clock, as measured at connect (this process's clock, corrected)."""
        return time.time() + self._skew

    def new_clock(self) -> DatabaseClock:
        """The clock a gate on this store keeps (see :func:`harness.store.store_clock`)."""
        return DatabaseClock(self.wall_time)

    def bind(self, clock: WallClock) -> None:
        self._clock = clock

    @property
    def clock(self) -> WallClock:
        if self._clock is None:
            raise RuntimeError("PostgresStore is not bound to a gate's clock")
        return self._clock

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._pool.close)

    # -- running SQL off the event loop ---------------------------------------------------------

    async def _run(self, work: Callable[[psycopg.Connection[Any]], T], *, read_only: bool = False) -> T:
        """Run ``work`` with a pooled connection, in a worker thread (inline under MockClock).

        A database that cannot answer raises :class:`StoreUnavailable`; a read is tried once more
        first, since the connection it got may be one the server dropped while it was idle.
        """
        attempts = 2 if read_only else 1
        for attempt in range(attempts):
            try:
                if in_virtual_time():
                    return self._with_connection(work)
                return await trio.to_thread.run_sync(self._with_connection, work, limiter=self._limiter)
            except self._errors as error:
                if attempt + 1 < attempts:
                    continue
                raise StoreUnavailable(_reason(error)) from None
        raise AssertionError("unreachable")

    def _with_connection(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        try:
            with self._pool.connection() as connection:
                return work(connection)
        except self._errors:
            self._pool.check()  # drop every idle connection the server has closed, not just this one
            raise

    # -- bots ---------------------------------------------------------------------------------

    async def add_bot(self, bot: Bot) -> None:
        document = json.dumps(bot.to_dict())

        def insert(connection: psycopg.Connection[Any]) -> int:
            return connection.execute("INSERT INTO bots (id, document) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING",
                                      (bot.id, document)).rowcount

        if await self._run(insert) != 1:
            raise Refused("bot_exists", f"a bot with id {bot.id!r} already exists")
        self._bots[bot.id] = bot

    async def get_bot(self, bot_id: str) -> Bot | None:
        bot = self._bots.get(bot_id)
        if bot is not None:
            return bot  # bots never change once stored; one not found is asked for again next time

        def select(connection: psycopg.Connection[Any]) -> Any:
            return connection.execute("SELECT document FROM bots WHERE id = %s", (bot_id,)).fetchone()

        row = await self._run(select, read_only=True)
        return None if row is None else self._bot(bot_id, row[0])

    async def bots(self) -> list[Bot]:
        def select(connection: psycopg.Connection[Any]) -> list[Any]:
            return connection.execute("SELECT id, document FROM bots ORDER BY seq").fetchall()

        return [self._bot(bot_id, document) for bot_id, document in await self._run(select, read_only=True)]

    def _bot(self, bot_id: str, document: str) -> Bot:
        bot = self._bots.get(bot_id)
        if bot is None:
            bot = self._bots[bot_id] = parse_bot(json.loads(document))
        return bot

    # -- conversations --------------------------------------------------------------------------

    async def add_conversation(self, conversation: Conversation) -> None:
        state = state_json(conversation, self.clock)
        waits = wait_rows(conversation, self.clock)

        def insert(connection: psycopg.Connection[Any]) -> None:
            with connection.transaction():
                connection.execute("INSERT INTO conversations (key, bot, version, state) VALUES (%s, %s, 1, %s)",
                                   (conversation.key, conversation.bot, state))
                _insert_waits(connection, waits)
                _count_open_waits(connection, open_wait_rows(waits))

        await self._run(insert)
        conversation.version = 1
        self._remember(conversation)

    async def get_conversation(self, key: str) -> Conversation | None:
        """A copy of the conversation as stored now: from this process's cache when the stored
        version and late-call count still match it (one indexed read), else loaded afresh."""
        seen = self._seen.get(key)
        known = (seen.version, seen.late_calls_total) if seen is not None else None

        def select(connection: psycopg.Connection[Any]) -> tuple[int, int, Any] | None:
            row = connection.execute(
                "SELECT version, late_calls_total, bot, state FROM conversations WHERE key = %s", (key,)).fetchone()
            if row is None:
                return None
            version, late_total, bot, state = row
            if known == (version, late_total):
                return version, late_total, None
            waits = connection.execute(f"SELECT {WAIT_COLUMNS} FROM waits WHERE key = %s ORDER BY idx",
                                       (key,)).fetchall()
            late_calls = connection.execute(
                "SELECT block, at, after_deadline_s FROM late_calls WHERE key = %s ORDER BY seq LIMIT %s",
                (key, MAX_LATE_CALLS)).fetchall()
            early_calls = connection.execute(
                "SELECT id, block, at, expires_at, outcome, payload FROM early_calls WHERE key = %s ORDER BY id",
                (key,)).fetchall()
            return version, late_total, (bot, state, waits, late_calls, early_calls)

        found = await self._run(select, read_only=True)
        if found is None:
            self._seen.pop(key, None)
            return None
        version, late_total, rows = found
        if rows is None:
            current = self._seen.get(key)
            if current is not None and (current.version, current.late_calls_total) == (version, late_total):
                self._seen.move_to_end(key)
                return current.clone()
            self._seen.pop(key, None)  # our copy moved while we asked: load it afresh
            return await self.get_conversation(key)
        bot, state, waits, late_calls, early_calls = rows
        trio_time = self.clock.from_unix
        conversation = conversation_from_rows(key, bot, state, waits, late_calls, self.clock)
        conversation.version, conversation.late_calls_total = version, late_total
        conversation.early_calls = [
            EarlyCall(id=early_id, block=block, at=trio_time(at), expires_at=trio_time(expires_at),
                      outcome=outcome, payload=json.loads(payload))
            for early_id, block, at, expires_at, outcome, payload in early_calls
        ]
        self._remember(conversation)
        return conversation.clone()

    def _remember(self, conversation: Conversation) -> None:
        """Keep a copy of our own of what is stored now (callers own and change theirs)."""
        self._seen[conversation.key] = conversation.clone()
        self._seen.move_to_end(conversation.key)
        while len(self._seen) > self.cache_size:
            self._seen.popitem(last=False)

    async def forget(self, key: str) -> None:
        self._seen.pop(key, None)  # still in the database; the next read loads it again

    async def commit(self, conversation: Conversation, *, resolved_wait: int) -> bool:
        wait = conversation.waits[resolved_wait]
        assert wait.resolved_at is not None
        resolution = (wait.outcome, wait.reason, self.clock.unix(wait.resolved_at), wait.waited_s,
                      conversation.key, resolved_wait)
        state = state_json(conversation, self.clock)
        later_waits = wait_rows(conversation, self.clock, resolved_wait + 1)
        settled_early = [(early.outcome, early.id) for early in conversation.early_calls if early.outcome != "pending"]
        version = conversation.version

        def update(connection: psycopg.Connection[Any]) -> bool:
            try:
                with connection.transaction():
                    claimed = connection.execute(
                        "UPDATE waits SET outcome = %s, reason = %s, resolved_at = %s, waited_s = %s"
                        " WHERE key = %s AND idx = %s AND outcome IS NULL", resolution).rowcount
                    updated = connection.execute(
                        "UPDATE conversations SET state = %s, version = version + 1 WHERE key = %s AND version = %s",
                        (state, conversation.key, version)).rowcount
                    if claimed != 1 or updated != 1:
                        raise _Lost
                    _insert_waits(connection, later_waits)
                    _count_open_waits(connection, open_wait_rows(later_waits) - 1)
                    if settled_early:
                        with connection.cursor() as cursor:
                            cursor.executemany("UPDATE early_calls SET outcome = %s WHERE id = %s", settled_early)
            except _Lost:
                return False
            return True

        try:
            committed = await self._run(update)
        except StoreUnavailable:
            self._seen.pop(conversation.key, None)  # we cannot know what the database holds now
            raise
        if not committed:
            self._seen.pop(conversation.key, None)
            return False
        conversation.version = version + 1
        self._remember(conversation)
        return True

    async def add_late_call(self, conversation: Conversation, late_call: dict[str, Any]) -> None:
        row = {"key": conversation.key, "block": late_call["block"], "at": self.clock.unix(late_call["at"]),
               "after": late_call["after_deadline_s"], "keep": MAX_LATE_CALLS}

        def insert(connection: psycopg.Connection[Any]) -> int:
            with connection.transaction():
                found = connection.execute(
                    "UPDATE conversations SET late_calls_total = late_calls_total + 1 WHERE key = %(key)s"
                    " RETURNING late_calls_total", row).fetchone()
                total = int(found[0]) if found else 0
                if 0 < total <= MAX_LATE_CALLS:
                    connection.execute("INSERT INTO late_calls (key, block, at, after_deadline_s)"
                                       " VALUES (%(key)s, %(block)s, %(at)s, %(after)s)", row)
            return total

        total = await self._run(insert)
        if len(conversation.late_calls) < MAX_LATE_CALLS:
            conversation.late_calls.append(late_call)
        conversation.late_calls_total = max(total, conversation.late_calls_total + 1)
        seen = self._seen.get(conversation.key)
        if seen is not None and seen.version == conversation.version:
            if len(seen.late_calls) < MAX_LATE_CALLS:
                seen.late_calls.append(late_call)
            seen.late_calls_total = conversation.late_calls_total

    async def hold_early_call(self, conversation: Conversation, early: EarlyCall) -> bool:
        row = {"key": conversation.key, "version": conversation.version, "block": early.block,
               "at": self.clock.unix(early.at), "expires_at": self.clock.unix(early.expires_at),
               "payload": json.dumps(early.payload)}

        def insert(connection: psycopg.Connection[Any]) -> int | None:
            with connection.transaction():
                if connection.execute("UPDATE conversations SET version = version + 1"
                                      " WHERE key = %(key)s AND version = %(version)s", row).rowcount != 1:
                    return None
                found = connection.execute(
                    "INSERT INTO early_calls (key, block, at, expires_at, outcome, payload)"
                    " VALUES (%(key)s, %(block)s, %(at)s, %(expires_at)s, 'pending', %(payload)s) RETURNING id",
                    row).fetchone()
                assert found is not None
                return int(found[0])

        early_id = await self._run(insert)
        if early_id is None:
            self._seen.pop(conversation.key, None)
            return False
        early.id = early_id
        conversation.early_calls.append(early)
        conversation.version += 1
        self._remember(conversation)
        return True

    async def expire_early_calls(self, now: float) -> None:
        cutoff = self.clock.unix(now)
        await self._run(lambda connection: connection.execute(
            "UPDATE early_calls SET outcome = 'expired' WHERE outcome = 'pending' AND expires_at <= %s", (cutoff,)))

    # -- waits ----------------------------------------------------------------------------------

    async def open_waits(self) -> list[tuple[str, int, float]]:
        def select(connection: psycopg.Connection[Any]) -> list[Any]:
            return connection.execute("SELECT key, idx, deadline FROM waits WHERE outcome IS NULL"
                                      " ORDER BY deadline").fetchall()

        trio_time = self.clock.from_unix
        return [(key, index, trio_time(deadline)) for key, index, deadline in await self._run(select, read_only=True)]

    async def overdue_waits(self, now: float, limit: int) -> list[tuple[str, int]]:
        """Claim up to ``limit`` open waits whose deadline is at or before ``now`` (trio time).

        Rows another process is claiming right now are skipped (``SKIP LOCKED``), and a claim
        holds for :data:`ORPHAN_LEASE_S`, so live processes split a backlog between them; a
        claimer that dies leaves its claims to the others once the lease ends.
        """
        await self._follow_database_clock()
        cutoff = self.clock.unix(now)

        def claim(connection: psycopg.Connection[Any]) -> list[tuple[str, int]]:
            with connection.transaction():
                rows = connection.execute(
                    "UPDATE waits SET claimed_until = %(lease)s FROM ("
                    "  SELECT key, idx FROM waits"
                    "  WHERE outcome IS NULL AND deadline <= %(cutoff)s"
                    "    AND (claimed_until IS NULL OR claimed_until <= %(cutoff)s)"
                    "  ORDER BY deadline LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS due"
                    " WHERE waits.key = due.key AND waits.idx = due.idx RETURNING waits.key, waits.idx",
                    {"cutoff": cutoff, "lease": cutoff + ORPHAN_LEASE_S, "limit": limit}).fetchall()
            return [(key, index) for key, index in rows]

        return await self._run(claim)

    async def soonest_open_waits(self, limit: int) -> list[OpenWait]:
        def select(connection: psycopg.Connection[Any]) -> list[Any]:
            return connection.execute(
                "SELECT w.key, w.idx, c.bot, w.block, w.opened_at, w.deadline, w.timeout_s"
                " FROM waits w JOIN conversations c ON c.key = w.key"
                " WHERE w.outcome IS NULL ORDER BY w.deadline LIMIT %s", (limit,)).fetchall()

        trio_time = self.clock.from_unix
        return [OpenWait(key=key, index=index, bot=bot, block=block, opened_at=trio_time(opened_at),
                         deadline=trio_time(deadline), timeout_s=timeout_s)
                for key, index, bot, block, opened_at, deadline, timeout_s in await self._run(select, read_only=True)]

    async def open_wait_count(self) -> int:
        """From the counter rows kept in the same transactions as the waits (never a scan)."""
        def count(connection: psycopg.Connection[Any]) -> int:
            row = connection.execute("SELECT coalesce(sum(value), 0) FROM open_wait_counts").fetchone()
            return int(row[0]) if row else 0

        return await self._run(count, read_only=True)

    async def _follow_database_clock(self) -> None:
        """Re-measure the database's clock every :data:`CLOCK_CHECK_EVERY_S` and correct the
        gate's mapping towards it (called from the once-a-second poll for overdue waits). Real time
        only: under ``MockClock`` the mapping is virtual by design."""
        clock = self._clock
        if not isinstance(clock, DatabaseClock) or in_virtual_time():
            return
        now = trio.current_time()
        if now >= self._next_clock_check:
            self._next_clock_check = now + CLOCK_CHECK_EVERY_S
            trio_minus_perf = trio.current_time() - time.perf_counter()  # constant under trio's SystemClock
            round_trip, database_minus_perf = await self._run(
                lambda connection: _database_minus(connection, time.perf_counter), read_only=True)
            # A sample slower than STEP_S says little about the clock: left out.
            if round_trip < STEP_S and clock.aim(database_minus_perf - trio_minus_perf, now):
                self._seen.clear()  # cached copies hold trio times on the old mapping
                log.warning("the database's clock is ahead of this process's mapping; caught up at once")
        clock.slew(now)

    async def probe(self) -> None:
        """Raise :class:`StoreUnavailable` unless the database answers now."""
        await self._run(lambda connection: connection.execute("SELECT 1").fetchone(), read_only=True)


class DatabaseClock(WallClock):
    """trio's clock mapped onto the database's (SPEC §13.2), kept on it while the process runs.

    :meth:`unix` and :meth:`from_unix` use one offset, fixed at the first reading like
    :class:`WallClock`'s, then moved by :meth:`aim` (a new measurement) and :meth:`slew` (a small
    step towards it, at most :data:`MAX_SLEW` seconds per second, so the mapped time of "now" only
    moves forward). :meth:`signing_time` stays on this process's wall clock (SPEC §17.8).
    """

    def __init__(self, wall: Callable[[], float]) -> None:
        super().__init__(wall)
        self._target: float | None = None
        self._slewed_at = 0.0

    @property
    def offset(self) -> float:
        """Database unix seconds minus trio seconds, as the mapping has it now."""
        return self._fixed_offset()

    def aim(self, measured_offset: float, now: float) -> bool:
        """Take a new measurement of the offset; True if the mapping jumped forward to it at once."""
        if measured_offset - self.offset > STEP_S:
            self._offset, self._target = measured_offset, None
            return True
        self._target, self._slewed_at = measured_offset, now
        return False

    def slew(self, now: float) -> None:
        """Move the offset towards the last measurement, by at most :data:`MAX_SLEW` per second passed."""
        if self._target is None:
            return
        room = MAX_SLEW * max(0.0, now - self._slewed_at)
        error = self._target - self.offset
        self._offset = self.offset + max(-room, min(room, error))
        self._slewed_at = now
        if abs(error) <= room:
            self._target = None

    def signing_time(self) -> float:
        if in_virtual_time():
            return super().signing_time()
        return time.time()


def _database_minus(connection: psycopg.Connection[Any], reading: Callable[[], float]) -> tuple[float, float]:
    """``(round trip, database's clock minus reading())`` from the quickest of a few round trips."""
    best: tuple[float, float] | None = None
    for _ in range(CLOCK_SAMPLES):
        before = reading()
        row = connection.execute("SELECT extract(epoch FROM clock_timestamp())::double precision").fetchone()
        after = reading()
        assert row is not None
        sample = (after - before, float(row[0]) - (before + after) / 2)
        if best is None or sample[0] < best[0]:
            best = sample
    assert best is not None
    return best


def _insert_waits(connection: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
    if rows:
        with connection.cursor() as cursor:
            cursor.executemany(f"INSERT INTO waits (key, idx, {WAIT_COLUMNS}) VALUES"
                               " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)


def _count_open_waits(connection: psycopg.Connection[Any], change: int) -> None:
    """Move the open-wait count by ``change``, on one of its slots picked at random: commits in
    flight at once rarely queue for the same row lock."""
    if change:
        connection.execute("UPDATE open_wait_counts SET value = value + %s WHERE slot = %s",
                           (change, random.randrange(COUNTER_SLOTS)))


def _reason(error: BaseException) -> str:
    """A one-line reason for people (psycopg's messages span lines)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return f"database unavailable: {text}"[:300]


def _without_password(url: str) -> str:
    """The URL as shown in messages: never with its password."""
    import re

    return re.sub(r"^(postgres(?:ql)?://[^:/@]*):[^@]*@", r"\1:***@", url)
