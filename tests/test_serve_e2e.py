"""`harness serve` as a real process on a free port, spoken to over real HTTP (real time)."""

from __future__ import annotations

import json
import re
import socket
import time

import httpx
import pytest

pytestmark = pytest.mark.slow


def test_conversation_resolved_over_http(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        created = client.post("/api/bots/payment/conversations")
        assert created.status_code == 201
        conversation = created.json()
        key = conversation["conversation_key"]
        assert conversation["conversation_url"] == f"{server}/c/{key}"
        webhooks = client.get("/api/bots/payment").json()["webhooks"]
        response = client.post(webhooks["wait_payment"], json={"conversation_key": key, "data": {"amount": 42}})
        assert response.status_code == 200 and response.json()["mapped"] == {"amount": 42}
        final = client.get(f"/api/conversations/{key}").json()
        assert final["transcript"][-1]["text"] == "Thanks, we received 42."


def test_timeout_over_http(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        key = client.post("/api/bots/quick/conversations").json()["conversation_key"]
        time.sleep(1.3)  # the one real wait in the suite: a 1 s timeout on a real server
        conversation = client.get(f"/api/conversations/{key}").json()
        assert conversation["waits"][0]["reason"] == "timeout" and conversation["waits"][0]["waited_s"] == 1.0
        late = client.post("/webhooks/quick/wait_payment", json={"conversation_key": key})
        assert (late.status_code, late.json()["error"]) == (410, "wait_expired")


def test_413_closes_the_connection_and_the_next_request_works(server: str) -> None:
    with socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1])), timeout=5) as sock:
        body = b"x" * 100_000
        request = (b"POST /webhooks/payment/wait_payment HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body))
        sock.sendall(request + body[:1000])
        answer = sock.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 413")
        assert re.search(r"(?im)^connection: close", answer)
    # Keep-alive client: an oversized chunked body, then a normal request on the same client.
    with httpx.Client(base_url=server) as client:
        too_big = client.post("/webhooks/payment/wait_payment", content=iter([b"y" * 1500] * 3),
                              headers={"Content-Type": "application/json"})
        assert too_big.status_code == 413
        assert client.get("/healthz").json() == {"status": "ok"}


def test_framework_errors_are_json_on_the_real_server(server: str) -> None:
    response = httpx.get(f"{server}/nope")
    assert response.status_code == 404 and json.loads(response.text)["error"] == "not_found"


@pytest.mark.parametrize("path", ["/webhooks/ghost/wait", "/api/bots/ghost/conversations", "/nowhere"])
def test_early_answers_to_big_bodies_do_not_hang_the_next_request(server: str, path: str) -> None:
    with httpx.Client(base_url=server, timeout=5) as client:
        response = client.post(path, content=b"x" * 3_000_000, headers={"Content-Type": "application/json"})
        assert response.status_code == 404 and response.headers["connection"] == "close"
        assert client.get("/healthz").json() == {"status": "ok"}


def test_sigterm_stops_the_server_cleanly(tmp_path) -> None:
    from harness.testing import ServerProcess

    log = tmp_path / "serve.log"
    process = ServerProcess.harness_serve(log=log)
    process.stop()  # SIGTERM
    assert process.process.returncode == 0
    assert "SIGTERM: finishing requests in flight, then stopping" in log.read_text()
