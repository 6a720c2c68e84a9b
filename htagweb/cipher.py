"""Parano mode cryptography: key exchange, tickets, channel boxes.

Exactly what ``crypto/PROTOCOL.md`` specifies; section numbers refer to it. The
key exchange and tickets use pycryptodome. The per-message AES-256-GCM of the
channels uses ``cryptography`` (OpenSSL): measured here, sealing a 300-byte
message costs 39 µs with pycryptodome (a cipher object per message) and 0.6 µs
with ``cryptography``, the difference between a parano click costing twice a
plain one and costing a few percent more (bench/RESULTS.md). Randomness is injectable only so that
``crypto/vectors.json`` can be reproduced.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.DH import key_agreement
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC
from Crypto.Signature import DSS
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

LABEL = b"htagweb-parano/2"
VERSION = 0x02
HELLO, SERVER_HELLO, OPEN, DATA, ACCEPT = 0x01, 0x02, 0x10, 0x11, 0x12
KINDS = (b"H", b"W", b"S")
C2S, S2C = b">", b"<"
#: the type byte of a WebSocket or SSE message's plaintext (§4.2)
TEXT, CONTROL = 0x00, 0x01
POINT_SIZE = 65
MAX_ORIGIN = 256
NONCE_SIZE = 16


class ParanoError(Exception):
    """A message refused by the protocol (§6); ``code`` says which check failed.

    Refused before the ticket opens, it is answered in clear (``http_status``,
    ``ws_code``); afterwards the layer seals it for the client."""

    HTTP_STATUS = {
        "malformed": 400,
        "ticket": 401,
        "expired": 401,
        "session": 403,
        "replay": 409,
        "order": 409,
        "integrity": 422,
        "unavailable": 503,
    }
    WS_CODE = {"malformed": 4400, "ticket": 4401, "timeout": 4408}

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason

    @property
    def http_status(self) -> int:
        return self.HTTP_STATUS.get(self.code, 400)

    @property
    def ws_code(self) -> int:
        return self.WS_CODE.get(self.code, 4400)


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(ikm, 32, salt, SHA256, context=info)


# --- identity key (§1) -------------------------------------------------------


def fingerprint(spki: bytes) -> str:
    """``SHA256:`` and the unpadded base64url SHA-256 of a SubjectPublicKeyInfo."""
    return "SHA256:" + base64.urlsafe_b64encode(hashlib.sha256(spki).digest()).rstrip(b"=").decode()


class IdentityKey:
    def __init__(self, key: ECC.EccKey) -> None:
        if key.curve != "NIST P-256" or not key.has_private():
            raise ValueError("the parano identity key must be a private ECDSA P-256 key")
        self.key = key
        self.spki = key.public_key().export_key(format="DER")
        self.fingerprint = fingerprint(self.spki)

    @classmethod
    def load_or_create(cls, path: Path) -> IdentityKey:
        if not path.exists():
            pem = ECC.generate(curve="P-256").export_key(format="PEM")
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(pem)
            try:
                os.link(tmp, path)  # concurrent workers: the first link wins, all read it
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return cls(ECC.import_key(path.read_text()))

    def sign(self, th: bytes) -> bytes:
        return DSS.new(self.key, "deterministic-rfc6979", encoding="binary").sign(SHA256.new(LABEL + b" signature" + th))


# --- tickets (§3) ------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    expires: int
    kx_id: bytes
    k_c2s: bytes
    k_s2c: bytes

    def expired(self, now: float | None = None) -> bool:
        return self.expires <= (time.time() if now is None else now)


TICKET_PLAINTEXT = struct.Struct(">BQ16s32s32s")


class TicketSealer:
    def __init__(self, secrets: list[bytes]) -> None:
        if not secrets:
            raise ValueError("at least one secret is needed")
        self.keys = [hkdf(secret, b"", LABEL + b" ticket") for secret in secrets]
        self.by_id = {hashlib.sha256(k).digest()[:4]: k for k in reversed(self.keys)}

    def seal(self, ticket: Ticket, nonce: bytes | None = None) -> bytes:
        key = self.keys[0]
        key_id = hashlib.sha256(key).digest()[:4]
        plaintext = TICKET_PLAINTEXT.pack(VERSION, ticket.expires, ticket.kx_id, ticket.k_c2s, ticket.k_s2c)
        nonce = nonce or os.urandom(12)
        cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
        cipher.update(LABEL + b" ticket" + key_id)
        ciphertext, tag = cipher.encrypt_and_digest(plaintext)
        return key_id + nonce + ciphertext + tag

    def open(self, sealed: bytes) -> Ticket:
        """The ticket's keys, expired or not: an expired ticket is refused sealed (§6)."""
        key = self.by_id.get(sealed[:4])
        if key is None or len(sealed) != 4 + 12 + TICKET_PLAINTEXT.size + 16:
            raise ParanoError("ticket", "unknown or truncated ticket")
        cipher = AES.new(key, AES.MODE_GCM, nonce=sealed[4:16])
        cipher.update(LABEL + b" ticket" + sealed[:4])
        try:
            version, expires, kx_id, k_c2s, k_s2c = TICKET_PLAINTEXT.unpack(cipher.decrypt_and_verify(sealed[16:-16], sealed[-16:]))
        except ValueError:
            raise ParanoError("ticket", "ticket does not open") from None
        if version != VERSION:
            raise ParanoError("ticket", "ticket of another version")
        return Ticket(expires, kx_id, k_c2s, k_s2c)


