"""Serving safely (SPEC §11) against a real `harness serve`, over raw sockets, in real time."""

from __future__ import annotations

import contextlib
import json
import re
import selectors
import socket
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from harness.cli import app as cli
from harness.testing import ServerProcess

from .conftest import BOTS

pytestmark = pytest.mark.slow


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def counter(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(rf"(?m)^{name} (\S+)$", text)[1])  # type: ignore[index]


def test_a_call_smuggled_after_the_last_chunk_is_not_executed(server: str) -> None:
    """h11 lets Transfer-Encoding win over Content-Length; a proxy trusting Content-Length would
    forward the bytes after the last chunk as part of this body, and we would run them as a
    second request. The gate refuses the ambiguous request and closes: the second never runs."""
    key = httpx.post(f"{server}/api/bots/payment/conversations").json()["conversation_key"]
    opened_before = counter(server, "harness_waits_opened_total")
    call = json.dumps({"conversation_key": key, "data": {"amount": 1}}).encode()
    smuggled = (b"POST /webhooks/payment/wait_payment HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(call), call))
    chunked = b"2\r\n{}\r\n0\r\n\r\n"
    front = (b"POST /api/bots/payment/conversations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(chunked + smuggled))
    with socket.create_connection(("127.0.0.1", port_of(server))) as sock:
        sock.sendall(front + chunked + smuggled)
        answer = read_until_closed(sock).decode()
    assert answer.startswith("HTTP/1.1 400") and answer.count("HTTP/1.1") == 1, answer
    assert re.search(r"(?im)^connection: close", answer)
    assert json.loads(answer.split("\r\n\r\n", 1)[1])["error"] == "invalid_request"
    assert httpx.get(f"{server}/api/conversations/{key}").json()["status"] == "waiting"  # no smuggled call
    assert counter(server, "harness_waits_opened_total") == opened_before  # nor the front request


def test_healthz_answers_while_300_clients_stall_and_the_stalled_are_shed(tmp_path: Path) -> None:
    """100 clients send nothing, 100 send headers a byte at a time (slowloris), 100 send headers and
    part of a body, then stop. /healthz answers quickly throughout; each stalled connection is
    closed by the server: the body stalls with 408 after --body-timeout, the others after the
    5 s header timeout."""
    body_timeout = 2.0
    with ServerProcess.harness_serve("--body-timeout", str(body_timeout), "--bots", str(BOTS / "payment.toml"),
                                     log=tmp_path / "serve.log") as server:
        address = ("127.0.0.1", port_of(server.url))
        selector = selectors.DefaultSelector()
        opened_at: dict[socket.socket, tuple[str, float]] = {}
        body_head = (b"POST /api/bots/payment/conversations HTTP/1.1\r\nHost: t\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        for kind in ("idle", "headers", "body") * 100:
            sock = socket.create_connection(address)
            if kind == "headers":
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            elif kind == "body":
                sock.sendall(body_head)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            opened_at[sock] = (kind, time.monotonic())

        latencies = []
        with httpx.Client(base_url=server.url, timeout=5) as client:
            for _ in range(20):
                started = time.monotonic()
                assert client.get("/healthz", headers={"Connection": "close"}).json() == {"status": "ok"}
                latencies.append(time.monotonic() - started)
                for sock, (kind, _) in opened_at.items():  # the slowloris clients keep trickling
                    if kind == "headers" and sock.fileno() != -1:
                        with contextlib.suppress(OSError):
                            sock.send(b"x")
                time.sleep(0.05)
        assert max(latencies) < 1.0, latencies

        closed_after: dict[str, list[float]] = {"idle": [], "headers": [], "body": []}
        answers: dict[str, set[str]] = {"idle": set(), "headers": set(), "body": set()}
        received: dict[socket.socket, bytes] = {}
        give_up = time.monotonic() + 15
        while opened_at and time.monotonic() < give_up:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                kind, started = opened_at[sock]
                try:
                    chunk = sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    chunk = b""
                if chunk:
                    received[sock] = received.get(sock, b"") + chunk
                    continue
                if sock in received:
                    answers[kind].add(received[sock].split(b"\r\n", 1)[0].decode())
                closed_after[kind].append(time.monotonic() - started)
                selector.unregister(sock)
                sock.close()
                del opened_at[sock]
        print(f"\n/healthz with 300 stalled clients: max {max(latencies) * 1000:.0f} ms, "
              f"median {sorted(latencies)[10] * 1000:.0f} ms")
        for kind, times in closed_after.items():
            print(f"  {kind}: {len(times)} closed by the server after {min(times):.1f}–{max(times):.1f} s")
        assert not opened_at, f"{len(opened_at)} stalled connections were never closed"
        assert answers["body"] == {"HTTP/1.1 408 "}
        assert all(body_timeout - 0.5 < t < body_timeout + 3 for t in closed_after["body"])
        assert all(t < 5 + 3 for kind in ("idle", "headers") for t in closed_after[kind])
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        assert httpx.get(f"{server.url}/metrics").text.count("harness_waits_opened_total 0") == 1  # no start ran


def test_the_api_token_over_real_http_and_harness_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_API_TOKEN", "tok-123")  # `harness serve` reads it from its environment
    with ServerProcess.harness_serve(log=tmp_path / "serve.log") as server:
        monkeypatch.delenv("HARNESS_API_TOKEN")
        refused = httpx.get(f"{server.url}/api/bots")
        assert (refused.status_code, refused.json()["error"]) == (401, "unauthorized")
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        scenario = tmp_path / "s.toml"
        scenario.write_text(f'name = "tok"\nbot = "{BOTS / "payment.toml"}"\n'
                            '[[cases]]\nname = "ok"\nconversations = 3\ntimeout_s = 2\ndelay_s = 0.1\n'
                            'expect = { outcome = "success", status = 200 }\n')
        runner = CliRunner()
        without = runner.invoke(cli, ["run", str(scenario), "--target", server.url])
        assert without.exit_code == 1
        with_option = runner.invoke(cli, ["run", str(scenario), "--target", server.url, "--api-token", "tok-123"])
        assert with_option.exit_code == 0, with_option.output
        from_env = runner.invoke(cli, ["run", str(scenario), "--target", server.url],
                                 env={"HARNESS_API_TOKEN": "tok-123"})
        assert from_env.exit_code == 0, from_env.output
