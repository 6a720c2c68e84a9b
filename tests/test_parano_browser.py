"""Parano mode in a real browser (headless Debian Chromium) behind a recording relay.

What the app renders and what the user types must never cross the wire readable,
in any transport of htag's client, before or after a reload, both where the page
has WebCrypto (127.0.0.1, a secure context) and where it has not (plain HTTP to a
non-local host name, as on a LAN: the noble bundle); the same test without parano
finds them, so it can fail. Also: the vectors checked by each crypto backend, the
kiosk file refusing an impostor server and keeping its links.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import httpx
import pytest
from chromium import LAN_HOST, LAN_RULE, chromium
from conftest import ROOT
from playwright.sync_api import Browser, expect
from relay import RecordingRelay

from htagweb.pages import fallback_bundle

APP = """
from htag import State, Tag
from htagweb import WebServer, WebServerWS


class App(Tag.App):
    def init(self):
        self.echo = State("")
        self.count = State(0)
        Tag.p({marker!r}, _id="marker")
        self.entry = Tag.input(_id="in", _value="")
        Tag.button("echo", _id="echo-btn", _onclick=self.copy)
        Tag.p(lambda: f"echo:{{self.echo.value}}", _id="echo")
        Tag.p(lambda: f"Count: {{self.count.value}}", _id="count")
        Tag.button("+1", _id="inc", _onclick=self.inc)

    def copy(self, event):
        self.echo.value = self.entry["value"]

    def inc(self, event):
        self.count.value += 1