# --- key exchange (§2) -------------------------------------------------------


@dataclass(frozen=True)
class ClientHello:
    raw: bytes
    client_pub: ECC.EccKey
    origin: str

    @classmethod
    def parse(cls, data: bytes) -> ClientHello:
        if len(data) < 2 + POINT_SIZE + 1 or data[0] != VERSION or data[1] != HELLO:
            raise ParanoError("malformed", "not a version 2 client hello")
        if len(data) > 2 + POINT_SIZE + MAX_ORIGIN:
            raise ParanoError("malformed", "origin too long")
        point = data[2 : 2 + POINT_SIZE]
        if point[0] != 0x04 or not any(point[1:]):  # uncompressed only; never the point at infinity
            raise ParanoError("malformed", "client key is not a P-256 point")
        try:
            client_pub = ECC.import_key(point, curve_name="P-256")
            if client_pub.pointQ.is_point_at_infinity():
                raise ValueError
            origin = data[2 + POINT_SIZE :].decode()
        except (ValueError, UnicodeDecodeError):
            raise ParanoError("malformed", "client key is not a P-256 point") from None
        return cls(data, client_pub, origin)


def transcript_hash(client_hello: bytes, server_pub: bytes, expires: int) -> bytes:
    return hashlib.sha256(LABEL + client_hello + server_pub + struct.pack(">Q", expires)).digest()


def session_keys(z: bytes, th: bytes) -> tuple[bytes, bytes]:
    return hkdf(z, th, LABEL + b" c2s"), hkdf(z, th, LABEL + b" s2c")


def key_exchange(
    hello: ClientHello,
    identity: IdentityKey,
    sealer: TicketSealer,
    lifetime: float,
    *,
    now: float | None = None,
    server_key: ECC.EccKey | None = None,
    kx_id: bytes | None = None,
    ticket_nonce: bytes | None = None,
) -> tuple[bytes, Ticket]:
    """Answer a client hello: (ServerHello bytes, the ticket it carries)."""
    server_key = server_key or ECC.generate(curve="P-256")
    server_pub = server_key.public_key().export_key(format="SEC1", compress=False)
    expires = int((time.time() if now is None else now) + lifetime)
    th = transcript_hash(hello.raw, server_pub, expires)
    try:
        z = key_agreement(eph_priv=server_key, eph_pub=hello.client_pub, kdf=lambda x: x)
    except ValueError:
        raise ParanoError("malformed", "no shared secret with this client key") from None
    k_c2s, k_s2c = session_keys(z, th)
    ticket = Ticket(expires, kx_id or os.urandom(16), k_c2s, k_s2c)
    sealed = sealer.seal(ticket, ticket_nonce)
    server_hello = bytes([VERSION, SERVER_HELLO]) + server_pub + struct.pack(">Q", expires) + identity.sign(th) + sealed
    return server_hello, ticket


# --- channels (§4) -----------------------------------------------------------


def client_key(k_c2s: bytes, channel_id: bytes, kind: bytes) -> bytes:
    return hkdf(k_c2s, channel_id, LABEL + b" c2s " + kind)


def server_key(k_s2c: bytes, channel_id: bytes, server_nonce: bytes, kind: bytes) -> bytes:
    """Keyed with the server's own nonce: the server never seals twice under one (key, nonce)."""
    return hkdf(k_s2c, channel_id + server_nonce, LABEL + b" s2c " + kind)


