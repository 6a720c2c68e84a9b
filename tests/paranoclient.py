"""A protocol-level parano client (crypto/PROTOCOL.md, version 2) built on
htagweb.cipher's primitives, for tests that must craft, replay or corrupt messages."""

from __future__ import annotations

import base64
import json
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from Crypto.Hash import SHA256
from Crypto.Protocol.DH import key_agreement
from Crypto.PublicKey import ECC
from Crypto.Signature import DSS
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from helpers import TLS

from htagweb import cipher


@dataclass
class ClientChannel:
    kind: bytes
    ticket: bytes
    k_s2c: bytes
    kc: AESGCM
    channel_id: bytes = field(default_factory=lambda: os.urandom(16))
    ks: AESGCM | None = None
    sent: int = 0
    received: int = 0

    def seal(self, plaintext: bytes) -> bytes:
        box = cipher.seal_box(self.kc, self.kind, cipher.C2S, self.channel_id, self.sent, plaintext)
        self.sent += 1
        return box

    def open_message(self, plaintext: bytes) -> bytes:
        return cipher.OpenMessage(self.kind, self.channel_id, self.ticket, self.seal(plaintext)).encode()

    def data(self, plaintext: bytes) -> bytes:
        return cipher.data_message(self.seal(plaintext))

    def open(self, message: bytes) -> bytes:
        """The plaintext of the server's next message: the first is an Accept, which brings the server's key."""
        if self.ks is None:
            server_nonce, box = cipher.accept_box(message)
            self.ks = AESGCM(cipher.server_key(self.k_s2c, self.channel_id, server_nonce, self.kind))
        else:
            box = cipher.data_box(message)
        plaintext = cipher.open_box(self.ks, self.kind, cipher.S2C, self.channel_id, self.received, box)
        self.received += 1
        return plaintext


def head(method: str, path: str, headers: list[list[str]] | None = None, body: bytes = b"", **fields: Any) -> bytes:
    return json.dumps({"method": method, "path": path, "headers": headers or [], **fields}).encode() + b"\n" + body


def control(plaintext: bytes) -> dict[str, Any]:
    assert plaintext[0] == cipher.CONTROL, plaintext
    return json.loads(plaintext[1:])


def text(plaintext: bytes) -> str:
    assert plaintext[0] == cipher.TEXT, plaintext
    return plaintext[1:].decode()


