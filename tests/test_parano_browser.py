"""Parano mode in a real browser (headless Debian Chromium) behind a recording relay.

What the app renders and what the user types must never cross the wire readable,
in any transport of htag's client, before or after a reload; the same test without
parano finds them, so it can fail. Also: the vectors checked by the browser's
WebCrypto, the refusal on a non-secure context, and the kiosk file refusing an
impostor server.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import subprocess
import sys
import urllib.parse

import pytest
from chromium import chromium
from conftest import ROOT
from playwright.sync_api import Browser, expect
from relay import RecordingRelay

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
    with chromium() as browser:
        yield browser


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


def use_app(browser: Browser, url: str, typed: str, reload: bool, transport_check: str) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(url)
        expect(page.locator("#count")).to_have_text("Count: 0", timeout=15000)
        page.click("#inc")
        expect(page.locator("#count")).to_have_text("Count: 1")
        page.fill("#in", typed)
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


@pytest.mark.parametrize("reload", [False, True], ids=["once", "reloaded"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_nothing_readable_on_the_wire(server, browser, relay, transport, reload):
    factory, refuse, check = TRANSPORTS[transport]
    rendered, typed = "mk" + secrets.token_hex(8), "ty" + secrets.token_hex(8)
    srv = server(app_source(rendered, factory))
    wire = relay(srv.port, refuse)
    use_app(browser, f"http://127.0.0.1:{wire.port}/", typed, reload, check)
    recorded = wire.observed()
    assert b"/_htagweb/p/" in recorded and len(recorded) > 10000  # the relay did see the exchanges
    assert not found(rendered, recorded), "the rendered marker crossed the wire readable"
    assert not found(typed, recorded), "the typed marker crossed the wire readable"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_without_parano_the_markers_are_on_the_wire(server, browser, relay, transport):
    factory, refuse, check = TRANSPORTS[transport]
    rendered, typed = "mk" + secrets.token_hex(8), "ty" + secrets.token_hex(8)
    srv = server(app_source(rendered, factory, parano=False))
    wire = relay(srv.port, tuple(r.replace(b"/_htagweb/p/ws", b"/ws") for r in refuse))
    use_app(browser, f"http://127.0.0.1:{wire.port}/", typed, False, check)
    assert found(rendered, wire.observed()) and found(typed, wire.observed())


def test_plain_http_to_another_host_name_refuses_and_sends_nothing(server, relay):
    rendered = "mk" + secrets.token_hex(8)
    srv = server(app_source(rendered))
    wire = relay(srv.port)
    with chromium("--host-resolver-rules=MAP parano.test 127.0.0.1") as browser:
        page = browser.new_page()
        page.goto(f"http://parano.test:{wire.port}/")
        expect(page.locator("h1")).to_have_text("This page cannot be opened securely here")
        assert "kiosk" in page.inner_text("body") and "HTTPS" in page.inner_text("body")
        assert page.evaluate("window.crypto.subtle === undefined")
    recorded = wire.observed()
    assert not found(rendered, recorded)
    assert b"GET /_htagweb/" not in recorded and b"POST /_htagweb/" not in recorded  # nothing was sent


def test_vectors_in_the_browser(server, browser):
    vectors = json.loads((ROOT / "crypto" / "vectors.json").read_text())
    script = (ROOT / "htagweb" / "js" / "parano.js").read_text()
    srv = server(app_source("x"))
    page = browser.new_page()
    try:
        page.goto(srv.url + "/_htagweb/identity")  # any page of a secure context (127.0.0.1)
        page.add_script_tag(content="window.HTAGWEB_PARANO = {test: true};\n" + script)
        failures = page.evaluate(
            """async (V) => {
            const I = window.htagwebParano.internals, subtle = crypto.subtle;
            const h = (s) => Uint8Array.from(s.match(/../g) || [], (x) => parseInt(x, 16));
            const hex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
            const KX = V.key_exchange, failures = [];
            const check = (name, got, want) => { if (got !== want) failures.push(name + ": " + got + " != " + want); };
            const th = await I.transcriptHash(h(KX.client_hello), h(KX.server_pub), KX.expires);
            check("transcript hash", hex(th), KX.transcript_hash);
            check("signature", await I.verifySignature(h(V.identity.public_spki), h(KX.signature), th), true);
            const tampered = h(KX.signature); tampered[5] ^= 1;
            check("tampered signature", await I.verifySignature(h(V.identity.public_spki), tampered, th), false);
            const P256 = {name: "ECDH", namedCurve: "P-256"};
            const priv = await subtle.importKey("pkcs8", h(KX.client_private_pkcs8), P256, false, ["deriveBits"]);
            const peer = await subtle.importKey("raw", h(KX.server_pub), P256, false, []);
            const z = new Uint8Array(await subtle.deriveBits({name: "ECDH", public: peer}, priv, 256));
            check("shared secret", hex(z), KX.shared_secret);
            const keys = await I.sessionKeys(z, th);
            check("k_c2s", hex(keys.c2sRaw), KX.k_c2s);
            check("k_s2c", hex(keys.s2cRaw), KX.k_s2c);
            for (const ch of V.channels) {
                const id = h(ch.channel_id);
                const kc = await I.clientKey(keys.c2s, id, ch.kind, true);
                const ks = await I.serverKey(keys.s2c, id, h(ch.server_nonce), ch.kind, true);
                check(ch.kind + " kc", hex(await subtle.exportKey("raw", kc)), ch.kc);
                check(ch.kind + " ks", hex(await subtle.exportKey("raw", ks)), ch.ks);
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
    assert failures == []


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


def test_a_tampered_frame_is_refused_and_the_user_told(server, browser, relay):
    # without WebSocket compression, whose own check would catch the flipped byte first
    srv = server(app_source("mk-tamper"), "--ws-per-message-deflate", "false")
    wire = relay(srv.port, tamper=b"GET /_htagweb/p/ws")  # flips a byte of the first click's frame
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{wire.port}/")
        expect(page.locator("#count")).to_have_text("Count: 0", timeout=15000)
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
