"""The counter in a real browser (headless Debian Chromium): clicks, reloads,
users and tabs, the session shared with a route, over WebSocket and plain HTTP."""

from __future__ import annotations

import os
import re

import pytest
from chromium import chromium
from conftest import ROOT
from helpers import server_source
from playwright.sync_api import Browser, Page, WebSocketRoute, expect

SESSION_APP = server_source("WebServerWS").replace(
    '''        Tag.button("session", _id="session", _onclick=self.session_event)''',
    '''        Tag.button("session", _id="session", _onclick=self.session_event)
        self.seen = State("")
        Tag.p(lambda: f"route said: {self.seen.value}", _id="seen")
        Tag.button("read", _id="read", _onclick=self.read)
        Tag.button("write", _id="write", _onclick=self.write)''',
).replace(
    "    def hog(self, event):",
    '''    def read(self, event):
        self.seen.value = self.session.get("from_route", "")

    def write(self, event):
        self.session["from_app"] = "written by the app"

    def hog(self, event):''',
)


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


def clicks(page: Page, n: int, start: int = 0) -> None:
    for i in range(start + 1, start + n + 1):
        page.click("#inc")
        expect(page.locator("#count")).to_have_text(f"Count: {i}")


class LateServer:
    """Routes the page's htag WebSocket: open for the page at once, connected to the
    server only by ``connect()``, so that the server's first message (the app's whole
    state) comes when the test says."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.socket: WebSocketRoute | None = None
        page.route_web_socket(re.compile(r"/ws$"), self._take)

    def _take(self, socket: WebSocketRoute) -> None:
        self.socket = socket

    def connect(self) -> None:
        """Connect, and return once the page has handled the server's first message."""
        self.page.wait_for_function("window.ws && window.ws.readyState === 1")
        assert self.socket is not None
        with self.page.expect_console_message(lambda message: "processing payload updates" in message.text):
            self.socket.connect_to_server()  # from now on, both ways are passed on


def test_a_click_across_the_first_message_of_the_websocket_counts(server, browser: Browser):
    """htag's client rebuilds the body from the state its WebSocket brings first, just
    after the page shows: a click whose button went down before and up after must count
    (new nodes under the pointer at its release made it no click at all), and a page whose
    state changed meanwhile must still show the new one."""
    srv = server(server_source("WebServerWS"))
    context = browser.new_context()
    try:
        page = context.new_page()
        late = LateServer(page)
        page.goto(srv.url + "/")
        expect(page.locator("#count")).to_have_text("Count: 0")  # as served, before the WebSocket says anything
        box = page.locator("#inc").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        late.connect()
        page.mouse.up()
        expect(page.locator("#count")).to_have_text("Count: 1")
        behind = context.new_page()  # the same session: the same app
        late = LateServer(behind)
        behind.goto(srv.url + "/")
        expect(behind.locator("#count")).to_have_text("Count: 1")
        clicks(page, 1, start=1)  # while that page's WebSocket is not connected yet
        late.connect()
        expect(behind.locator("#count")).to_have_text("Count: 2")
    finally:
        context.close()


@pytest.mark.parametrize("factory", ["WebServerWS", "WebServer"])
def test_counter_clicks_and_reload_keeps_state(server, browser: Browser, factory):
    srv = server(server_source(factory))
    context = browser.new_context()
    try:
        page = context.new_page()
        sockets = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(srv.url + "/")
        expect(page.locator("#count")).to_have_text("Count: 0")
        pid = page.inner_text("#pid")
        clicks(page, 3)
        if factory == "WebServerWS":
            assert page.evaluate("window.ws && window.ws.readyState") == 1 and not page.evaluate("window.use_fallback")
            assert sockets and sockets[0].endswith("/ws")
        else:
            assert page.evaluate("window.use_pure_http") is True and sockets == []
            if os.environ.get("HTAGWEB_SCREENSHOTS") == "1":
                page.screenshot(path=str(ROOT / "docs" / "counter.png"))
        page.reload()
        expect(page.locator("#count")).to_have_text("Count: 3")
        assert page.inner_text("#pid") == pid
        clicks(page, 1, start=3)
    finally:
        context.close()


def test_users_have_own_process_tabs_share_one(server, browser: Browser):
    srv = server(server_source("WebServerWS"))
    alice, bob = browser.new_context(), browser.new_context()
    try:
        tab1, tab2, other = alice.new_page(), alice.new_page(), bob.new_page()
        for page in (tab1, tab2, other):
            page.goto(srv.url + "/")
            expect(page.locator("#count")).to_have_text("Count: 0")
        assert tab1.inner_text("#pid") == tab2.inner_text("#pid") != other.inner_text("#pid")
        clicks(tab1, 2)
        expect(tab2.locator("#count")).to_have_text("Count: 2")  # the same app: the other tab is updated live
        tab2.reload()
        expect(tab2.locator("#count")).to_have_text("Count: 2")
        expect(other.locator("#count")).to_have_text("Count: 0")
    finally:
        alice.close()
        bob.close()