class ParanoUser:
    """One browser page speaking the protocol: ticket, session keys, session credential,
    page id and event numbers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=30, verify=TLS)
        self.ticket = b""
        self.k_c2s = self.k_s2c = b""
        self.csrf = ""
        self.credential: str | None = None
        self.page_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        self.events = 0
        self.last_hello = b""
        self.kx_at = 0.0
        #: seconds added to the page's clock when it stamps an Open (a clock that jumped); None: no stamp
        self.clock_shift: float | None = 0.0

    async def __aenter__(self) -> ParanoUser:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.http.aclose()

    async def start(self, path: str = "/") -> None:
        """As a browser: the bootstrap page, then a key exchange."""
        await self.http.get(path)
        await self.key_exchange()

    async def connect(self, path: str = "/") -> str:
        """``start``, then the app's page through a channel."""
        await self.start(path)
        return await self.page(path)

    @staticmethod
    def hello(public_point: bytes, origin: str) -> bytes:
        return bytes([cipher.VERSION, cipher.HELLO]) + public_point + origin.encode()

    async def key_exchange(self) -> None:
        identity = ECC.import_key(base64.b64decode((await self.http.get("/_htagweb/identity")).json()["public_key"]))
        key = ECC.generate(curve="P-256")
        hello = self.last_hello = self.hello(key.public_key().export_key(format="SEC1", compress=False), self.url)
        answer = await self.http.post("/_htagweb/kx", content=hello)
        assert answer.status_code == 200, answer.text
        content = answer.content
        server_pub, expires, signature, self.ticket = content[2:67], content[67:75], content[75:139], content[139:]
        th = cipher.transcript_hash(hello, server_pub, struct.unpack(">Q", expires)[0])
        DSS.new(identity, "fips-186-3", encoding="binary").verify(SHA256.new(cipher.LABEL + b" signature" + th), signature)
        z = key_agreement(eph_priv=key, eph_pub=ECC.import_key(server_pub, curve_name="P-256"), kdf=lambda x: x)
        self.k_c2s, self.k_s2c = cipher.session_keys(z, th)
        self.kx_at = time.time()

    def stamp(self) -> dict[str, int]:
        """An Open's stamp (§4.2): milliseconds since the key exchange, by this page's clock."""
        if self.clock_shift is None:
            return {}
        return {"age": round((time.time() + self.clock_shift - self.kx_at) * 1000)}

    def channel(self, kind: bytes) -> ClientChannel:
        channel = ClientChannel(kind, self.ticket, self.k_s2c, AESGCM(b"\0" * 32))
        channel.kc = AESGCM(cipher.client_key(self.k_c2s, channel.channel_id, kind))
        return channel

    def head(self, method: str, path: str, headers: list[list[str]] | None = None, body: bytes = b"") -> bytes:
        """A request head as the page writes it: credential, page id, stamp, and an event number for htag's event POSTs."""
        fields: dict[str, Any] = {"page": self.page_id, **self.stamp()}
        if self.credential:
            fields["session"] = self.credential
        if method == "POST" and path.split("?")[0].endswith("/event"):
            self.events += 1
            fields["seq"] = self.events
        return head(method, path, headers, body, **fields)

    def prepare(self, method: str, path: str, headers: list[list[str]] | None = None, body: bytes = b"") -> tuple[ClientChannel, bytes]:
        """An HTTP channel's open message, to send now, later, twice or out of order."""
        channel = self.channel(b"H")
        return channel, channel.open_message(self.head(method, path, headers, body))

    def plaintext(self, channel: ClientChannel, response: httpx.Response) -> bytes:
        assert response.status_code == 200, response.text
        return channel.open(response.content)

    def answer(self, channel: ClientChannel, response: httpx.Response) -> tuple[int, bytes]:
        response_head, _, response_body = self.plaintext(channel, response).partition(b"\n")
        decoded = json.loads(response_head)
        if decoded.get("session"):
            self.credential = decoded["session"]
        return decoded["status"], response_body

    def answer_head(self, channel: ClientChannel, response: httpx.Response) -> dict[str, Any]:
        return json.loads(self.plaintext(channel, response).partition(b"\n")[0])

    @staticmethod
    def ciphertext(answer: bytes) -> bytes:
        """The AES-GCM ciphertext of a sealed HTTP answer, as the public format places it."""
        return answer[2 + cipher.NONCE_SIZE + 8 : -16]

    async def send_http(self, message: bytes) -> httpx.Response:
        return await self.http.post("/_htagweb/p/http", content=message)

    async def request(self, method: str, path: str, headers: list[list[str]] | None = None, body: bytes = b"") -> tuple[int, bytes]:
        channel, message = self.prepare(method, path, headers, body)
        return self.answer(channel, await self.send_http(message))

    async def page(self, path: str = "/") -> str:
        status, body = await self.request("GET", path)
        page = body.decode()
        if 'HTAG_CSRF = "' in page:
            self.csrf = page.split('HTAG_CSRF = "')[1].split('"')[0]
        return page

    async def reload(self, path: str = "/") -> str:
        """A new page, as after F5: a new page id whose events count from 1."""
        self.page_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        self.events = 0
        return await self.page(path)

    async def open_stream(self, path: str) -> dict[str, Any]:
        """Open an SSE channel to ``path`` (a POST read as a stream); its first, sealed, message."""
        channel = self.channel(b"S")
        message = channel.open_message(self.head("GET", path))
        async with self.http.stream("POST", "/_htagweb/p/sse", content=message) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    return control(channel.open(base64.b64decode(line[6:])))
        raise AssertionError("the stream ended without a message")

    def websocket(self) -> Any:
        return websockets.connect(self.url.replace("http://", "ws://") + "/_htagweb/p/ws")

    async def open_websocket(self, ws: Any, path: str = "/ws") -> ClientChannel:
        """Open a W channel on ``ws``; the channel, once the server accepted it."""
        channel = self.channel(b"W")
        await ws.send(channel.open_message(self.head("GET", path)))
        assert control(channel.open(await ws.recv())) == {"accepted": True}
        return channel

    def event_frame(self, channel: ClientChannel, message: bytes) -> bytes:
        """A WebSocket text message carrying the page's next event number."""
        self.events += 1
        return channel.data(cipher.text_plaintext(message, self.events))


def click_message(tag_id: str, callback_id: str = "cb") -> bytes:
    return json.dumps({"id": tag_id, "event": "click", "data": {"callback_id": callback_id}}).encode()
