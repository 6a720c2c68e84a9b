"""Parano mode against an active attacker on the network (issue 10), in a real browser.

Headless Chromium talks to a real server through tests/relay.py, which here plays the
attacker on the path: it reads the clear parts of the traffic (cookies, headers), answers
in the server's place, or closes a WebSocket in the server's name. Each test acts only on
what such an attacker sees and writes: HTTP requests and responses, WebSocket frames;
never on the protocol inside the encrypted channel, so the tests hold for any version of
it. Each asserts on what the user sees or on what the app really ran.
"""

from __future__ import annotations

import secrets

import httpx
import pytest
from chromium import chromium
from helpers import TLS
from playwright.sync_api import Page, expect
from relay import RecordingRelay

APP = """
from pathlib import Path
from htag import State, Tag
from starlette.responses import JSONResponse, PlainTextResponse
from htagweb import WebServer, WebServerWS

RUNS = Path(__file__).with_name("runs.log")  # the server's own account of each click it ran
ORDER = (  # a page's own request to a route of the server, its answer shown
    "fetch('/order', {{method: 'POST'}})"
    ".then((r) => r.ok ? r.text() : 'refused: HTTP ' + r.status, () => 'failed')"
    ".then((text) => document.getElementById('orders').textContent = text)"
)


class App(Tag.App):
    def init(self):
        self.name = State(self.session.get("name", "stranger"))
        self.count = State(0)
        Tag.p(lambda: f"Hello {{self.name.value}}", _id="hello")
        self.entry = Tag.input(_id="name", _value="")
        Tag.button("sign in", _id="login", _onclick=self.login)
        Tag.p(lambda: f"Count: {{self.count.value}}", _id="count")
        Tag.button("+1", _id="inc", _onclick=self.inc)
        Tag.button("order", _id="order", _onclick=ORDER)
        Tag.p(_id="orders")

    def login(self, event):
        self.session["name"] = self.entry["value"]
        self.name.value = self.session["name"]

    def inc(self, event):
        with RUNS.open("a") as runs:
            runs.write("inc\\n")
        self.count.value += 1


async def order(request):
    with RUNS.open("a") as runs:
        runs.write("order\\n")
    return PlainTextResponse(f"orders placed: {{RUNS.read_text().count('order')}}")


async def whoami(request):  # a plaintext route of the server: what a cookie alone opens
    return JSONResponse(dict(request.session))


app = {factory}(App, runtime_dir=RUNTIME_DIR, parano=True)
app.add_route("/whoami", whoami)
app.add_route("/order", order, methods=["POST"])
"""

#: how the page shows the transport htag's client settled on (its own globals)
WEBSOCKET = "window.ws && window.ws.readyState === 1 && !window.use_fallback"
TRANSPORTS = {
    # name: (server class, requests the relay cuts, the page's transport)
    "websocket": ("WebServerWS", (), WEBSOCKET),
    "sse": ("WebServerWS", (b"GET /_htagweb/p/ws",), "!!window.sse && window.sse.readyState === 1 && !window.use_pure_http"),
    "http": ("WebServer", (), "window.use_pure_http === true"),
}

#: records, for each WebSocket the page opens, the close the browser reports, once every
#: close handler of the page has run (the page's own handlers are registered after this one)
CLOSES_SEEN = """
(() => {
  const Real = window.WebSocket;
  window.__closesSeen = [];
  window.WebSocket = class extends Real {
    constructor(...args) {
      super(...args);
      this.addEventListener("close", (event) => setTimeout(() => window.__closesSeen.push(event.code), 0));
    }
  };
})();
"""


def app_source(factory: str = "WebServerWS") -> str:
    return APP.format(factory=factory)


def open_app(page: Page, url: str, transport_check: str = WEBSOCKET) -> None:
    page.goto(url)
    expect(page.locator("#count")).to_have_text("Count: 0", timeout=15000)
    page.wait_for_function(transport_check, timeout=15000)


