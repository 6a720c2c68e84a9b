"""In a real browser (headless Debian Chromium): what an open-internet server must
hold against pages of other sites, and a clean console for its own users."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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



#: a page that opens the app's WebSocket (the app's port in its query string), clicks, and shows what it read
PROBE = """<!DOCTYPE html><html><body><pre id="out">waiting</pre><script>
var out = document.getElementById("out");
var ws = new WebSocket("ws://localhost:" + new URLSearchParams(location.search).get("app") + "/ws");
ws.onopen = function () { out.textContent = "open"; ws.send(JSON.stringify({id: "inc", event: "click", data: {callback_id: "x"}})); };
ws.onmessage = function (e) { out.textContent = "read: " + e.data; };
ws.onclose = function (e) { if (out.textContent.indexOf("read") != 0) out.textContent = "refused (" + e.code + ")"; };
</script></body></html>"""

PROBE_ROUTE = f"""
from starlette.responses import HTMLResponse
async def probe(request):
    return HTMLResponse({PROBE!r})
app.add_route("/probe.html", probe)
"""


#: a page of another site linking to the app's "new instance" URL (the app's port in its query string)
RESET_LINK = """<!DOCTYPE html><html><body><a id="reset">reset</a><script>
document.getElementById("reset").href = "http://localhost:" + new URLSearchParams(location.search).get("app") + "/?n=1";
</script></body></html>"""


@contextmanager
def other_site() -> Iterator[str]:
    """The probe (/probe.html) and the reset link (/reset.html) on another loopback port: the
    same host name, so the same "site" for SameSite cookies."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (RESET_LINK if self.path.startswith("/reset.html") else PROBE).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def visit_probe(browser: Browser, app_port: int, probe_origin: str) -> tuple[str, str]:
    """A user with the app open visits the probe: what the probe read, and the user's count after."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://localhost:{app_port}/")
        expect(page.locator("#count")).to_have_text("Count: 0")
        probe = context.new_page()
        probe.goto(f"{probe_origin}/probe.html?app={app_port}")
        # refused, or the click's answer read (not only the initial payload that comes just before it)
        expect(probe.locator("#out")).to_have_text(re.compile(r"^(refused|read: .*Count: [1-9])"))
        verdict = probe.inner_text("#out")
        page.reload()
        expect(page.locator("#count")).to_have_text(re.compile(r"Count: \d"))
        return verdict, page.inner_text("#count")
    finally:
        context.close()


def test_a_page_on_another_port_cannot_drive_a_users_app(server, browser: Browser):
    srv = server(server_source("WebServerWS") + PROBE_ROUTE)
    with other_site() as elsewhere:
        verdict, count = visit_probe(browser, srv.port, elsewhere)
    assert verdict.startswith("refused") and count == "Count: 0", verdict
    verdict, count = visit_probe(browser, srv.port, f"http://localhost:{srv.port}")  # the same page from the app's origin
    assert verdict.startswith("read: ") and "Count: 1" in verdict and count == "Count: 1", verdict
    srv.wait_log("refused a cross-origin WebSocket")


def test_allowed_origins_let_a_chosen_site_embed_the_app(server, browser: Browser):
    with other_site() as partner, other_site() as stranger:
        srv = server(server_source("WebServerWS", allowed_origins=[partner]))
        verdict, count = visit_probe(browser, srv.port, partner)
        assert verdict.startswith("read: ") and count == "Count: 1", verdict
        verdict, count = visit_probe(browser, srv.port, stranger)
        assert verdict.startswith("refused") and count == "Count: 0", verdict


def test_a_link_from_another_site_does_not_reset_a_users_app(server, browser: Browser):
    srv = server(server_source("WebServerWS"))
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://localhost:{srv.port}/")
        for n in (1, 2):
            page.click("#inc")
            expect(page.locator("#count")).to_have_text(f"Count: {n}")
        with other_site() as elsewhere:
            page.goto(f"{elsewhere}/reset.html?app={srv.port}")
            page.click("#reset")
            page.wait_for_url(re.compile(r"/\?n=1$"))
            expect(page.locator("#count")).to_have_text("Count: 2")  # the user's app, not a new one
        page.evaluate("location.href = '/?n=1'")  # htag's reset, from the app's own page: honoured
        expect(page.locator("#count")).to_have_text("Count: 0")
    finally:
        context.close()
    srv.wait_log("ignored a cross-site reset")


def test_the_timeout_message_fits_in_htags_overlay(server, browser: Browser):
    srv = server(server_source("WebServerWS", timeout_interaction=1))
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(srv.url + "/")
        expect(page.locator("#count")).to_have_text("Count: 0")
        page.click("#hang")
        trace = page.locator("htag-error #trace")  # playwright's locators pierce the open shadow root
        expect(trace).to_contain_text("Reload the page to start again.", timeout=15000)
        text = " ".join(trace.inner_text().split())
        assert text == "The application took longer than 1s to answer and was stopped. Reload the page to start again."
        width = trace.evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert width[0] <= width[1], f"the message overflows its box: {width}"
    finally:
        context.close()


@pytest.mark.parametrize("parano", [False, True], ids=["plain", "parano"])
@pytest.mark.parametrize("factory", ["WebServer", "WebServerWS"])
def test_a_click_after_the_session_expired_tells_the_user_in_words(server, browser: Browser, factory, parano):
    """A tab left open past ``timeout_inactivity``: a WebSocket page reconnects and gets a
    fresh app, but a click posted over HTTP (htag's pure-HTTP mode, or its fallback) cannot:
    its page belongs to the ended app. The user must read why and what to do, and no process
    must be made for a click that cannot run."""
    srv = server(server_source(factory, timeout_inactivity=1, parano=parano))
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(srv.url + "/")
        expect(page.locator("#count")).to_have_text("Count: 0")
        if factory == "WebServerWS":
            page.evaluate("() => fallback()")  # htag's own fallback: SSE and event POSTs, as behind a proxy without WebSocket
        srv.wait_log(r"user process expired")
        page.click("#inc")
        trace = page.locator("htag-error #trace")
        expect(trace).to_have_text("This session ended after a time without activity. Reload the page to start again.")
        page.reload()
        expect(page.locator("#count")).to_have_text("Count: 0")
    finally:
        context.close()
    assert srv.log.count("user process spawned") == 2  # the first page and the reload