app = {factory}(App, runtime_dir=RUNTIME_DIR, parano={parano})
"""


def app_source(marker: str, factory: str = "WebServerWS", parano: bool = True) -> str:
    return APP.format(marker=marker, factory=factory, parano=parano)


def encodings(marker: str) -> list[bytes]:
    """Every form in which a proxy could find the marker."""
    raw = marker.encode()
    forms = {raw, json.dumps(marker).encode(), urllib.parse.quote(marker).encode(), urllib.parse.quote_plus(marker).encode()}
    forms.add(binascii.hexlify(raw))
    for shift in range(3):  # base64 at each alignment, minus the edge characters that depend on neighbours
        encoded = base64.b64encode(b"\0" * shift + raw + b"\0\0")
        start = (shift * 4 + 2) // 3 + 1
        forms.add(encoded[start : start + (len(raw) * 4) // 3 - 2])
        forms.add(base64.urlsafe_b64encode(b"\0" * shift + raw + b"\0\0")[start : start + (len(raw) * 4) // 3 - 2])
    return sorted(forms)


def found(marker: str, recorded: bytes) -> bool:
    return any(form in recorded for form in encodings(marker))


@pytest.fixture
def browser():
    with chromium(LAN_RULE) as browser:
        yield browser


#: where the page is opened: a secure context (WebCrypto), or plain HTTP to a LAN host name (noble)
HOSTS = {"local": ("127.0.0.1", "webcrypto"), "lan": (LAN_HOST, "noble")}


@pytest.fixture
def relay():
    relays: list[RecordingRelay] = []

    def make(port: int, refuse: tuple[bytes, ...] = (), tamper: bytes = b"") -> RecordingRelay:
        relays.append(RecordingRelay(port, refuse, tamper))
        return relays[-1]

    yield make
    for each in relays:
        each.close()


TRANSPORTS = {
    # name: (server class, requests the relay cuts, how the page shows the transport in use)
    "websocket": ("WebServerWS", (), "window.ws && window.ws.readyState === 1 && !window.use_fallback"),
    "sse": ("WebServerWS", (b"GET /_htagweb/p/ws",), "!!window.sse && window.sse.readyState === 1 && !window.use_pure_http"),
    "http": ("WebServer", (), "window.use_pure_http === true"),
}


def use_app(browser: Browser, url: str, typed: str, reload: bool, transport_check: str, backend: str | None = None) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(url)
        expect(page.locator("#count")).to_have_text("Count: 0", timeout=15000)
        if backend:
            assert page.evaluate("window.htagwebParano.backend.name") == backend
            assert page.evaluate("window.crypto.subtle === undefined") == (backend == "noble")
        page.click("#inc")
        expect(page.locator("#count")).to_have_text("Count: 1")
        page.fill("#in", typed)
        # the typed value travels as an event of its own: in pure-HTTP mode without parano (nothing
        # orders a page's events there) a click right after it may overtake it; wait for its answer
        page.wait_for_function("Object.keys(window._htag_callbacks).length === 0", timeout=15000)
        page.click("#echo-btn")
        expect(page.locator("#echo")).to_have_text(f"echo:{typed}")
        assert page.evaluate(transport_check), transport_check
        if reload:
            page.reload()
            expect(page.locator("#count")).to_have_text("Count: 1", timeout=15000)
            page.click("#inc")
            expect(page.locator("#count")).to_have_text("Count: 2")
            expect(page.locator("#echo")).to_have_text(f"echo:{typed}")
            assert page.evaluate(transport_check), transport_check
    finally:
        context.close()


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("reload", [False, True], ids=["once", "reloaded"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_nothing_readable_on_the_wire(server, browser, relay, transport, reload, host):
    factory, refuse, check = TRANSPORTS[transport]
    name, backend = HOSTS[host]
    rendered, typed = "mk" + secrets.token_hex(8), "ty" + secrets.token_hex(8)
    srv = server(app_source(rendered, factory))
    wire = relay(srv.port, refuse)
    use_app(browser, f"http://{name}:{wire.port}/", typed, reload, check, backend)
    recorded = wire.observed()
    assert b"/_htagweb/p/" in recorded and len(recorded) > 10000  # the relay did see the exchanges
    assert not found(rendered, recorded), "the rendered marker crossed the wire readable"
    assert not found(typed, recorded), "the typed marker crossed the wire readable"


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_without_parano_the_markers_are_on_the_wire(server, browser, relay, transport, host):
    factory, refuse, check = TRANSPORTS[transport]
    rendered, typed = "mk" + secrets.token_hex(8), "ty" + secrets.token_hex(8)
    srv = server(app_source(rendered, factory, parano=False))
    wire = relay(srv.port, tuple(r.replace(b"/_htagweb/p/ws", b"/ws") for r in refuse))
    use_app(browser, f"http://{HOSTS[host][0]}:{wire.port}/", typed, False, check)
    assert found(rendered, wire.observed()) and found(typed, wire.observed())


def without_bundle(tmp_path: Path) -> str:
    """Source lines that make a server import a copy of htagweb whose noble bundle was never built."""
    copy = tmp_path / "unbuilt"
    shutil.copytree(ROOT / "htagweb", copy / "htagweb", ignore=shutil.ignore_patterns("__pycache__", "node_modules", "noble.min.js"))
    return f"import sys\nsys.path.insert(0, {str(copy)!r})\n"


def test_without_the_bundle_plain_http_is_refused_and_the_administrator_told(server, relay, tmp_path):
    rendered = "mk" + secrets.token_hex(8)
    srv = server(without_bundle(tmp_path) + app_source(rendered))
    srv.wait_log(r"WARNING.*JS crypto fallback .* is not built: visitors on plain HTTP to a non-local host name get the refusal page")
    wire = relay(srv.port)
    with chromium(LAN_RULE) as browser:
        page = browser.new_page()
        page.goto(f"http://{LAN_HOST}:{wire.port}/")
        expect(page.locator("h1")).to_have_text("This page cannot be opened securely here")
        assert page.title() == "Refused: no secure connection over plain HTTP here"
        assert page.evaluate("window.crypto.subtle === undefined")
        text = page.inner_text("body")
        # the administrator's options
        assert "kiosk" in text and "HTTPS" in text and "Node.js" in text and "python -m htagweb kiosk" in text
        srv.wait_log(rf"WARNING.*parano: refused a visitor on plain HTTP to '{LAN_HOST}:{wire.port}'")
        for _ in range(3):
            page.reload()
            expect(page.locator("h1")).to_have_text("This page cannot be opened securely here")
    recorded = wire.observed()
    assert not found(rendered, recorded)
    requests = [head.line.split()[1] for head in wire.sent_heads()]
    assert set(requests) <= {"/", "/favicon.ico", "/_htagweb/refused"}  # no key exchange, no channel: nothing of the app
    beacons = [head for head in wire.sent_heads() if head.line.startswith("POST /_htagweb/refused ")]
    assert len(beacons) == 4 and all(int(head.values("content-length")[0]) < 32 for head in beacons)
    assert all(not head.values("referer") and not head.values("cookie") for head in beacons)
    # a flood of beacons is answered and costs a log line per minute at most
    statuses = {httpx.post(f"{srv.url}/_htagweb/refused", content=b"no-webcrypto").status_code for _ in range(50)}
    assert statuses == {204}
    assert len(re.findall("refused a visitor on plain HTTP", srv.log)) == 1


def test_an_altered_bundle_is_not_run(server, browser, relay):
    """The page runs the noble bundle it names by hash (SRI) or nothing: a cache or a relay that
    alters it gets the refusal page, not its script. (An attacker who can rewrite the page too is
    out of reach of any in-page check: crypto/THREAT_MODEL.md.)"""
    rendered = "mk" + secrets.token_hex(8)
    srv = server(app_source(rendered))
    wire = relay(srv.port)
    evil = b"document.title = 'altered script ran'; window.htagwebNoble = null;"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/javascript\r\ncontent-length: %d\r\n\r\n" % len(evil)
    forgery = wire.forge_answer(b"GET /_htagweb/noble-", head + evil)
    page = browser.new_context().new_page()
    page.goto(f"http://{LAN_HOST}:{wire.port}/")
    expect(page.locator("h1")).to_have_text("This page cannot be opened securely here")
    assert forgery.done.is_set() and forgery.real_answer.startswith(b"HTTP/1.1 200 ")  # the real bundle was there
    assert page.title() == "Refused: no secure connection over plain HTTP here"
    assert "did not load intact" in page.inner_text("body")
    srv.wait_log(r"WARNING.*refused a visitor on plain HTTP to .*did not load intact")
    assert not any(head.line.startswith(("POST /_htagweb/kx", "POST /_htagweb/p/")) for head in wire.sent_heads())
    assert not found(rendered, wire.observed())


@pytest.mark.parametrize("host", HOSTS)
def test_vectors_in_the_browser(server, browser, host):
    """Each crypto backend of the client against crypto/vectors.json, in the context it serves:
    WebCrypto on 127.0.0.1, the noble bundle (loaded as the bootstrap loads it) on plain HTTP to a LAN name."""
    vectors = json.loads((ROOT / "crypto" / "vectors.json").read_text())
    script = (ROOT / "htagweb" / "js" / "parano.js").read_text()
    bundle = fallback_bundle()
    assert bundle is not None, "the noble bundle is not built: pip install -e . with Node.js and npm"
    srv = server(app_source("x"))
    name, backend = HOSTS[host]
    page = browser.new_page()
    try:
        page.goto(f"http://{name}:{srv.port}/_htagweb/identity")  # any page of the server
        assert page.evaluate("window.crypto.subtle === undefined") == (backend == "noble")
        config = {"test": True, "fallback": bundle.config}
        page.add_script_tag(content=f"window.HTAGWEB_PARANO = {json.dumps(config)};\n" + script)
        failures = page.evaluate(
            """async (V) => {
            const B = await window.htagwebParano.ready, I = window.htagwebParano.internals;
            const h = (s) => Uint8Array.from(s.match(/../g) || [], (x) => parseInt(x, 16));
            const hex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
            const KX = V.key_exchange, failures = [B.name];
            const check = (name, got, want) => { if (got !== want) failures.push(name + ": " + got + " != " + want); };
            const th = await I.transcriptHash(h(KX.client_hello), h(KX.server_pub), KX.expires);
            check("transcript hash", hex(th), KX.transcript_hash);
            const spki = h(V.identity.public_spki), signature = h(KX.signature);
            check("signature", await I.verifySignature(spki, signature, th), true);
            // (r, n - s) is the same signature: a verifier that wants "low s" would refuse half the servers' signatures
            const n = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;
            const other = h((n - BigInt("0x" + hex(signature.slice(32)))).toString(16).padStart(64, "0"));
            check("signature with the other s", await I.verifySignature(spki, I.concat(signature.slice(0, 32), other), th), true);
            const tampered = h(KX.signature); tampered[5] ^= 1;
            check("tampered signature", await I.verifySignature(spki, tampered, th), false);
            const pkcs8 = h(KX.client_private_pkcs8);  // the noble backend takes the scalar, at 36 in this PKCS#8
            const secret = B.name === "webcrypto"
                ? await crypto.subtle.importKey("pkcs8", pkcs8, {name: "ECDH", namedCurve: "P-256"}, false, ["deriveBits"])
                : pkcs8.slice(36, 68);
            const z = await B.ecdh(secret, h(KX.server_pub));
            check("shared secret", hex(z), KX.shared_secret);
            const infinity = new Uint8Array(65); infinity[0] = 4;
            try { await B.ecdh(secret, infinity); failures.push("the point at infinity was accepted"); } catch (e) {}
            const keys = await I.sessionKeys(z, th);
            check("k_c2s", hex(keys.c2sRaw), KX.k_c2s);
            check("k_s2c", hex(keys.s2cRaw), KX.k_s2c);
            for (const ch of V.channels) {
                const id = h(ch.channel_id);
                const kc = await I.clientKey(keys.c2s, id, ch.kind, true);
                const ks = await I.serverKey(keys.s2c, id, h(ch.server_nonce), ch.kind, true);
                check(ch.kind + " kc", hex(await B.exportAes(kc)), ch.kc);
                check(ch.kind + " ks", hex(await B.exportAes(ks)), ch.ks);
                for (const item of ch.c2s) {
                    const box = await I.sealBox(kc, ch.kind, new TextEncoder().encode(">"), id, item.counter, h(item.plaintext));
                    check(ch.kind + " c2s box " + item.counter, hex(box), item.box);
                }
                for (const item of ch.s2c) {
                    const plain = await I.openBox(ks, ch.kind, new TextEncoder().encode("<"), id, item.counter, h(item.box));
                    check(ch.kind + " s2c box " + item.counter, hex(plain), item.plaintext);
                }
                try {
                    const bad = h(ch.s2c[0].box); bad[bad.length - 1] ^= 1;
                    await I.openBox(ks, ch.kind, new TextEncoder().encode("<"), id, 0, bad);
                    failures.push(ch.kind + ": a tampered box opened");
                } catch (e) { check(ch.kind + " tampered box", e.code, "integrity"); }
            }
            return failures;
        }""",
            vectors,
        )
    finally:
        page.close()
    assert failures == [backend]


def test_kiosk_runs_the_pinned_server_and_refuses_an_impostor(server, relay, tmp_path):
    real = server(app_source("the-real-server"))
    impostor = server(app_source("the-impostor"))
    wire = relay(real.port)
    fingerprint = real.wait_log(r"identity fingerprint (SHA256:\S+)").group(1)
    kiosk = tmp_path / "kiosk.html"
    url = f"http://127.0.0.1:{wire.port}/"
    wrong = subprocess.run([sys.executable, "-m", "htagweb", "kiosk", url, "--out", str(kiosk), "--fingerprint", "SHA256:wrong"],
                           capture_output=True, text=True)  # fmt: skip
    assert wrong.returncode == 1 and "refusing" in wrong.stderr and not kiosk.exists()
    made = subprocess.run([sys.executable, "-m", "htagweb", "kiosk", url, "--out", str(kiosk), "--fingerprint", fingerprint],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert fingerprint in made.stdout
    with chromium() as browser:
        page = browser.new_context().new_page()
        page.goto(kiosk.as_uri())
        expect(page.locator("#marker")).to_have_text("the-real-server", timeout=15000)
        page.click("#inc")
        expect(page.locator("#count")).to_have_text("Count: 1")
        wire.target_port = impostor.port  # someone puts another server at that address
        page = browser.new_context().new_page()
        page.goto(kiosk.as_uri())
        expect(page.locator("#htagweb-parano-failure")).to_contain_text("could not prove its identity", timeout=15000)
        assert "the-impostor" not in page.content()


@pytest.mark.parametrize("host", HOSTS)
def test_a_tampered_frame_is_refused_and_the_user_told(server, browser, relay, host):
    # without WebSocket compression, whose own check would catch the flipped byte first
    srv = server(app_source("mk-tamper"), "--ws-per-message-deflate", "false")
    wire = relay(srv.port, tamper=b"GET /_htagweb/p/ws")  # flips a byte of the first click's frame
    name, backend = HOSTS[host]
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://{name}:{wire.port}/")
        expect(page.locator("#count")).to_have_text("Count: 0", timeout=15000)
        assert page.evaluate("window.htagwebParano.backend.name") == backend
        page.click("#inc")
        failure = page.locator("#htagweb-parano-failure")
        expect(failure).to_contain_text("failed its integrity check", timeout=15000)
        expect(page.locator("#count")).to_have_text("Count: 0")  # the altered click never reached the app
        with page.expect_navigation():  # the old page must be gone before the next click
            failure.locator("button").click()  # new keys and reload: the relay no longer tampers
        expect(page.locator("#count")).to_have_text("Count: 0", timeout=15000)
        page.click("#inc")
        expect(page.locator("#count")).to_have_text("Count: 1")
    finally:
        context.close()
    srv.wait_log(r"parano: refused a WebSocket message: integrity")


@pytest.mark.parametrize("jump", [-600_000, 600_000], ids=["back", "ahead"])
def test_a_page_whose_clock_jumped_re_keys_and_its_click_counts(server, browser, jump):
    """An Open stamped with a clock that jumped further than OPEN_WINDOW since the key exchange
    is refused, sealed `expired`, before anything ran: the page re-keys and sends it again."""
    srv = server(app_source("mk-clock", "WebServer"))
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(srv.url + "/")
        expect(page.locator("#count")).to_have_text("Count: 0", timeout=15000)
        page.click("#inc")
        expect(page.locator("#count")).to_have_text("Count: 1")
        page.evaluate("(jump) => { const now = Date.now; Date.now = () => now() + jump; }", jump)
        page.click("#inc")
        expect(page.locator("#count")).to_have_text("Count: 2")
        assert page.locator("#htagweb-parano-failure").count() == 0
    finally:
        context.close()
    srv.wait_log(r"parano: refused an HTTP channel: expired: this message was sealed too long ago")
    assert srv.log.count('"POST /_htagweb/kx HTTP/1.1" 200') == 2


KIOSK_APPS = {
    "counter.py": """
