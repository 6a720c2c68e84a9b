"""A protocol-level parano client (crypto/PROTOCOL.md) built on htagweb.cipher's
primitives, for tests that must craft, replay or corrupt messages."""

from __future__ import annotations

import base64
import json
import os
import struct
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
    kc: bytes | AESGCM
    ks: bytes | AESGCM
    channel_id: bytes = field(default_factory=lambda: os.urandom(16))
    sent: int = 0
    received: int = 0

    def seal(self, plaintext: bytes) -> bytes:
        box = cipher.seal_box(self.kc, self.kind, cipher.C2S, self.channel_id, self.sent, plaintext)
        self.sent += 1
        return box

    def open_message(self, plaintext: bytes) -> bytes:
        return (
            bytes([1, cipher.OPEN]) + self.kind + self.channel_id + struct.pack(">H", len(self.ticket)) + self.ticket + self.seal(plaintext)
        )

    def data(self, plaintext: bytes) -> bytes:
        return cipher.data_message(self.seal(plaintext))

    def open(self, message: bytes) -> bytes:
        plaintext = cipher.open_box(self.ks, self.kind, cipher.S2C, self.channel_id, self.received, cipher.data_box(message))
        self.received += 1
        return plaintext


def head(method: str, path: str, headers: list[list[str]] | None = None, body: bytes = b"") -> bytes:
    return json.dumps({"method": method, "path": path, "headers": headers or []}).encode() + b"\n" + body


class ParanoUser:
    """One browser speaking the protocol: cookie jar, ticket, session keys."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=30, verify=TLS)
        self.ticket = b""
        self.k_c2s = self.k_s2c = b""
        self.csrf = ""

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

    def prepare(self, method: str, path: str, headers: list[list[str]] | None = None, body: bytes = b"") -> tuple[ClientChannel, bytes]:
        """An HTTP channel's open message, to send now, later, twice or out of order."""
        channel = self.channel(b"H")
        return channel, channel.open_message(head(method, path, headers, body))

    def answer(self, channel: ClientChannel, response: httpx.Response) -> tuple[int, bytes]:
        assert response.status_code == 200, response.text
        response_head, _, response_body = channel.open(response.content).partition(b"\n")
        return json.loads(response_head)["status"], response_body

    def plaintext(self, channel: ClientChannel, response: httpx.Response) -> bytes:
        assert response.status_code == 200, response.text
        return channel.open(response.content)

    @staticmethod
    def hello(public_point: bytes, origin: str) -> bytes:
        return bytes([1, cipher.HELLO]) + public_point + origin.encode()

    async def open_stream(self, path: str) -> int:
        """Open an SSE channel to ``path``; the outer status."""
        channel = self.channel(b"S")
        query = base64.urlsafe_b64encode(channel.open_message(head("GET", path))).decode().rstrip("=")
        async with self.http.stream("GET", f"/_htagweb/p/sse?open={query}") as response:
            return response.status_code

    @staticmethod
    def ciphertext(answer: bytes) -> bytes:
        """The AES-GCM ciphertext of a sealed HTTP answer, as the public format places it."""
        return answer[2 + 8 : -16]

    async def key_exchange(self) -> None:
        identity = ECC.import_key(base64.b64decode((await self.http.get("/_htagweb/identity")).json()["public_key"]))
        key = ECC.generate(curve="P-256")
        hello = self.last_hello = self.hello(key.public_key().export_key(format="SEC1", compress=False), self.url)
        answer = (await self.http.post("/_htagweb/kx", content=hello)).content
        server_pub, expires, signature, self.ticket = answer[2:67], answer[67:75], answer[75:139], answer[139:]
        th = cipher.transcript_hash(hello, server_pub, struct.unpack(">Q", expires)[0])
        DSS.new(identity, "fips-186-3", encoding="binary").verify(SHA256.new(cipher.LABEL + b" signature" + th), signature)
        z = key_agreement(eph_priv=key, eph_pub=ECC.import_key(server_pub, curve_name="P-256"), kdf=lambda x: x)
        self.k_c2s, self.k_s2c = cipher.session_keys(z, th)

    def channel(self, kind: bytes) -> ClientChannel:
        channel = ClientChannel(kind, self.ticket, b"", b"")
        channel.kc = AESGCM(cipher.channel_key(self.k_c2s, channel.channel_id, kind))
        channel.ks = AESGCM(cipher.channel_key(self.k_s2c, channel.channel_id, kind))
        return channel

    async def send_http(self, message: bytes) -> httpx.Response:
        return await self.http.post("/_htagweb/p/http", content=message)

    async def request(self, method: str, path: str, headers: list[list[str]] | None = None, body: bytes = b"") -> tuple[int, bytes]:
        channel, message = self.prepare(method, path, headers, body)
        return self.answer(channel, await self.send_http(message))

    async def page(self, path: str = "/") -> str:
        status, body = await self.request("GET", path)
        text = body.decode()
        if 'HTAG_CSRF = "' in text:
            self.csrf = text.split('HTAG_CSRF = "')[1].split('"')[0]
        return text

    def websocket(self) -> Any:
        ws_url = self.url.replace("http://", "ws://") + "/_htagweb/p/ws"
        cookie = "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())
        return websockets.connect(ws_url, additional_headers={"Cookie": cookie} if cookie else {})


def click_message(tag_id: str, callback_id: str = "cb") -> bytes:
    return json.dumps({"id": tag_id, "event": "click", "data": {"callback_id": callback_id}}).encode()
