"""In a real browser (headless Debian Chromium): what an open-internet server must
hold against pages of other sites, and a clean console for its own users."""

from __future__ import annotations

import pytest
from chromium import chromium
from helpers import server_source
from playwright.sync_api import Browser, expect


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


def test_http_only_server_is_pure_http_from_the_first_load(server, browser: Browser):
    srv = server(server_source("WebServer"))
    context = browser.new_context()
    try:
        page = context.new_page()
        console, requests = [], []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.on("request", lambda r: requests.append(r.url))
        page.on("websocket", lambda ws: requests.append(ws.url))
        page.goto(srv.url + "/")
        expect(page.locator("#count")).to_have_text("Count: 0")
        assert page.evaluate("window.use_pure_http") is True  # before any click
        for n in (1, 2):
            page.click("#inc")
            expect(page.locator("#count")).to_have_text(f"Count: {n}")
        page.reload()
        expect(page.locator("#count")).to_have_text("Count: 2")
        page.wait_for_timeout(500)  # give a transport attempt time to show in the console (not a timing assertion)
        assert console == []
        assert not [url for url in requests if url.endswith(("/ws", "/stream"))], requests
    finally:
        context.close()
