"""A durable store in one SQLite file (``--store sqlite:PATH``).

* WAL mode with ``synchronous=NORMAL``: a committed transaction survives the process being
  killed (``kill -9``); only an operating-system crash can lose the last few.
* **Never on the event loop** (SPEC §17.6): in real time each call runs in a worker thread, with a
  connection of that thread's own, so another process holding the file locked holds up only the
  calls that need it — never ``/healthz`` or the rest of the server. Under trio's ``MockClock``
  calls run inline: a thread would let virtual time jump while it works.
* **Short busy timeout** (:data:`BUSY_TIMEOUT_S`): a lock held longer, or any I/O error, raises
  :class:`~harness.core.store.StoreUnavailable` with the transaction rolled back (nothing
  changed); the web layer answers 503 ``store_unavailable``. :meth:`SqliteStore.probe` asks for
  the write lock on a fresh connection with a shorter timeout still, for ``/healthz``.
* Exactly-once across processes and tasks: resolving a wait is ``UPDATE … WHERE outcome IS NULL``
  plus ``UPDATE conversations … WHERE version = <the version the copy was read at>`` in one
  transaction; if either touches no row, the transaction rolls back and :meth:`commit` says so.
  The gate then reads the stored state again: a cache never decides an answer.
* Each read hands out a copy the caller owns. A process keeps the conversations it has seen and
  reuses its snapshot while the stored version (and late-call total) is unchanged — one indexed
  read — so within a process times stay exact floats of trio's clock. That cache is bounded (least
  recently used out first, :data:`CACHE_SIZE`); an evicted conversation simply loads again.
* Times are stored as unix seconds and mapped onto this process's trio clock when read, so after
  a restart every open wait keeps its original deadline.
* The live page's figures cost the same at any number of open waits: the soonest deadlines come
  from the partial index on open waits' deadlines, the count from a counter row kept in the same
  transactions that open and resolve waits.
* Orphaned deadlines: that index also lets every live process find overdue waits — including
  those opened by a process that has died or stopped — with one cheap query a second
  (:meth:`SqliteStore.overdue_waits`); they resolve through the same :meth:`commit`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from ..core.bots import Bot, parse_bot
from ..core.conversations import MAX_LATE_CALLS, Conversation, EarlyCall, WallClock
from ..core.errors import Refused
from ..core.store import OpenWait, StoreUnavailable
from ..core.virtual_time import in_virtual_time
from .rows import WAIT_COLUMNS, conversation_from_rows, open_wait_rows, state_json, wait_rows

__all__ = ["SqliteStore", "BUSY_TIMEOUT_S", "CACHE_SIZE"]

T = TypeVar("T")


class _Lost(Exception):
    """Another task or process changed the conversation first; the transaction is rolled back."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS bots (
    id TEXT PRIMARY KEY,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS conversations (
    key TEXT PRIMARY KEY,
    bot TEXT NOT NULL REFERENCES bots(id),
    version INTEGER NOT NULL,
    state TEXT NOT NULL              -- JSON: status, block, url, started_at, variables, transcript, error
);
CREATE TABLE IF NOT EXISTS waits (
    key TEXT NOT NULL REFERENCES conversations(key),
    idx INTEGER NOT NULL,            -- position in the conversation's waits
    block TEXT NOT NULL,
    opened_at REAL NOT NULL,         -- unix seconds
    deadline REAL NOT NULL,
    timeout_s INTEGER NOT NULL,
    outcome TEXT,
    reason TEXT,
    resolved_at REAL,
    waited_s REAL,
    PRIMARY KEY (key, idx)
);
CREATE INDEX IF NOT EXISTS open_waits ON waits(key) WHERE outcome IS NULL;
CREATE INDEX IF NOT EXISTS open_wait_deadlines ON waits(deadline) WHERE outcome IS NULL;
CREATE TABLE IF NOT EXISTS late_calls (  -- calls refused with wait_expired (SPEC §8.3); the first 100 per key
    key TEXT NOT NULL REFERENCES conversations(key),
    block TEXT NOT NULL,
    at REAL NOT NULL,                -- unix seconds
    after_deadline_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS late_calls_by_key ON late_calls(key);
CREATE TABLE IF NOT EXISTS late_call_totals (  -- every late call counted, kept or not (SPEC §17.5)
    key TEXT PRIMARY KEY,
    total INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS early_calls (  -- calls held before their wait opened (SPEC §14.1)
    key TEXT NOT NULL REFERENCES conversations(key),
    block TEXT NOT NULL,
    at REAL NOT NULL,                -- unix seconds
    expires_at REAL NOT NULL,
    outcome TEXT NOT NULL,           -- pending | used | expired
    payload TEXT NOT NULL            -- JSON
);
CREATE INDEX IF NOT EXISTS early_calls_by_key ON early_calls(key);
CREATE INDEX IF NOT EXISTS pending_early_calls ON early_calls(expires_at) WHERE outcome = 'pending';
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

CACHE_SIZE = 10_000  # conversations kept as snapshots per process (the rest load from disk on demand)
BUSY_TIMEOUT_S = 1.0  # a lock held longer than this: StoreUnavailable, 503 (SPEC §13.3: within 5 s)
PROBE_TIMEOUT_S = 0.1  # /healthz asks for the write lock this long at most
QUEUE_TIMEOUT_S = 4.0  # a request waiting this long for its turn at the file: 503 (within SPEC §13.3's 5 s)


class SqliteStore:
    shared = True  # other processes may open the same file

    def __init__(self, path: str | Path, *, cache_size: int = CACHE_SIZE, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.cache_size = cache_size
        self.busy_timeout_s = busy_timeout_s
        if self.path.parent and not self.path.parent.exists():
            raise ValueError(f"{self.path}: the folder {self.path.parent} does not exist")
        self._connections: list[sqlite3.Connection] = []
        self._local = threading.local()  # one connection per thread
        self._lock = threading.Lock()  # guards the connection list and the two caches (threads share them)
        self._one_at_a_time = trio.Lock()
        try:
            db = self._connection()
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO counters (name, value)"
                       " SELECT 'open_waits', COUNT(*) FROM waits WHERE outcome IS NULL")
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{self.path}: not a usable SQLite database: {error}") from None
        self._clock: WallClock | None = None
        self._bots: dict[str, Bot] = {}  # bots never change once stored, so caching is safe
        self._seen: OrderedDict[str, Conversation] = OrderedDict()  # snapshots; least recently used first

    def bind(self, clock: WallClock) -> None:
        self._clock = clock

    @property
    def clock(self) -> WallClock:
        if self._clock is None:
            raise RuntimeError("SqliteStore is not bound to a gate's clock")
        return self._clock

    # -- running SQL: inline under MockClock, in a worker thread in real time --------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                 timeout=self.busy_timeout_s)
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        self.clock.unix(0.0)  # fix the clock's mapping here: a worker thread cannot read trio's clock
        if in_virtual_time():
            return self._call(work, *args)
        # One statement at a time per process: requests queue here, in trio, rather than in
        # SQLite's busy handler, whose sleeps would turn a burst of this process's own writes into
        # 503s. The busy timeout is then only ever spent waiting for another process's lock.
        # Only the wait for a turn is bounded: once the work runs it finishes, so a 503 always
        # means nothing changed.
        with trio.move_on_after(QUEUE_TIMEOUT_S) as queued:
            await self._one_at_a_time.acquire()
        if queued.cancelled_caught:
            raise StoreUnavailable(f"sqlite: busy (a request waited {QUEUE_TIMEOUT_S:g} s for its turn at the file)")
        try:
            return await trio.to_thread.run_sync(self._call, work, *args)
        finally:
            self._one_at_a_time.release()

    def _call(self, work: Callable[..., T], *args: Any) -> T:
        try:
            return work(self._connection(), *args)
        except sqlite3.OperationalError as error:  # locked past the busy timeout, I/O error, …
            raise StoreUnavailable(f"sqlite: {error}") from None

    @contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so two writers never both read-then-write.
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def probe(self) -> None:
        if in_virtual_time():
            return self._probe()
        await trio.to_thread.run_sync(self._probe, abandon_on_cancel=True)

    def _probe(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=PROBE_TIMEOUT_S)
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("ROLLBACK")
            finally:
                db.close()
        except sqlite3.Error as error:
            raise StoreUnavailable(f"sqlite: {error}") from None

    async def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()

    # -- bots ---------------------------------------------------------------------------------

    async def add_bot(self, bot: Bot) -> None:
        await self._run(self._add_bot, bot)
        with self._lock:
            self._bots[bot.id] = bot

    def _add_bot(self, db: sqlite3.Connection, bot: Bot) -> None:
        try:
            with self._transaction(db):
                db.execute("INSERT INTO bots (id, document) VALUES (?, ?)", (bot.id, json.dumps(bot.to_dict())))
        except sqlite3.IntegrityError:
            raise Refused("bot_exists", f"a bot with id {bot.id!r} already exists") from None

    async def get_bot(self, bot_id: str) -> Bot | None:
        bot = self._bots.get(bot_id)
        if bot is None:
            row = await self._run(lambda db: db.execute("SELECT document FROM bots WHERE id = ?", (bot_id,)).fetchone())
            if row is not None:
                bot = parse_bot(json.loads(row[0]))
                with self._lock:
                    self._bots[bot_id] = bot
        return bot

    async def bots(self) -> list[Bot]:
        ids = await self._run(lambda db: [row[0] for row in db.execute("SELECT id FROM bots ORDER BY rowid")])
        return [bot for bot in [await self.get_bot(bot_id) for bot_id in ids] if bot is not None]

    # -- conversations --------------------------------------------------------------------------

    def _insert_waits(self, db: sqlite3.Connection, conversation: Conversation, first: int) -> int:
        """Insert waits ``first``…; return how many of them are open."""
        rows = wait_rows(conversation, self.clock, first)
        db.executemany(f"INSERT INTO waits (key, idx, {WAIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return open_wait_rows(rows)

    @staticmethod
    def _count_open(db: sqlite3.Connection, change: int) -> None:
        if change:
            db.execute("UPDATE counters SET value = value + ? WHERE name = 'open_waits'", (change,))

    async def add_conversation(self, conversation: Conversation) -> None:
        await self._run(self._add_conversation, conversation)
        conversation.version = 1
        self._remember(conversation)

    def _add_conversation(self, db: sqlite3.Connection, conversation: Conversation) -> None:
        with self._transaction(db):
            db.execute("INSERT INTO conversations (key, bot, version, state) VALUES (?, ?, 1, ?)",
                       (conversation.key, conversation.bot, state_json(conversation, self.clock)))
            self._count_open(db, self._insert_waits(db, conversation, 0))

    async def get_conversation(self, key: str) -> Conversation | None:
        return await self._run(self._get_conversation, key)

    def _get_conversation(self, db: sqlite3.Connection, key: str) -> Conversation | None:
        row = db.execute(
            "SELECT version, COALESCE((SELECT total FROM late_call_totals WHERE late_call_totals.key = ?), 0)"
            " FROM conversations WHERE key = ?", (key, key)).fetchone()
        if row is None:
            return None
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and seen.version == row[0] and seen.late_calls_total == row[1]:
                self._seen.move_to_end(key)
                return seen.clone()
        conversation = self._load(db, key)
        if conversation is not None:
            self._remember(conversation)
        return conversation

    def _remember(self, conversation: Conversation) -> None:
        snapshot = conversation.clone()
        with self._lock:
            self._seen[conversation.key] = snapshot
            self._seen.move_to_end(conversation.key)
            while len(self._seen) > self.cache_size:
                self._seen.popitem(last=False)

    async def forget(self, key: str) -> None:
        with self._lock:
            self._seen.pop(key, None)  # still on disk; the next read loads it again

    def _load(self, db: sqlite3.Connection, key: str) -> Conversation | None:
        db.execute("BEGIN")  # one snapshot of the conversation and its rows
        try:
            row = db.execute("SELECT bot, state, version FROM conversations WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            waits = db.execute(f"SELECT {WAIT_COLUMNS} FROM waits WHERE key = ? ORDER BY idx", (key,)).fetchall()
            late_calls = db.execute(
                "SELECT block, at, after_deadline_s FROM late_calls WHERE key = ? ORDER BY rowid LIMIT ?",
                (key, MAX_LATE_CALLS)).fetchall()
            conversation = conversation_from_rows(key, row[0], row[1], waits, late_calls, self.clock)
            conversation.version = row[2]
            trio_time = self.clock.from_unix
            total = db.execute("SELECT total FROM late_call_totals WHERE key = ?", (key,)).fetchone()
            conversation.late_calls_total = total[0] if total else len(conversation.late_calls)
            conversation.early_calls = [
                EarlyCall(block=block, at=trio_time(at), expires_at=trio_time(expires_at), outcome=outcome,
                          payload=json.loads(payload), id=rowid)
                for rowid, block, at, expires_at, outcome, payload in db.execute(
                    "SELECT rowid, block, at, expires_at, outcome, payload FROM early_calls WHERE key = ? ORDER BY rowid",
                    (key,))
            ]
            return conversation
        finally:
            db.execute("COMMIT")

    async def commit(self, conversation: Conversation, *, resolved_wait: int) -> bool:
        if not await self._run(self._commit, conversation, resolved_wait):
            return False
        conversation.version += 1
        self._remember(conversation)
        return True

    def _commit(self, db: sqlite3.Connection, conversation: Conversation, resolved_wait: int) -> bool:
        wait = conversation.waits[resolved_wait]
        assert wait.resolved_at is not None
        try:
            with self._transaction(db):
                claimed = db.execute(
                    "UPDATE waits SET outcome = ?, reason = ?, resolved_at = ?, waited_s = ?"
                    " WHERE key = ? AND idx = ? AND outcome IS NULL",
                    (wait.outcome, wait.reason, self.clock.unix(wait.resolved_at), wait.waited_s,
                     conversation.key, resolved_wait),
                ).rowcount
                updated = db.execute(
                    "UPDATE conversations SET state = ?, version = version + 1 WHERE key = ? AND version = ?",
                    (state_json(conversation, self.clock), conversation.key, conversation.version),
                ).rowcount
                if claimed != 1 or updated != 1:
                    raise _Lost
                self._count_open(db, self._insert_waits(db, conversation, resolved_wait + 1) - 1)
                db.executemany("UPDATE early_calls SET outcome = ? WHERE rowid = ?",
                               [(early.outcome, early.id) for early in conversation.early_calls
                                if early.outcome != "pending"])
        except _Lost:
            return False
        return True

    async def add_late_call(self, conversation: Conversation, late_call: dict[str, Any]) -> None:
        total = await self._run(self._add_late_call, conversation.key, late_call)
        if len(conversation.late_calls) < MAX_LATE_CALLS:
            conversation.late_calls.append(late_call)
        conversation.late_calls_total = total

    def _add_late_call(self, db: sqlite3.Connection, key: str, late_call: dict[str, Any]) -> int:
        with self._transaction(db):
            total: int = db.execute(
                "INSERT INTO late_call_totals (key, total) VALUES (?, 1)"
                " ON CONFLICT (key) DO UPDATE SET total = total + 1 RETURNING total", (key,)).fetchone()[0]
            if total <= MAX_LATE_CALLS:
                db.execute("INSERT INTO late_calls (key, block, at, after_deadline_s) VALUES (?, ?, ?, ?)",
                           (key, late_call["block"], self.clock.unix(late_call["at"]), late_call["after_deadline_s"]))
        return total

    async def hold_early_call(self, conversation: Conversation, early: EarlyCall) -> bool:
        rowid = await self._run(self._hold_early_call, conversation, early)
        if rowid is None:
            return False
        early.id = rowid
        conversation.early_calls.append(early)
        conversation.version += 1
        self._remember(conversation)
        return True

    def _hold_early_call(self, db: sqlite3.Connection, conversation: Conversation, early: EarlyCall) -> int | None:
        with self._transaction(db):
            moved = db.execute("UPDATE conversations SET version = version + 1 WHERE key = ? AND version = ?",
                               (conversation.key, conversation.version)).rowcount
            if moved != 1:
                return None
            cursor = db.execute(
                "INSERT INTO early_calls (key, block, at, expires_at, outcome, payload) VALUES (?, ?, ?, ?, ?, ?)",
                (conversation.key, early.block, self.clock.unix(early.at), self.clock.unix(early.expires_at),
                 early.outcome, json.dumps(early.payload)))
            return cursor.lastrowid

    async def expire_early_calls(self, now: float) -> None:
        def expire(db: sqlite3.Connection, unix_now: float) -> None:
            with self._transaction(db):
                db.execute("UPDATE early_calls INDEXED BY pending_early_calls SET outcome = 'expired'"
                           " WHERE outcome = 'pending' AND expires_at <= ?", (unix_now,))
        await self._run(expire, self.clock.unix(now))

    # -- waits --------------------------------------------------------------------------------

    async def open_waits(self) -> list[tuple[str, int, float]]:
        rows = await self._run(lambda db: db.execute(
            "SELECT key, idx, deadline FROM waits INDEXED BY open_wait_deadlines WHERE outcome IS NULL").fetchall())
        return [(key, index, self.clock.from_unix(deadline)) for key, index, deadline in rows]

    async def overdue_waits(self, now: float, limit: int) -> list[tuple[str, int]]:
        rows = await self._run(lambda db: db.execute(
            "SELECT key, idx FROM waits INDEXED BY open_wait_deadlines"
            " WHERE outcome IS NULL AND deadline <= ? ORDER BY deadline LIMIT ?",
            (self.clock.unix(now), limit)).fetchall())
        return [(key, index) for key, index in rows]

    async def soonest_open_waits(self, limit: int) -> list[OpenWait]:
        rows = await self._run(lambda db: db.execute(
            "SELECT w.key, w.idx, c.bot, w.block, w.opened_at, w.deadline, w.timeout_s"
            " FROM waits AS w INDEXED BY open_wait_deadlines JOIN conversations AS c ON c.key = w.key"
            " WHERE w.outcome IS NULL ORDER BY w.deadline LIMIT ?", (limit,)).fetchall())
        trio_time = self.clock.from_unix
        return [OpenWait(key=key, index=index, bot=bot, block=block, opened_at=trio_time(opened_at),
                         deadline=trio_time(deadline), timeout_s=timeout_s)
                for key, index, bot, block, opened_at, deadline, timeout_s in rows]

    async def open_wait_count(self) -> int:
        row = await self._run(lambda db: db.execute("SELECT value FROM counters WHERE name = 'open_waits'").fetchone())
        return int(row[0]) if row else 0

