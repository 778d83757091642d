"""The live page at `GET /` (SPEC §12): its JSON in process, and the page in a real headless browser."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.testing import ServerProcess

from .conftest import BOTS, ROOT, quick_bot_folder, start, webhook_bot

CHROMIUM = Path(os.environ.get("HARNESS_TEST_CHROMIUM", "/usr/bin/chromium"))  # Debian's package
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
HOSTILE_NAME = '<img src=x onerror="document.title=\'pwned\'"><b>bold</b>'


async def test_snapshot_lists_bots_open_waits_resolutions_and_late_calls(client: httpx.AsyncClient, gate: Any,
                                                                         autojump_clock: Any) -> None:
    import trio

    await gate.add_bot(webhook_bot(timeout_s=5))
    first = await start(client)
    await trio.sleep(1)
    second = await start(client)
    data = (await client.get("/api/dashboard")).json()
    assert data["bots"] == [{"id": "pay", "name": "pay", "webhooks": {"wait": "http://gate.test/webhooks/pay/wait"},
                            "derived_from": None}]
    assert data["open_waits"]["count"] == 2
    soonest, later = data["open_waits"]["shown"]  # soonest deadline first
    assert soonest["conversation"] == first["conversation_key"][:8] + "…"
    assert later["conversation"] == second["conversation_key"][:8] + "…"
    assert (soonest["bot"], soonest["block"], soonest["timeout_s"]) == ("pay", "wait", 5)
    assert soonest["deadline_unix"] - data["now_unix"] == pytest.approx(4)

    await client.post("/webhooks/pay/wait", json={"conversation_key": first["conversation_key"]})
    await trio.sleep(5)
    late = await client.post("/webhooks/pay/wait", json={"conversation_key": second["conversation_key"]})
    assert late.status_code == 410
    data = (await client.get("/api/dashboard")).json()
    assert data["open_waits"] == {"count": 0, "shown": []}
    assert [(r["outcome"], r["reason"]) for r in data["recent_resolutions"]] == [("failure", "timeout"),
                                                                                ("success", "received")]
    assert data["recent_late_calls"][0]["conversation"] == second["conversation_key"][:8] + "…"
    assert data["counters"] | {"resolved": None} == {"open_waits": 0, "waits_opened": 2, "succeeded": 1,
                                                     "timed_out": 1, "late_calls": 1, "resolved": None,
                                                     "failed": 1, "accepted_calls": 1, "refused_calls": 1}
    # The refused call is listed (and logged) with its status and error; the key is only linked, never logged.
    assert [(r["bot"], r["block"], r["status"], r["error"]) for r in data["refused"]] == [("pay", "wait", 410,
                                                                                            "wait_expired")]
    assert [(d["status"], d["outcome"]) for d in data["deliveries"]] == [(410, "refused"), (200, "accepted")]
    assert data["deliveries"][1]["conversation_key"] == first["conversation_key"]
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in ("dashboard.js", "dashboard.css"):
        assert (await client.get(f"/static/{asset}")).status_code == 200
    assert (await client.get("/static/secrets.txt")).status_code == 404


async def test_a_refused_call_is_parsed_once_and_its_refusal_still_names_the_key(
        client: httpx.AsyncClient, gate: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # The key of a call refused after its body parsed (409 not_waiting here) travels up with the
    # refusal: the web layer must not parse a (up to 1 MiB) body a second time to find it.
    import harness.core.webhooks
    import harness.web.server

    await gate.add_bot(webhook_bot())
    key = (await start(client))["conversation_key"]
    assert (await client.post("/webhooks/pay/wait", json={"conversation_key": key})).status_code == 200
    parsed: list[bytes] = []
    parse_json = harness.core.webhooks.parse_json

    def counting_parse_json(body: bytes) -> Any:
        parsed.append(body)
        return parse_json(body)

    for module in (harness.core.webhooks, harness.web.server):
        monkeypatch.setattr(module, "parse_json", counting_parse_json)
    with caplog.at_level(logging.INFO, logger="harness.web.deliveries"):
        again = await client.post("/webhooks/pay/wait", json={"conversation_key": key, "data": {"amount": 5}})
    assert again.status_code == 409
    assert again.json().keys() == {"error", "detail"} and again.json()["error"] == "not_waiting"  # the same answer
    assert len(parsed) == 1
    # What a user sees is unchanged: the page lists it with the key's first characters and links it;
    # the log line shows those characters, never the whole key.
    data = (await client.get("/api/dashboard")).json()
    assert [(r["status"], r["error"]) for r in data["refused"]] == [(409, "not_waiting")]
    refused = data["deliveries"][0]
    assert (refused["outcome"], refused["key"], refused["conversation_key"]) == ("refused", key[:6], key)
    [line] = [r for r in caplog.records if r.getMessage() == "webhook call refused"]
    assert (line.status, line.error, line.bot, line.block, line.key) == (409, "not_waiting", "pay", "wait", key[:6])
    assert key not in caplog.text


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    # Never a silent skip: a machine without the browser fails here and says what to install.
    if not CHROMIUM.exists():
        pytest.fail("the live page is tested in a real browser: install it with `apt-get install -y chromium` "
                    f"(expected at {CHROMIUM})", pytrace=False)
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("needs Playwright: python3 -m pip install -e '.[test]'", pytrace=False)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 680})
        finally:
            browser.close()


@pytest.mark.slow
def test_the_page_updates_itself_in_a_real_browser(tmp_path: Path, browser_page: Any) -> None:
    from playwright.sync_api import expect

    page = browser_page
    bots = quick_bot_folder(tmp_path, timeout_s=2)
    with ServerProcess.harness_serve("--bots", str(bots), "--bots", str(BOTS / "payment.toml"),
                                     log=tmp_path / "serve.log") as server:
        page.goto(f"{server.url}/")
        expect(page.locator("#bots")).to_contain_text(f"{server.url}/webhooks/quick/wait_payment")
        page.evaluate("window.sameDocument = true")  # gone if anything reloads the page

        def begin(bot: str) -> str:
            response = httpx.post(f"{server.url}/api/bots/{bot}/conversations")
            assert response.status_code == 201
            return response.json()["conversation_key"]

        def call(key: str, bot: str = "quick") -> int:
            return httpx.post(f"{server.url}/webhooks/{bot}/wait_payment", json={"conversation_key": key}).status_code

        # The paid one waits 120 s, so a loaded machine cannot make its call late.
        paid, forgotten = begin("payment"), begin("quick")
        patient = begin("payment")  # a 120 s wait that stays open for the screenshot
        waits = page.locator("#waits tbody")
        for key in (paid, forgotten, patient):
            expect(waits).to_contain_text(key[:8])
        countdown = waits.locator("tr", has_text=patient[:8]).locator("td.countdown span")
        first = float(countdown.inner_text().removesuffix(" s"))
        page.wait_for_timeout(600)
        assert 100 < float(countdown.inner_text().removesuffix(" s")) < first <= 120  # counting down

        assert call(paid, "payment") == 200
        resolutions = page.locator("#resolutions tbody")
        expect(resolutions.locator("tr", has_text=paid[:8])).to_contain_text("success")
        expect(resolutions.locator("tr", has_text=forgotten[:8])).to_contain_text("timeout", timeout=10_000)
        expect(waits).not_to_contain_text(forgotten[:8])
        assert call(forgotten) == 410
        expect(page.locator("#late tbody")).to_contain_text(forgotten[:8])
        expect(page.locator("[data-counter='late calls'] dd")).to_have_text("1")
        expect(page.locator("[data-counter='succeeded'] dd")).to_have_text("1")
        expect(page.locator("#status")).to_contain_text("live")
        assert page.evaluate("window.sameDocument") is True and page.title() == "Webhook gate"

        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("HARNESS_UPDATE_SCREENSHOT"):  # refresh the README's picture on purpose only
            shutil.copy(shot, ROOT / "docs" / "dashboard.png")


@pytest.mark.slow
def test_user_text_is_shown_as_text_and_a_lost_gate_is_said(tmp_path: Path, browser_page: Any) -> None:
    from playwright.sync_api import expect

    page = browser_page
    server = ServerProcess.harness_serve(log=tmp_path / "serve.log")
    try:
        hostile = {"id": "odd.name", "name": HOSTILE_NAME, "start": "w", "blocks": {
            "w": {"type": "webhook", "timeout_s": 60, "success": "e", "failure": "e"}, "e": {"type": "end"}}}
        assert httpx.post(f"{server.url}/api/bots", json=hostile).status_code == 201
        page.goto(f"{server.url}/")
        bots_table = page.locator("#bots")
        expect(bots_table).to_contain_text(HOSTILE_NAME)  # shown as text…
        assert bots_table.locator("img, b").count() == 0  # …never as markup
        assert page.title() == "Webhook gate"
    finally:
        server.kill()
    expect(page.locator("#status")).to_contain_text("cannot reach the gate", timeout=5000)


@pytest.mark.slow
def test_with_an_api_token_the_page_works_from_its_cookie_and_builds_no_token_url(tmp_path: Path,
                                                                                 browser_page: Any) -> None:
    import inspect

    from playwright.sync_api import expect

    from harness.web.server import create_app

    if "api_token" not in inspect.signature(create_app).parameters:
        pytest.skip("harness serve has no --api-token in this checkout yet")
    page, token = browser_page, "s3cret-token"
    server = ServerProcess.harness_serve("--api-token", token, "--bots", str(BOTS / "payment.toml"),
                                         log=tmp_path / "serve.log")
    with server:
        assert httpx.get(f"{server.url}/").status_code == 401
        assert httpx.get(f"{server.url}/api/dashboard").status_code == 401
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        page.goto(f"{server.url}/?token={token}")
        expect(page.locator("#bots")).to_contain_text("payment")
        expect(page.locator("#status")).to_contain_text("live")
        assert token not in page.url  # dropped from the address bar
        assert [url for url in urls[1:] if token in url] == []  # only the first visit carried it
        cookie = next(c for c in page.context.cookies() if c["name"] == "harness_token")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


@pytest.mark.slow
def test_the_page_lists_deliveries_opens_a_conversation_and_folds_derived_bots(tmp_path: Path,
                                                                                browser_page: Any) -> None:
    import re

    from playwright.sync_api import expect

    page = browser_page
    with ServerProcess.harness_serve("--bots", str(BOTS / "payment.toml"), log=tmp_path / "serve.log") as server:
        derived = httpx.get(f"{server.url}/api/bots/payment").json()
        derived = {key: value for key, value in derived.items() if key != "webhooks"} | {"id": "payment.t300"}
        assert httpx.post(f"{server.url}/api/bots", json=derived).status_code == 201
        page.goto(f"{server.url}/")
        key = httpx.post(f"{server.url}/api/bots/payment/conversations").json()["conversation_key"]
        webhook = f"{server.url}/webhooks/payment/wait_payment"
        assert httpx.post(webhook, json={"conversation_key": "nobody-has-this-key"}).status_code == 404
        assert httpx.post(webhook, json={"conversation_key": key, "data": {"amount": 42}}).status_code == 200
        deliveries = page.locator("#deliveries tbody")
        refused = deliveries.locator("tr", has_text="unknown_conversation")
        expect(refused).to_contain_text("404")
        accepted = deliveries.locator("tr", has_text=key[:6])
        expect(accepted).to_contain_text("200")
        times = deliveries.locator("td.time")
        assert re.fullmatch(r"\d\d:\d\d:\d\d", times.first.inner_text())  # 24-hour UTC
        line_height = refused.locator("td").nth(2).bounding_box()["height"]
        assert times.first.bounding_box()["height"] <= line_height + 1  # never wraps
        accepted.click()
        conversation = page.locator("#conversation")
        expect(conversation).to_be_visible()
        expect(conversation.locator("#transcript")).to_contain_text("Thanks, we received 42.")
        expect(conversation).to_contain_text("received")
        bots = page.locator("#bots tbody")
        expect(bots).to_contain_text("payment")
        expect(bots).not_to_contain_text("payment.t300")  # folded away…
        expect(page.locator("#derived summary")).to_contain_text("1 derived copy")  # …but still there
        expect(page.locator("[data-counter='refused calls'] dd")).to_have_text("1")
        assert page.locator("#rates").bounding_box()["width"] > 100


def test_without_chromium_the_browser_tests_fail_and_say_what_to_install(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "api_token", str(Path(__file__))],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "HARNESS_TEST_CHROMIUM": str(tmp_path / "no-chromium")})
    assert result.returncode == 1 and "skipped" not in result.stdout, result.stdout
    assert "apt-get install -y chromium" in result.stdout
