from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from harness.core.bots import Bot, load_bot, parse_bot
from harness.core.gate import Gate
from harness.server import create_app

ROOT = Path(__file__).resolve().parent.parent
BOTS = ROOT / "scenarios" / "bots"
PUBLIC_URL = "http://gate.test"


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


@pytest.fixture
async def gate(nursery: trio.Nursery) -> Gate:
    gate = Gate(public_url=PUBLIC_URL)
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("bots")
    # A one-second wait, so the timeout path is exercised for real without slowing the suite.
    quick = (BOTS / "payment.toml").read_text().replace('id = "payment"', 'id = "quick"').replace("timeout_s = 120", "timeout_s = 1")
    (folder / "quick.toml").write_text(quick)
    port = free_port()
    log_file = (folder / "serve.log").open("w")  # a pipe could fill up and stall the server
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "serve", "--port", str(port), "--max-body", "2048",
         "--bots", str(BOTS / "payment.toml"), "--bots", str(folder)],
        stderr=log_file, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"harness serve did not start: {(folder / 'serve.log').read_text()}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log_file.close()