def test_session_shared_with_a_route_in_the_browser(server, browser: Browser):
    srv = server(SESSION_APP)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(srv.url + "/set?v=hello-from-route")
        page.goto(srv.url + "/")
        page.click("#read")
        expect(page.locator("#seen")).to_have_text("route said: hello-from-route")
        page.click("#write")
        page.click("#inc")
        expect(page.locator("#count")).to_have_text("Count: 1")  # the write's reply has arrived
        page.goto(srv.url + "/get")
        assert "written by the app" in page.inner_text("body")
        page.go_back()
        expect(page.locator("#seen")).to_have_text("route said: hello-from-route")  # state kept across navigation
    finally:
        context.close()


class CuttingWire:
    """Routes the page's htag WebSocket through the test, each way passed on, until the test
    arms a cut: the next event the page sends is dropped (``lost``), or passed on and its
    answer dropped (``answered``); then the connection is cut with ``code``, as when a
    deploy replaces the worker (1012, 1001) or a network drops (1006)."""

    def __init__(self, page: Page) -> None:
        self.cut: str | None = None
        self.code = 1006
        page.route_web_socket(re.compile(r"/ws$"), self._take)

    def arm(self, cut: str, code: int) -> None:
        self.cut, self.code = cut, code

    def _take(self, socket: WebSocketRoute) -> None:
        server = socket.connect_to_server()

        def cut_now() -> None:
            self.cut = None
            socket.close(code=self.code)
            server.close()

        def from_page(message: str | bytes) -> None:
            if self.cut == "lost":
                cut_now()
                return
            if self.cut == "answered":
                self.cut = "answer"
            server.send(message)

        def from_server(message: str | bytes) -> None:
            if self.cut == "answer":
                cut_now()
                return
            socket.send(message)

        socket.on_message(from_page)
        server.on_message(from_server)


@pytest.mark.parametrize("code", [1006, 1012, 1001])
@pytest.mark.parametrize("cut", ["lost", "answered"])
@pytest.mark.parametrize("mode", ["plain", "parano"])
def test_a_click_whose_websocket_is_cut_counts_once(server, browser: Browser, mode, cut, code):
    """A click sent just as its WebSocket is cut (a deploy replaces the worker, a network
    drops) must count once: htag's client drops a click sent on a socket that is then cut,
    silently. Sent again over HTTP, it must not count twice when it had reached the app and
    only its answer was lost. In parano mode it is sent again under the number it had on
    the socket: the page's events stay in order, none missing."""
    srv = server(server_source("WebServerWS", parano=mode == "parano"))
    context = browser.new_context()
    try:
        page = context.new_page()
        wire = CuttingWire(page)
        page.goto(srv.url + "/")
        page.wait_for_function("window.ws && window.ws.readyState === 1")
        clicks(page, 1)
        wire.arm(cut, code)
        page.click("#inc")
        expect(page.locator("#count")).to_have_text("Count: 2")
        clicks(page, 1, start=2)
        page.reload()
        expect(page.locator("#count")).to_have_text("Count: 3")
    finally:
        context.close()


#: an app whose process, once its page is served, is busy for two seconds: the page's WebSocket
#: waits that long to open, and a click meanwhile is queued by htag's client
BUSY_AFTER_ITS_PAGE = """
import asyncio, time
from htag import Tag, State
from htagweb import WebServerWS

class App(Tag.App):
    def init(self):
        self.count = State(0)
        Tag.p(lambda: f"Count: {self.count.value}", _id="count")
        Tag.button("+1", _id="inc", _onclick=self.inc)

    def on_mount(self):
        asyncio.get_running_loop().call_soon(time.sleep, 2)

    def inc(self, event):
        self.count.value += 1

app = WebServerWS(App, runtime_dir=RUNTIME_DIR)
"""


@pytest.mark.parametrize("cut", ["lost", "answered"])
def test_a_click_queued_while_the_websocket_opens_then_cut_counts_once(server, browser: Browser, cut):
    """A click made while the page's WebSocket is still opening waits in htag's queue, which
    htag sends at the opening itself: cut then, it was lost like any other. (A parano channel
    is open once its keys are checked, before the app answers: its window is that short.)"""
    srv = server(BUSY_AFTER_ITS_PAGE)
    context = browser.new_context()
    try:
        page = context.new_page()
        wire = CuttingWire(page)
        page.goto(srv.url + "/")
        expect(page.locator("#count")).to_have_text("Count: 0")
        # the test notes whether a click finds the socket still opening
        page.evaluate("() => { const send = htag_transport; htag_transport = p => { window.queued ??= ws.readyState === 0; send(p); }; }")
        wire.arm(cut, 1006)
        page.click("#inc")
        expect(page.locator("#count")).to_have_text("Count: 1")
        assert page.evaluate("window.queued")  # the click waited for the socket to open
        page.reload()
        expect(page.locator("#count")).to_have_text("Count: 1")
    finally:
        context.close()
