"""A durable store in one SQLite file (``--store sqlite:PATH``).

* WAL mode with ``synchronous=NORMAL``: a committed transaction survives the process being
  killed (``kill -9``); only an operating-system crash can lose the last few.
* Each gate step is one short transaction, run inline: no worker thread, so trio's clock (real
  or virtual) is never fooled, and a step costs tens of microseconds, less than parsing the
  request that caused it.
* Exactly-once across processes: resolving a wait is ``UPDATE … WHERE outcome IS NULL`` inside
  the transaction that also writes the conversation's new state; if another process got there
  first the update touches no row, the transaction is rolled back and :meth:`commit` says so.
* Times are stored as unix seconds and mapped onto this process's trio clock when read, so after
  a restart every open wait keeps its original deadline.
* Each conversation row carries a version. A process keeps the conversations it has seen and
  reuses its copy while the stored version is unchanged (one indexed read), so within a process
  times stay exact floats of trio's clock; a version bumped by another process means a fresh load.
  That cache is bounded (least recently used out first, :data:`CACHE_SIZE`), and the gate drops
  finished conversations from it after their retention: they stay on disk and load on demand.
* Orphaned deadlines: a partial index on the deadline of open waits lets every live process find
  overdue waits — including those opened by a process that has died or stopped — with one cheap
  query a second (:meth:`SqliteStore.overdue_waits`); they resolve through the same :meth:`commit`.
"""

from __future__ import annotations

import json
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..core.bots import Bot, parse_bot
from ..core.conversations import Conversation, Wait, WallClock
from ..core.errors import Refused

__all__ = ["SqliteStore"]


