"""Parano mode's ASGI layer: key exchange, then channels decrypted here and
handed inward as plain exchanges (``crypto/PROTOCOL.md``).

It sits in front of the session layer and the routes: what is behind it, and the
user processes above all, see plain htag messages and need no change. A message
that fails any check is answered with the protocol's error and goes no further.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from itsdangerous import Signer
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .cipher import Channel, ClientHello, IdentityKey, OpenMessage, ParanoError, Ticket, TicketSealer, data_box, key_exchange
from .sessions import SCOPE_PARANO, cookie_session_id
from .stores import SessionStore

logger = logging.getLogger("htagweb")

PREFIX = "/_htagweb/"
MAX_HELLO = 512
MAX_MESSAGE = 1024 * 1024
CORS = {"Access-Control-Allow-Origin": "*"}  # answers are sealed for the requester's keys: nothing to hide from other origins
_DROPPED_INNER = {"cookie", "host", "content-length", "connection", "upgrade", "transfer-encoding"}
_KEPT_OUTER = {b"cookie", b"host", b"user-agent", b"accept-language"}


def _error(exc: ParanoError) -> Response:
    return JSONResponse({"error": exc.code, "reason": exc.reason}, status_code=exc.http_status, headers=CORS)


class ParanoMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        identity: IdentityKey,
        sealer: TicketSealer,
        store: SessionStore,
        signer: Signer,
        ticket_lifetime: float,
        max_body_size: int,
        on_rejection: Callable[[], Awaitable[None]],
    ) -> None:
        self.app = app
        self.identity = identity
        self.sealer = sealer
        self.store = store
        self.signer = signer
        self.ticket_lifetime = ticket_lifetime
        self.on_rejection = on_rejection
        self.max_message = max(max_body_size, 4096) + 1024
        self.routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("http", "/_htagweb/kx"): self.key_exchange,
            ("http", "/_htagweb/identity"): self.public_identity,
            ("http", "/_htagweb/p/http"): self.http_channel,
            ("http", "/_htagweb/p/sse"): self.sse_channel,
            ("websocket", "/_htagweb/p/ws"): self.ws_channel,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.routes.get((scope["type"], scope["path"])) if scope["type"] in ("http", "websocket") else None
        if handler is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http" and scope["method"] == "OPTIONS":  # CORS preflight of a kiosk page
            headers = {**CORS, "Access-Control-Allow-Methods": "GET, POST", "Access-Control-Allow-Headers": "content-type"}
            await Response(status_code=204, headers=headers)(scope, receive, send)
        else:
            await handler(scope, receive, send)

    async def _refused(self, what: str, exc: ParanoError) -> None:
        logger.warning("parano: refused %s: %s", what, exc)
        await self.on_rejection()

    # --- key exchange (§2) ----------------------------------------------------

    async def key_exchange(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            hello = ClientHello.parse(await _read_body(receive, MAX_HELLO))
        except ParanoError as exc:
            await self._refused("a key exchange", exc)
            await _error(exc)(scope, receive, send)
            return
        sid = cookie_session_id(self.signer, HTTPConnection(scope)) or secrets.token_urlsafe(24)
        server_hello, _ = key_exchange(hello, self.identity, self.sealer, sid, self.ticket_lifetime)
        headers = {**CORS, "Cache-Control": "no-store"}
        await Response(server_hello, media_type="application/octet-stream", headers=headers)(scope, receive, send)

    async def public_identity(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {"public_key": base64.b64encode(self.identity.spki).decode(), "fingerprint": self.identity.fingerprint}
        await JSONResponse(body, headers=CORS)(scope, receive, send)

    # --- channels (§4) --------------------------------------------------------

    async def _open(self, scope: Scope, message: bytes, kind: bytes) -> tuple[Channel, Ticket, dict[str, Any], bytes]:
        """Check an open message from end to end; return the channel and the inner request."""
        opening = OpenMessage.parse(message)
        if opening.kind != kind:
            raise ParanoError("malformed", "channel kind does not match the endpoint")
        ticket = self.sealer.open(opening.ticket)
        cookie_sid = cookie_session_id(self.signer, HTTPConnection(scope))
        if cookie_sid is not None and cookie_sid != ticket.sid:
            raise ParanoError("session", "this ticket belongs to another session")
        channel = Channel(ticket, kind, opening.channel_id)
        plaintext = channel.open(opening.box)
        if not await self.store.claim(ticket.sid, (ticket.kx_id + opening.channel_id).hex(), ticket.expires):
            raise ParanoError("replay", "channel already used")
        head_bytes, _, body = plaintext.partition(b"\n")
        try:
            head = json.loads(head_bytes)
            if not (isinstance(head.get("path"), str) and head["path"].startswith("/") and isinstance(head.get("headers", []), list)):
                raise ValueError
        except ValueError:
            raise ParanoError("malformed", "bad request head") from None
        return channel, ticket, head, body

    def _inner_scope(self, scope: Scope, ticket: Ticket, head: dict[str, Any], body: bytes) -> Scope:
        path, _, query = head["path"].partition("?")
        headers = [(k, v) for k, v in scope["headers"] if k in _KEPT_OUTER]
        for name, value in head.get("headers", []):
            if str(name).lower() not in _DROPPED_INNER:
                headers.append((str(name).lower().encode("latin-1"), str(value).encode("latin-1")))
        if scope["type"] == "http":
            headers.append((b"content-length", str(len(body)).encode()))
        inner = {**scope, "path": path, "raw_path": path.encode(), "query_string": query.encode(), "headers": headers}
        if scope["type"] == "http":
            inner["method"] = str(head.get("method", "GET")).upper()
        inner[SCOPE_PARANO] = {"sid": ticket.sid, "kx_id": ticket.kx_id.hex()}
        return inner

    async def http_channel(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            channel, ticket, head, body = await self._open(scope, await _read_body(receive, self.max_message), b"H")
        except ParanoError as exc:
            await self._refused("an HTTP channel", exc)
            await _error(exc)(scope, receive, send)
            return
        start: Message = {}
        chunks: list[bytes] = []
        sent_body = False

        async def inner_receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def inner_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(self._inner_scope(scope, ticket, head, body), inner_receive, inner_send)
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in start.get("headers", []) if k.lower() != b"set-cookie"]
        response_head = json.dumps({"status": start.get("status", 500), "headers": headers}).encode()
        sealed = channel.seal(response_head + b"\n" + b"".join(chunks))
        await Response(sealed, media_type="application/octet-stream", headers={**CORS, "Cache-Control": "no-store"})(scope, receive, send)

    async def sse_channel(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = dict(HTTPConnection(scope).query_params)
        try:
            try:
                message = base64.urlsafe_b64decode(query.get("open", "") + "==")
            except ValueError:
                raise ParanoError("malformed", "open is not base64url") from None
            channel, ticket, head, _ = await self._open(scope, message, b"S")
        except ParanoError as exc:
            await self._refused("an SSE channel", exc)
            await _error(exc)(scope, receive, send)
            return
        head["method"] = "GET"
        pending = bytearray()
        started = False

        async def inner_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = {**CORS, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
                await send({"type": "http.response.start", "status": 200, "headers": _raw(headers, "text/event-stream")})
                if message["status"] != 200:  # the stream's own error, told inside the channel
                    error = json.dumps({"action": "error", "traceback": f"HTTP {message['status']}"})
                    pending.extend(f"data: {error}\n\n".encode())
                return
            pending.extend(message.get("body", b""))
            events, _, rest = bytes(pending).rpartition(b"\n\n")
            pending[:] = rest
            out = b"".join(
                b"data: " + base64.b64encode(channel.seal(_sse_data(event))) + b"\n\n" for event in events.split(b"\n\n") if events
            )
            await send({"type": "http.response.body", "body": out, "more_body": message.get("more_body", False)})

        first = True

        async def inner_receive() -> Message:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"", "more_body": False}
            return await receive()

        await self.app(self._inner_scope(scope, ticket, head, b""), inner_receive, inner_send)
        if not started:
            await send({"type": "http.response.start", "status": 200, "headers": _raw(CORS, "text/event-stream")})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def ws_channel(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        first = await receive()
        try:
            if first["type"] != "websocket.receive" or not first.get("bytes"):
                raise ParanoError("malformed", "the first frame must open the channel")
            if len(first["bytes"]) > self.max_message:
                raise ParanoError("malformed", "message too large")
            channel, ticket, head, _ = await self._open(scope, first["bytes"], b"W")
        except ParanoError as exc:
            await self._refused("a WebSocket channel", exc)
            await send({"type": "websocket.close", "code": exc.ws_code, "reason": exc.reason[:120]})
            return
        state = {"connected": False, "closed": False}

        async def inner_receive() -> Message:
            if not state["connected"]:
                state["connected"] = True
                return {"type": "websocket.connect"}
            message = await receive()
            if message["type"] != "websocket.receive":
                return message
            try:
                if len(message.get("bytes") or b"") > self.max_message:
                    raise ParanoError("malformed", "message too large")
                text = channel.open(data_box(message.get("bytes") or b"")).decode()
            except (ParanoError, UnicodeDecodeError) as exc:
                error = exc if isinstance(exc, ParanoError) else ParanoError("malformed", "not UTF-8 text")
                await self._refused("a WebSocket message", error)
                await inner_send({"type": "websocket.close", "code": error.ws_code, "reason": error.reason[:120]})
                return {"type": "websocket.disconnect", "code": error.ws_code}
            return {"type": "websocket.receive", "text": text}

        async def inner_send(message: Message) -> None:
            if state["closed"] or message["type"] == "websocket.accept":
                return
            if message["type"] == "websocket.send":
                data = message["text"].encode() if message.get("text") is not None else message.get("bytes", b"")
                await send({"type": "websocket.send", "bytes": channel.seal(data)})
            elif message["type"] == "websocket.close":
                state["closed"] = True
                await send(message)
            else:  # websocket.http.response.*: the inner app refused before accepting
                state["closed"] = True
                await send({"type": "websocket.close", "code": 4403, "reason": "refused"})

        await self.app(self._inner_scope(scope, ticket, head, b""), inner_receive, inner_send)
        if not state["closed"]:
            await send({"type": "websocket.close", "code": 1000})


def _sse_data(event: bytes) -> bytes:
    """The data of one SSE event (its ``data:`` lines joined)."""
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)


def _raw(headers: dict[str, str], media_type: str) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", media_type.encode())] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]


async def _read_body(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit:
            raise ParanoError("malformed", "message too large")
        if not message.get("more_body"):
            return bytes(body)