def test_copied_cookies_do_not_give_the_session(server):
    name = "nm" + secrets.token_hex(8)
    srv = server(app_source())
    with RecordingRelay(srv.port) as wire, chromium() as browser:
        url = f"http://127.0.0.1:{wire.port}/"
        victim = browser.new_context()
        page = victim.new_page()
        open_app(page, url)
        expect(page.locator("#hello")).to_have_text("Hello stranger")
        page.fill("#name", name)
        page.click("#login")
        expect(page.locator("#hello")).to_have_text(f"Hello {name}")  # in the session: saved before the answer left

        cookies: dict[str, str] = {}  # every cookie of the victim, as the wire shows them
        for head in wire.sent_heads():
            for header in head.values("cookie"):
                cookies.update(pair.strip().partition("=")[::2] for pair in header.split(";") if "=" in pair)
        for head in wire.received_heads():
            for header in head.values("set-cookie"):
                key, _, value = header.partition(";")[0].partition("=")
                cookies[key.strip()] = value.strip()
        assert any(head.line.startswith("POST /_htagweb/") for head in wire.sent_heads())  # the relay saw the exchanges

        attacker = browser.new_context()
        attacker.add_cookies([{"name": key, "value": value, "url": url} for key, value in cookies.items()])
        stolen = attacker.new_page()
        stolen.goto(url)
        expect(stolen.locator("#hello")).to_contain_text("Hello", timeout=15000)  # the app is on the attacker's screen
        shown = stolen.evaluate("document.documentElement.innerText")
        victim.close()
        attacker.close()
    cookie_header = "; ".join(f"{key}={value}" for key, value in cookies.items())
    answer = httpx.get(srv.url + "/whoami", headers={"Cookie": cookie_header}, verify=TLS)
    seen = {"the attacker's browser": shown, "a plaintext route of the server": answer.text}
    assert [where for where, text in seen.items() if name in text] == [], f"the copied cookies opened the victim's session: {seen}"


CLICKS = {
    # name: (the button, what the page shows once its request is over, answered or failed)
    "htag-event": ("#inc", "Object.keys(window._htag_callbacks).length === 0"),  # htag's client waits on no callback
    "app-route": ("#order", "document.getElementById('orders').textContent !== ''"),
}


@pytest.mark.parametrize("click", CLICKS)
def test_forged_ticket_error_does_not_run_a_click_twice(server, click):
    button, settled = CLICKS[click]
    srv = server(app_source("WebServer"))
    body = b'{"error":"ticket","reason":"expired"}'
    forged = (
        b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\naccess-control-allow-origin: *\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    with RecordingRelay(srv.port) as wire, chromium() as browser:
        context = browser.new_context()
        page = context.new_page()
        open_app(page, f"http://127.0.0.1:{wire.port}/", TRANSPORTS["http"][2])
        forgery = wire.forge_answer(b"POST /_htagweb/p/http", forged)
        page.click(button)
        assert forgery.done.wait(30), "the click never reached the relay"
        assert forgery.real_answer.startswith(b"HTTP/1.1 200"), forgery.real_answer[:200]  # the server ran it and answered
        page.wait_for_function(settled, timeout=30000)
        shown = page.evaluate("document.documentElement.innerText")
        context.close()
    runs = srv.workdir / "runs.log"
    ran = len(runs.read_text().split()) if runs.exists() else 0
    assert ran == 1, f"one click ran {ran} times on the server after a forged error answer; the page shows {shown!r}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_referer_reaches_the_wire(server, transport):
    factory, refuse, check = TRANSPORTS[transport]
    marker = "q" + secrets.token_hex(8)
    srv = server(app_source(factory))
    with RecordingRelay(srv.port, refuse) as wire, chromium() as browser:
        context = browser.new_context()
        page = context.new_page()
        open_app(page, f"http://127.0.0.1:{wire.port}/?secret-query={marker}", check)
        page.click("#inc")
        expect(page.locator("#count")).to_have_text("Count: 1")
        context.close()
        ours = [head for head in wire.sent_heads() if head.line.split(" ")[1].startswith("/_htagweb/")]
    assert len(ours) >= 2, [head.line for head in wire.sent_heads()]  # key exchange and channels were seen
    referers = [(head.line, head.values("referer")) for head in ours if head.values("referer")]
    assert referers == [], f"requests to /_htagweb/ tell the wire the page's address: {referers}"


def test_forged_websocket_close_text_is_not_shown(server):
    marker = "ATTACKER-TEXT-" + secrets.token_hex(4)
    srv = server(app_source())
    with RecordingRelay(srv.port) as wire, chromium() as browser:
        context = browser.new_context()
        context.add_init_script(CLOSES_SEEN)
        page = context.new_page()
        open_app(page, f"http://127.0.0.1:{wire.port}/")
        wire.close_websocket(b"GET /_htagweb/p/ws", 4422, f"{marker}: call +1-555-0100 to restore your account")
        page.wait_for_function("window.__closesSeen.includes(4422)", timeout=30000)  # the page has handled the close
        shown = page.evaluate("document.documentElement.innerText")
        in_any_tree = page.get_by_text(marker).count()  # open shadow roots too (htag's error overlay)
        context.close()
    assert marker not in shown, f"the page shows the attacker's text: {shown!r}"
    assert in_any_tree == 0
