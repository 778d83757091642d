"""Under attack (SPEC §17) against a real `harness serve`: raw sockets, real time, the server's
own CPU and memory measured from outside (psutil on its pid)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from harness.testing import ServerProcess

from .conftest import BOTS

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A gate with --api-token and the payment bot."""
    log = tmp_path_factory.mktemp("guarded") / "serve.log"
    with ServerProcess.harness_serve("--api-token", TOKEN, "--bots", str(BOTS / "payment.toml"), log=log) as server:
        yield server


def http1(url: str, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes as one HTTP/1.x request (the server is asked to close); status, headers, body."""
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def http2(url: str, method: str, path: str, body: bytes = b"",
          headers: list[tuple[str, str]] | None = None) -> tuple[int, bytes]:
    """One HTTP/2 request with prior knowledge (h2c), ``:path`` sent exactly as given."""
    connection = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) as sock:
        sock.sendall(connection.data_to_send())
        request_headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "t"),
                           *(headers or [])]
        connection.send_headers(1, request_headers, end_stream=not body)
        if body:
            connection.send_data(1, body, end_stream=True)
        sock.sendall(connection.data_to_send())
        status, answer = 0, b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise AssertionError("connection closed before the answer ended")
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    answer += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return status, answer
            sock.sendall(connection.data_to_send())


# Spellings of guarded routes. Each must be refused without the token: 401, or 404 (not served).
SPELLINGS = [
    "//api/bots", "///api/bots", "/./api/bots", "/api/./bots", "/api/../api/bots", "/webhooks/../api/bots",
    "/%61pi/bots", "/api%2Fbots", "/%2e/api/bots", "/api/bots/", "//metrics", "/%6detrics", "/./metrics", "//",
    "/.", "/%2F", "/api//bots", "/api/bots/./payment", "/healthz/../api/bots", "/c/../api/bots",
]


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
@pytest.mark.parametrize("path", SPELLINGS)
def test_a_guarded_route_is_guarded_however_its_path_is_spelled(guarded: ServerProcess, path: str,
                                                                version: str) -> None:
    status, _, body = http1(guarded.url, f"GET {path} {version}\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert status in (401, 404), (path, status, body)
    assert json.loads(body)["error"] in ("unauthorized", "not_found")
    assert b'"payment"' not in body


@pytest.mark.parametrize("target", ["http://t/api/bots", "http://t//api/bots", "http://t/metrics", "http://t/",
                                    "https://t:1/api/bots", "*"])
def test_an_absolute_form_target_is_not_served_around_the_token(guarded: ServerProcess, target: str) -> None:
    status, _, body = http1(guarded.url, f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert status in (401, 404), (target, status, body)
    assert b'"payment"' not in body


@pytest.mark.parametrize("path", ["//api/bots", "/./api/bots", "/%61pi/bots", "http://t/api/bots", "/api/bots"])
def test_http2_gets_the_same_token_check(guarded: ServerProcess, path: str) -> None:
    status, body = http2(guarded.url, "GET", path)
    assert status in (401, 404), (path, status, body)
    assert b'"payment"' not in body
    status, body = http2(guarded.url, "GET", "/api/bots", headers=[("authorization", f"Bearer {TOKEN}")])
    assert status == 200 and b'"payment"' in body  # the h2 path works with the token


@pytest.mark.parametrize("path", ["/api/bots", "//api/bots", "/%61pi/bots", "/./api/bots"])
def test_a_text_plain_post_never_registers_a_bot_whatever_the_spelling(guarded: ServerProcess, path: str) -> None:
    """The CSRF rule (JSON-only bodies) and the token hold on every spelling: a cross-site
    text/plain form cannot register a bot, even with the token in a cookie."""
    bot = json.dumps({"id": "csrf", "start": "a", "blocks": {"a": {"type": "end"}}}).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: text/plain\r\n"
               f"Cookie: harness_token={TOKEN}\r\nContent-Length: {len(bot)}\r\n\r\n").encode() + bot
    status, _, _ = http1(guarded.url, request)
    assert status in (404, 415), (path, status)
    answer = httpx.get(f"{guarded.url}/api/bots/csrf", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 404


def test_the_canonical_routes_still_work_with_the_token(guarded: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{guarded.url}/api/bots", headers=auth).status_code == 200
    assert httpx.get(f"{guarded.url}/metrics", headers=auth).status_code == 200
    assert httpx.get(f"{guarded.url}/healthz").status_code == 200
    assert httpx.get(f"{guarded.url}/openapi.json").status_code == 200
    assert httpx.get(f"{guarded.url}/static/dashboard.js").status_code == 200
    page = httpx.get(f"{guarded.url}/?token={TOKEN}")
    assert page.status_code == 200 and "harness_token" in page.headers["set-cookie"]
    cookie = {"Cookie": f"other=1; harness_token={TOKEN}"}
    assert httpx.get(f"{guarded.url}/api/bots", headers=cookie).status_code == 200
    key = httpx.post(f"{guarded.url}/api/bots/payment/conversations", headers=auth).json()["conversation_key"]
    assert httpx.get(f"{guarded.url}/c/{key}").status_code == 200
