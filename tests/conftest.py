from __future__ import annotations

from collections.abc import AsyncIterator
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
