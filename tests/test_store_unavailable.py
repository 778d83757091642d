"""A store that cannot answer (SPEC §13.3, §17.6): 503 store_unavailable, /healthz degraded,
nothing changed, and everything resumes once the store is back — in real time, as served."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from harness.core.gate import Gate
from harness.store import SqliteStore
from harness.testing import ServerProcess
from harness.web.server import create_app

from .conftest import PUBLIC_URL, quick_bot_folder, webhook_bot


def locker(path: Path) -> sqlite3.Connection:
    """Another connection that holds the file's write lock until rolled back."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    return db


async def test_a_locked_sqlite_file_answers_503_and_recovers(tmp_path: Path) -> None:
    database = tmp_path / "gate.db"
    gate = Gate(store=SqliteStore(database), public_url=PUBLIC_URL)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        await gate.add_bot(webhook_bot(timeout_s=1))
        transport = httpx.ASGITransport(app=create_app(gate))
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL, timeout=30) as client:
            waiting = (await client.post("/api/bots/pay/conversations")).json()["conversation_key"]
            overdue = (await client.post("/api/bots/pay/conversations")).json()["conversation_key"]
            lock = locker(database)
            try:
                started = time.monotonic()
                health = await client.get("/healthz")
                assert time.monotonic() - started < 1.0
                assert health.status_code == 503 and health.json()["status"] == "degraded"
                assert "locked" in health.json()["store"]

                started = time.monotonic()
                call = await client.post("/webhooks/pay/wait", json={"conversation_key": waiting})
                assert time.monotonic() - started < 5.0
                assert (call.status_code, call.json()["error"]) == (503, "store_unavailable")
                assert call.headers["Retry-After"] == "1"
                begun = await client.post("/api/bots/pay/conversations")
                assert (begun.status_code, begun.json()["error"]) == (503, "store_unavailable")
                registered = await client.post("/api/bots", json=webhook_bot(bot_id="new").to_dict())
                assert registered.status_code == 503
                # A check that needs no state still answers as usual.
                assert (await client.post("/webhooks/pay/wait", json={})).status_code == 422
                await trio.sleep(1.5)  # the deadlines pass while the file is locked
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            released = time.monotonic()
            # The refused call resolved nothing; the overdue waits now time out within 2 s.
            while (await client.get(f"/api/conversations/{overdue}")).json()["waits"][0]["outcome"] is None:
                assert time.monotonic() - released < 2.0
                await trio.sleep(0.05)
            state = (await client.get(f"/api/conversations/{waiting}")).json()
            assert (state["waits"][0]["outcome"], state["waits"][0]["reason"]) == ("failure", "timeout")
            await trio.sleep(1.1)  # past the health cache
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            assert (await client.get("/api/bots/new")).status_code == 404
            assert (await client.post("/api/bots/pay/conversations")).status_code == 201
        nursery.cancel_scope.cancel()


@pytest.mark.slow
def test_harness_serve_stays_responsive_while_another_process_locks_the_file_for_10_s(tmp_path: Path) -> None:
    folder = quick_bot_folder(tmp_path, timeout_s=120)
    database = tmp_path / "gate.db"
    argv = [sys.executable, "-m", "harness.cli", "serve", "--port", "{port}", "--store", f"sqlite:{database}",
            "--bots", str(folder)]
    # A generous start: a loaded CI machine can take many seconds to import everything.
    with ServerProcess(argv, log=tmp_path / "serve.log", start_timeout_s=90) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        key = client.post("/api/bots/quick/conversations").json()["conversation_key"]
        hold = subprocess.Popen([sys.executable, "-c", (
            "import sqlite3, sys, time\n"
            f"db = sqlite3.connect({str(database)!r}, isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(10)\n")], stdout=subprocess.PIPE, text=True)
        try:
            assert hold.stdout is not None and hold.stdout.readline().strip() == "locked"
            locked_at = time.monotonic()
            time.sleep(0.3)  # /healthz may answer from its last probe for up to 0.25 s
            health_times, statuses = [], []
            while time.monotonic() - locked_at < 7:
                started = time.monotonic()
                health = client.get("/healthz")
                health_times.append(time.monotonic() - started)
                assert health.status_code == 503 and health.json()["status"] == "degraded"
                started = time.monotonic()
                call = client.post("/webhooks/quick/wait_payment", json={"conversation_key": key})
                assert time.monotonic() - started < 5.0
                statuses.append(call.status_code)
                assert call.status_code == 503 and "Retry-After" in call.headers
            assert max(health_times) < 1.0, health_times
        finally:
            hold.wait(timeout=30)
        give_up = time.monotonic() + 10
        while client.get("/healthz").status_code != 200:
            assert time.monotonic() < give_up
            time.sleep(0.1)
        call = client.post("/webhooks/quick/wait_payment", json={"conversation_key": key, "data": {"amount": 5}})
        assert call.status_code == 200, call.text
        assert client.get(f"/api/conversations/{key}").json()["status"] == "completed"