from htag import State, Tag


class App(Tag.App):
    def init(self):
        self.n = State(0)
        Tag.a("home", _href="/")
        Tag.p(lambda: f"count {self.n.value}", _id="count")
        Tag.button("+1", _id="inc", _onclick=self.inc)

    def inc(self, event):
        self.n.value += 1
""",
    "sub/hello.py": "from htag import Tag\nclass Hello(Tag.App):\n    def init(self):\n        Tag.p('hello from sub', _id='hello')\n",
}


def test_kiosk_holds_a_whole_app_its_links_stay_in_the_kiosk(server, tmp_path):
    srv = server("", files=KIOSK_APPS, command=[".", "--parano"])  # the dev server: an index page of links
    kiosk = tmp_path / "kiosk.html"
    subprocess.run([sys.executable, "-m", "htagweb", "kiosk", srv.url + "/", "--out", str(kiosk)], capture_output=True, check=True)
    with chromium() as browser:
        page = browser.new_context().new_page()
        page.goto(kiosk.as_uri())
        expect(page.locator("header h1")).to_have_text("htag apps in /", timeout=15000)
        page.click("a:text('counter')")
        expect(page.locator("#count")).to_have_text("count 0", timeout=15000)
        assert page.url.startswith(kiosk.as_uri())
        page.click("#inc")
        expect(page.locator("#count")).to_have_text("count 1")
        page.click("a:text('home')")  # an app's own link back to the index
        expect(page.locator("header h1")).to_have_text("htag apps in /", timeout=15000)
        page.click("a:text('sub')")
        expect(page.locator("header h1")).to_have_text("htag apps in /sub", timeout=15000)
        page.click("a:text('hello')")
        expect(page.locator("#hello")).to_have_text("hello from sub", timeout=15000)
        page.go_back()  # the kiosk's history is the app's
        expect(page.locator("header h1")).to_have_text("htag apps in /sub", timeout=15000)
        assert page.url.startswith(kiosk.as_uri())
        page.go_back()
        page.go_back()
        expect(page.locator("#count")).to_have_text("count 1", timeout=15000)  # the same session all along
        page.goto(kiosk.as_uri() + "?htagweb-path=/sub/hello")  # a page of the app, opened directly
        expect(page.locator("#hello")).to_have_text("hello from sub", timeout=15000)
        # a path naming another server is not followed: the kiosk shows its pinned server's home
        page.goto(kiosk.as_uri() + f"?htagweb-path=//localhost:{srv.port}/counter")
        expect(page.locator("header h1")).to_have_text("htag apps in /", timeout=15000)