class _Lost(Exception):
    """Another process changed the conversation first; the transaction is rolled back."""

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
CREATE TABLE IF NOT EXISTS late_calls (  -- calls refused with wait_expired (SPEC §8.3)
    key TEXT NOT NULL REFERENCES conversations(key),
    block TEXT NOT NULL,
    at REAL NOT NULL,                -- unix seconds
    after_deadline_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS late_calls_by_key ON late_calls(key);
"""


CACHE_SIZE = 10_000  # conversations kept as live objects per process (the rest load from disk on demand)


class SqliteStore:
    shared = True  # other processes may open the same file

    def __init__(self, path: str | Path, *, cache_size: int = CACHE_SIZE) -> None:
        self.path = Path(path)
        self.cache_size = cache_size
        if self.path.parent and not self.path.parent.exists():
            raise ValueError(f"{self.path}: the folder {self.path.parent} does not exist")
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{self.path}: not a usable SQLite database: {error}") from None
        self._clock: WallClock | None = None
        self._bots: dict[str, Bot] = {}  # bots never change once stored, so caching is safe
        # key -> (stored version, our copy); least recently used first
        self._seen: OrderedDict[str, tuple[int, Conversation]] = OrderedDict()

    def bind(self, clock: WallClock) -> None:
        self._clock = clock

    @property
    def clock(self) -> WallClock:
        if self._clock is None:
            raise RuntimeError("SqliteStore is not bound to a gate's clock")
        return self._clock

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so two processes never both read-then-write.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- bots ---------------------------------------------------------------------------------

    def add_bot(self, bot: Bot) -> None:
        try:
            with self._transaction() as db:
                db.execute("INSERT INTO bots (id, document) VALUES (?, ?)", (bot.id, json.dumps(bot.to_dict())))
        except sqlite3.IntegrityError:
            raise Refused("bot_exists", f"a bot with id {bot.id!r} already exists") from None
        self._bots[bot.id] = bot

    def get_bot(self, bot_id: str) -> Bot | None:
        bot = self._bots.get(bot_id)
        if bot is None:
            row = self._db.execute("SELECT document FROM bots WHERE id = ?", (bot_id,)).fetchone()
            if row is not None:
                bot = self._bots[bot_id] = parse_bot(json.loads(row[0]))
        return bot

    def bots(self) -> Iterable[Bot]:
        ids = [row[0] for row in self._db.execute("SELECT id FROM bots ORDER BY rowid")]
        return [bot for bot in map(self.get_bot, ids) if bot is not None]

    # -- conversations --------------------------------------------------------------------------

    def _state(self, conversation: Conversation) -> str:
        return json.dumps({
            "status": conversation.status,
            "block": conversation.block,
            "url": conversation.url,
            "started_at": self.clock.unix(conversation.started_at),
            "variables": conversation.variables,
            "transcript": conversation.transcript,
            "error": conversation.error,
        })

    def _insert_waits(self, db: sqlite3.Connection, conversation: Conversation, first: int) -> None:
        unix = self.clock.unix
        db.executemany(
            "INSERT INTO waits (key, idx, block, opened_at, deadline, timeout_s, outcome, reason, resolved_at, waited_s)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (conversation.key, index, w.block, unix(w.opened_at), unix(w.deadline), w.timeout_s, w.outcome,
                 w.reason, None if w.resolved_at is None else unix(w.resolved_at), w.waited_s)
                for index, w in enumerate(conversation.waits)
                if index >= first
            ],
        )

    def add_conversation(self, conversation: Conversation) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO conversations (key, bot, version, state) VALUES (?, ?, 1, ?)",
                       (conversation.key, conversation.bot, self._state(conversation)))
            self._insert_waits(db, conversation, 0)
        self._remember(conversation.key, 1, conversation)

    def get_conversation(self, key: str) -> Conversation | None:
        row = self._db.execute(
            "SELECT version, (SELECT COUNT(*) FROM late_calls WHERE late_calls.key = conversations.key)"
            " FROM conversations WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        seen = self._seen.get(key)
        if seen is not None and seen[0] == row[0] and len(seen[1].late_calls) == row[1]:
            self._seen.move_to_end(key)
            return seen[1]
        conversation = self._load(key)
        if conversation is not None:
            self._remember(key, row[0], conversation)
        return conversation

    def _remember(self, key: str, version: int, conversation: Conversation) -> None:
        self._seen[key] = (version, conversation)
        self._seen.move_to_end(key)
        while len(self._seen) > self.cache_size:
            self._seen.popitem(last=False)

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)  # still on disk; the next read loads it again

    def overdue_waits(self, now: float, limit: int) -> list[tuple[str, int]]:
        rows = self._db.execute(
            "SELECT key, idx FROM waits INDEXED BY open_wait_deadlines"
            " WHERE outcome IS NULL AND deadline <= ? ORDER BY deadline LIMIT ?",
            (self.clock.unix(now), limit))
        return [(key, index) for key, index in rows]

    def _load(self, key: str) -> Conversation | None:
        row = self._db.execute("SELECT bot, state FROM conversations WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        state: dict[str, Any] = json.loads(row[1])
        trio_time = self.clock.from_unix
        conversation = Conversation(
            key=key, bot=row[0], url=state["url"], started_at=trio_time(state["started_at"]),
            status=state["status"], block=state["block"], variables=state["variables"],
            transcript=state["transcript"], error=state["error"],
        )
        for block, opened_at, deadline, timeout_s, outcome, reason, resolved_at, waited_s in self._db.execute(
            "SELECT block, opened_at, deadline, timeout_s, outcome, reason, resolved_at, waited_s"
            " FROM waits WHERE key = ? ORDER BY idx", (key,),
        ):
            conversation.waits.append(Wait(
                block=block, opened_at=trio_time(opened_at), deadline=trio_time(deadline), timeout_s=timeout_s,
                outcome=outcome, reason=reason, resolved_at=None if resolved_at is None else trio_time(resolved_at),
                waited_s=waited_s,
            ))
        conversation.late_calls = [
            {"block": block, "at": trio_time(at), "after_deadline_s": after}
            for block, at, after in self._db.execute(
                "SELECT block, at, after_deadline_s FROM late_calls WHERE key = ? ORDER BY rowid", (key,))
        ]
        return conversation

    def commit(self, conversation: Conversation, *, resolved_wait: int) -> bool:
        wait = conversation.waits[resolved_wait]
        assert wait.resolved_at is not None
        seen = self._seen.get(conversation.key)  # the gate commits only what it got from us
        if seen is None or seen[1] is not conversation:
            return False  # not our current copy: cannot vouch for the version it was read at
        version = seen[0]
        try:
            with self._transaction() as db:
                claimed = db.execute(
                    "UPDATE waits SET outcome = ?, reason = ?, resolved_at = ?, waited_s = ?"
                    " WHERE key = ? AND idx = ? AND outcome IS NULL",
                    (wait.outcome, wait.reason, self.clock.unix(wait.resolved_at), wait.waited_s,
                     conversation.key, resolved_wait),
                ).rowcount
                updated = db.execute(
                    "UPDATE conversations SET state = ?, version = version + 1 WHERE key = ? AND version = ?",
                    (self._state(conversation), conversation.key, version),
                ).rowcount
                if claimed != 1 or updated != 1:
                    raise _Lost
                self._insert_waits(db, conversation, resolved_wait + 1)
        except _Lost:
            self._seen.pop(conversation.key, None)  # our copy was changed in memory: forget it
            return False
        self._remember(conversation.key, version + 1, conversation)
        return True

    def add_late_call(self, conversation: Conversation, late_call: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO late_calls (key, block, at, after_deadline_s) VALUES (?, ?, ?, ?)",
                       (conversation.key, late_call["block"], self.clock.unix(late_call["at"]),
                        late_call["after_deadline_s"]))
        conversation.late_calls.append(late_call)

    def waiting_conversations(self) -> Iterable[Conversation]:
        keys = [row[0] for row in self._db.execute("SELECT DISTINCT key FROM waits WHERE outcome IS NULL")]
        return [c for c in map(self.get_conversation, keys) if c is not None]

    def open_wait_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM waits WHERE outcome IS NULL").fetchone()[0])

    def close(self) -> None:
        self._db.close()