def _aad(kind: bytes, direction: bytes, channel_id: bytes, counter: int) -> bytes:
    return LABEL + kind + direction + channel_id + struct.pack(">Q", counter)


def _aead(key: bytes | AESGCM) -> AESGCM:
    return key if isinstance(key, AESGCM) else AESGCM(key)


def seal_box(key: bytes | AESGCM, kind: bytes, direction: bytes, channel_id: bytes, counter: int, plaintext: bytes) -> bytes:
    nonce = struct.pack(">IQ", 0, counter)
    return nonce[4:] + _aead(key).encrypt(nonce, plaintext, _aad(kind, direction, channel_id, counter))


def open_box(key: bytes | AESGCM, kind: bytes, direction: bytes, channel_id: bytes, expected: int, box: bytes) -> bytes:
    if len(box) < 8 + 16:
        raise ParanoError("malformed", "box too short")
    (counter,) = struct.unpack_from(">Q", box)
    if counter != expected:
        raise ParanoError("integrity", f"message {counter} where {expected} was due (replayed, reordered or dropped)")
    try:
        return _aead(key).decrypt(struct.pack(">IQ", 0, counter), box[8:], _aad(kind, direction, channel_id, counter))
    except InvalidTag:
        raise ParanoError("integrity", "authentication failed") from None


@dataclass(frozen=True)
class OpenMessage:
    kind: bytes
    channel_id: bytes
    ticket: bytes
    box: bytes

    @classmethod
    def parse(cls, data: bytes) -> OpenMessage:
        if len(data) < 3 + 16 + 2 or data[0] != VERSION or data[1] != OPEN or data[2:3] not in KINDS:
            raise ParanoError("malformed", "not a version 2 channel open")
        (ticket_len,) = struct.unpack_from(">H", data, 19)
        if len(data) < 21 + ticket_len + 24:
            raise ParanoError("malformed", "truncated channel open")
        return cls(data[2:3], data[3:19], data[21 : 21 + ticket_len], data[21 + ticket_len :])

    def encode(self) -> bytes:
        return bytes([VERSION, OPEN]) + self.kind + self.channel_id + struct.pack(">H", len(self.ticket)) + self.ticket + self.box


def data_message(box: bytes) -> bytes:
    return bytes([VERSION, DATA]) + box


def accept_message(server_nonce: bytes, box: bytes) -> bytes:
    return bytes([VERSION, ACCEPT]) + server_nonce + box


def data_box(message: bytes) -> bytes:
    if len(message) < 2 or message[0] != VERSION or message[1] != DATA:
        raise ParanoError("malformed", "not a version 2 data message")
    return message[2:]


def accept_box(message: bytes) -> tuple[bytes, bytes]:
    """(server_nonce, box) of an Accept message."""
    if len(message) < 2 + NONCE_SIZE or message[0] != VERSION or message[1] != ACCEPT:
        raise ParanoError("malformed", "not a version 2 accept message")
    return message[2 : 2 + NONCE_SIZE], message[2 + NONCE_SIZE :]


def text_plaintext(text: bytes, seq: int | None = None) -> bytes:
    """A WebSocket or SSE text message; client to server with its event number (§7)."""
    return bytes([TEXT]) + (b"" if seq is None else struct.pack(">Q", seq)) + text


def control_plaintext(control: dict[str, Any]) -> bytes:
    return bytes([CONTROL]) + json.dumps(control, separators=(",", ":")).encode()


class Channel:
    """The server's end of one channel: the client's key, and its own key made
    with a nonce it draws itself, so that its first message is an Accept."""

    def __init__(self, ticket: Ticket, kind: bytes, channel_id: bytes, server_nonce: bytes | None = None) -> None:
        self.kind = kind
        self.channel_id = channel_id
        self.server_nonce = server_nonce or os.urandom(NONCE_SIZE)
        self.inbound_key = AESGCM(client_key(ticket.k_c2s, channel_id, kind))  # one key schedule per channel
        self.outbound_key = AESGCM(server_key(ticket.k_s2c, channel_id, self.server_nonce, kind))
        self.received = 0
        self.sent = 0

    def open(self, box: bytes) -> bytes:
        plaintext = open_box(self.inbound_key, self.kind, C2S, self.channel_id, self.received, box)
        self.received += 1
        return plaintext

    def seal(self, plaintext: bytes) -> bytes:
        box = seal_box(self.outbound_key, self.kind, S2C, self.channel_id, self.sent, plaintext)
        self.sent += 1
        return accept_message(self.server_nonce, box) if self.sent == 1 else data_message(box)
