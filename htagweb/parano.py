"""Parano mode's ASGI layer: key exchange, then channels decrypted here and
handed inward as plain exchanges (``crypto/PROTOCOL.md``, version 2).

It sits in front of the session layer and the routes: what is behind it, and the
user processes above all, see plain htag messages and need no change. A message
that fails a check goes no further; once the ticket has opened, the refusal
itself is sealed, so that the page can tell a real one from a forged one (§6).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from itsdangerous import BadSignature, SignatureExpired
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .cipher import (
    TEXT,
    Channel,
    ClientHello,
    IdentityKey,
    OpenMessage,
    ParanoError,
    Ticket,
    TicketSealer,
    control_plaintext,
    data_box,
    key_exchange,
    text_plaintext,
)
from .ordering import ORDER_HEADER
from .pages import fallback_bundle
from .sessions import SCOPE_PARANO, new_session_id, secret_signer
from .stores import SessionStore, StoreUnavailable

logger = logging.getLogger("htagweb")

MAX_HELLO = 512
#: an HTTP channel buffers its answer to seal it whole: past this, it is refused
MAX_ANSWER = 64 * 1024 * 1024
#: seconds a WebSocket may wait, once upgraded, for the message that opens its channel
OPEN_DEADLINE = 10.0
#: seconds between an Open's stamp and the server's clock past which it is refused (§4): a channel's
#: claim needs to outlive its stamp by this much only, not its ticket. Room for a body of 1 MiB
#: (max_body_size) sent at 3.5 kB/s: the stamp is the sealing's, the check after the body came
OPEN_WINDOW = 300.0
#: an Open's stamp is a JavaScript number: past this, it is not an integer there
MAX_STAMP = 2**53
CORS = {"Access-Control-Allow-Origin": "*"}  # answers are sealed for the requester's keys, and no cookie exists
SEALED = {**CORS, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
_DROPPED_INNER = {"cookie", "host", "content-length", "connection", "upgrade", "transfer-encoding"}
_KEPT_OUTER = {b"host", b"user-agent", b"accept-language"}
#: a refused visitor's page reports it (a plaintext beacon anyone can send): one log line per this many seconds at most
REFUSAL_LOG_INTERVAL = 60.0
#: what a refused page may say, and what it means for the administrator
REFUSALS = {
    "no-crypto": "no WebCrypto there, and the JS crypto fallback is not built",
    "fallback-failed": "no WebCrypto there, and the JS crypto fallback did not load intact",
}
ADMIN_OPTIONS = (
    "install Node.js (>= 20.19) and npm where htagweb is installed and reinstall it, to build the fallback; "
    "or serve HTTPS; or give kiosks a file from `python -m htagweb kiosk URL`"
)


class Credentials:
    """The session credential (§5): a timestamped, signed session id that travels only
    inside channels. Rotating the server secrets rotates it like the tickets."""

    #: an answer hands a fresh credential once the one presented is this old (rolling expiry)
    REFRESH = 3600

    def __init__(self, server_secrets: list[bytes], max_age: float) -> None:
        self.signer = secret_signer(server_secrets, "htagweb.parano-session")
        self.max_age = max_age

    def issue(self, sid: str) -> str:
        return self.signer.sign(sid).decode()

    def verify(self, credential: str) -> tuple[str, bool]:
        """(session id, whether to hand a fresh credential)."""
        try:
            sid, signed_at = self.signer.unsign(credential, max_age=int(self.max_age), return_timestamp=True)
        except SignatureExpired:
            raise ParanoError("session", "this session expired: reload to start a new one") from None
        except BadSignature:
            raise ParanoError("session", "this session credential is not valid here") from None
        return sid.decode(), (time.time() - signed_at.timestamp()) > self.REFRESH


class _Refused(Exception):
    """A refusal after the ticket opened: told to the client sealed, on ``channel``."""

    def __init__(self, channel: Channel, error: ParanoError) -> None:
        self.channel = channel
        self.error = error


class _Streaming(Exception):
    pass


class ParanoMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        identity: IdentityKey,
        sealer: TicketSealer,
        credentials: Credentials,
        store: SessionStore,
        ticket_lifetime: float,
        max_message: int,
        debug: bool,
        on_rejection: Callable[[], Awaitable[None]],
    ) -> None:
        self.app = app
        self.identity = identity
        self.sealer = sealer
        self.credentials = credentials
        self.store = store
        self.ticket_lifetime = ticket_lifetime
        self.debug = debug
        self.on_rejection = on_rejection
        self.max_message = max_message
        self.routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("http", "/_htagweb/kx"): self.key_exchange,
            ("http", "/_htagweb/identity"): self.public_identity,
            ("http", "/_htagweb/p/http"): self.http_channel,
            ("http", "/_htagweb/p/sse"): self.sse_channel,
            ("websocket", "/_htagweb/p/ws"): self.ws_channel,
            ("http", "/_htagweb/refused"): self.refused_visitor,
        }
        # pages where WebCrypto is missing (plain HTTP to a non-local host name) load this (PROTOCOL.md §8)
        self.bundle = fallback_bundle()
        if self.bundle:
            self.routes[("http", self.bundle.path)] = self.fallback_script
        self.refusals_unlogged = 0
        self.refusal_logged_at = -REFUSAL_LOG_INTERVAL

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.routes.get((scope["type"], scope["path"])) if scope["type"] in ("http", "websocket") else None
        if scope["type"] == "lifespan" and self.bundle is None:
            await self.app(scope, receive, _after_startup(send, self._warn_unbuilt))
        elif handler is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http" and scope["method"] == "OPTIONS":  # CORS preflight of a kiosk page
            headers = {**CORS, "Access-Control-Allow-Methods": "GET, POST", "Access-Control-Allow-Headers": "content-type"}
            await Response(status_code=204, headers=headers)(scope, receive, send)
        else:
            await handler(scope, receive, send)

    async def _refused(self, what: str, exc: ParanoError) -> None:
        logger.warning("parano: refused %s: %s", what, exc)
        if exc.code != "unavailable":  # the server's fault, not the message's
            await self.on_rejection()

    async def _claim(self, sid: str, token: str, expires: float) -> bool:
        """The store's claim (replays are refused by it); a store that fails refuses the
        message for now, and its cause stays in the log."""
        try:
            return await self.store.claim(sid, token, expires)
        except StoreUnavailable as exc:
            logger.warning("session store unavailable: %s", exc)
            raise ParanoError("unavailable", "the session store is unavailable: try again in a moment") from None

    async def _clear_error(self, what: str, exc: ParanoError, scope: Scope, receive: Receive, send: Send) -> None:
        """A refusal before any key is known: in clear, and the page will not trust it (§6)."""
        await self._refused(what, exc)
        await JSONResponse({"error": exc.code, "reason": exc.reason}, status_code=exc.http_status, headers=CORS)(scope, receive, send)

    # --- key exchange (§2) ----------------------------------------------------

    async def key_exchange(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # nothing is stored: a hello sent again gets keys only its private key's holder can use (§2)
            body = await _read_body(receive, MAX_HELLO)
            server_hello, _ = key_exchange(ClientHello.parse(body), self.identity, self.sealer, self.ticket_lifetime)
        except ParanoError as exc:
            await self._clear_error("a key exchange", exc, scope, receive, send)
            return
        await Response(server_hello, media_type="application/octet-stream", headers=SEALED)(scope, receive, send)

    async def public_identity(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {"public_key": base64.b64encode(self.identity.spki).decode(), "fingerprint": self.identity.fingerprint}
        await JSONResponse(body, headers=CORS)(scope, receive, send)

    # --- where the page has no WebCrypto (§8) -----------------------------------

    @staticmethod
    def _warn_unbuilt() -> None:
        logger.warning(
            "parano: the JS crypto fallback (htagweb/js/noble.min.js) is not built: visitors on plain HTTP to a non-local "
            "host name get the refusal page (HTTPS, localhost and kiosk files work). To serve them: %s",
            ADMIN_OPTIONS,
        )

    async def fallback_script(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.bundle is not None
        headers = {"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff", "Vary": "Accept-Encoding"}
        body = self.bundle.script
        if b"gzip" in dict(scope["headers"]).get(b"accept-encoding", b""):
            body, headers["Content-Encoding"] = self.bundle.gzipped, "gzip"
        await Response(body, media_type="text/javascript", headers=headers)(scope, receive, send)

    async def refused_visitor(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A refused page's report: a fixed word in clear, nothing secret. Told to the
        administrator, at most once per REFUSAL_LOG_INTERVAL, since anyone can send it."""
        if scope["method"] != "POST":
            await Response(status_code=405, headers={"Allow": "POST"})(scope, receive, send)
            return
        try:
            reason = (await _read_body(receive, 64)).decode("ascii", "replace")
        except ParanoError:
            reason = ""
        self.refusals_unlogged += 1
        now = time.monotonic()
        if now - self.refusal_logged_at >= REFUSAL_LOG_INTERVAL:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            logger.warning(
                "parano: refused a visitor on plain HTTP to %r: %s (%d such report(s) since the last line). To serve them: %s",
                host,
                REFUSALS.get(reason, "an unknown reason"),
                self.refusals_unlogged,
                ADMIN_OPTIONS,
            )
            self.refusal_logged_at, self.refusals_unlogged = now, 0
        await Response(status_code=204, headers=CORS)(scope, receive, send)

    # --- channels (§4) --------------------------------------------------------

    async def _open(self, scope: Scope, message: bytes, kind: bytes) -> tuple[Channel, Scope, bytes]:
        """Check an open message from end to end; the channel and the inner request.
        Raises ParanoError while the ticket is unopened, _Refused afterwards."""
        opening = OpenMessage.parse(message)
        if opening.kind != kind:
            raise ParanoError("malformed", "channel kind does not match the endpoint")
        ticket = self.sealer.open(opening.ticket)
        channel = Channel(ticket, kind, opening.channel_id)
        try:
            if ticket.expired():
                raise ParanoError("expired", "the keys of this page expired")
            head_bytes, _, body = channel.open(opening.box).partition(b"\n")
            head = _request_head(head_bytes)
            replayable_until = _sealed_at(ticket, head, self.ticket_lifetime) + OPEN_WINDOW
            if not await self._claim(ticket.kx_id.hex(), opening.channel_id.hex(), replayable_until):
                raise ParanoError("replay", "channel already used")
            inner = self._inner_scope(scope, head, body, await self._session(head))
        except ParanoError as exc:
            raise _Refused(channel, exc) from None
        return channel, inner, body

    async def _session(self, head: dict[str, Any]) -> dict[str, Any]:
        """Which session the channel's credential names (§5)."""
        credential = head.get("session")
        if credential is None:
            if str(head.get("method", "GET")).upper() != "GET":
                raise ParanoError("session", "only a GET may start a session")
            return {"sid": new_session_id(), "new": True, "issue": True}
        sid, stale = self.credentials.verify(str(credential))
        return {"sid": sid, "new": False, "issue": stale}

    def _inner_scope(self, scope: Scope, head: dict[str, Any], body: bytes, session: dict[str, Any]) -> Scope:
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
        seq = head.get("seq")
        inner[SCOPE_PARANO] = {**session, "page": head.get("page"), "seq": seq if isinstance(seq, int) else None}
        return inner

    def _new_credential(self, inner: Scope) -> str | None:
        """The credential to hand the page: a new session, a rotated one, or a stale one renewed."""
        parano, session = inner[SCOPE_PARANO], inner.get("session")
        sid = session.sid if session is not None else parano["sid"]
        return self.credentials.issue(sid) if parano["issue"] or sid != parano["sid"] else None

    async def http_channel(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            channel, inner, body = await self._open(scope, await _read_body(receive, self.max_message), b"H")
        except ParanoError as exc:
            await self._clear_error("an HTTP channel", exc, scope, receive, send)
            return
        except _Refused as refused:
            await self._refused("an HTTP channel", refused.error)
            await _sealed_response(refused.channel, _error_answer(refused.error))(scope, receive, send)
            return
        answer = await self._run_http(inner, body, receive)
        await _sealed_response(channel, answer)(scope, receive, send)

    async def _run_http(self, inner: Scope, body: bytes, receive: Receive) -> bytes:
        """Run the inner request to its end; its answer's plaintext (§4.2), errors included."""
        start: Message = {}
        chunks: list[bytes] = []
        size = 0
        sent_body = False

        async def inner_receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the request is whole: what comes now is the client leaving

        async def inner_send(message: Message) -> None:
            nonlocal size
            if message["type"] == "http.response.start":
                if dict(message.get("headers", [])).get(b"content-type", b"").startswith(b"text/event-stream"):
                    raise _Streaming
                start.update(message)
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
                if size > MAX_ANSWER:
                    raise ParanoError("malformed", f"the answer is larger than {MAX_ANSWER // 2**20} MiB")
                chunks.append(message.get("body", b""))

        try:
            await self.app(inner, inner_receive, inner_send)
        except _Streaming:
            return _error_answer(ParanoError("malformed", f"{inner['path']} streams: open it on an SSE channel"))
        except ParanoError as exc:
            return _error_answer(exc, status=502)
        except Exception:
            logger.exception("parano: %s %s failed", inner["method"], inner["path"])
            detail = traceback.format_exc() if self.debug else "Internal Server Error"
            return _answer({"status": 500, "headers": [["content-type", "text/plain; charset=utf-8"]]}, detail.encode())
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in start.get("headers", []) if k.lower() != b"set-cookie"]
        head: dict[str, Any] = {"status": start.get("status", 500), "headers": headers}
        refusal = next((v for k, v in headers if k.lower() == ORDER_HEADER), None)
        if refusal is not None:
            head["error"] = {"code": refusal, "reason": "an event of this page arrived out of order"}
        credential = self._new_credential(inner)
        if credential:
            head["session"] = credential
        return _answer(head, b"".join(chunks))

    async def sse_channel(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            channel, inner, _ = await self._open(scope, await _read_body(receive, self.max_message), b"S")
        except ParanoError as exc:
            await self._clear_error("an SSE channel", exc, scope, receive, send)
            return
        except _Refused as refused:
            await self._refused("an SSE channel", refused.error)
            stream = _EventStream(send)
            await stream.start()
            await stream.event(refused.channel.seal(_error_control(refused.error)))
            await stream.end()
            return
        stream = _EventStream(send)
        await stream.start()
        await self._run_sse(channel, inner, receive, stream)

    async def _run_sse(self, channel: Channel, inner: Scope, receive: Receive, stream: _EventStream) -> None:
        await stream.event(channel.seal(control_plaintext({"accepted": True})))
        pending = bytearray()

        async def inner_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] != 200:  # the stream's own refusal, told inside the channel
                    refusal = ParanoError("malformed", f"the stream answered HTTP {message['status']}")
                    await stream.event(channel.seal(_error_control(refusal)))
                return
            pending.extend(message.get("body", b""))
            events, _, rest = bytes(pending).rpartition(b"\n\n")
            pending[:] = rest
            for event in events.split(b"\n\n") if events else []:
                await stream.event(channel.seal(text_plaintext(_sse_data(event))))

        first = True

        async def inner_receive() -> Message:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"", "more_body": False}
            return await receive()

        try:
            await self.app(inner, inner_receive, inner_send)
        except Exception:
            logger.exception("parano: the stream %s failed", inner["path"])
            await stream.event(channel.seal(_error_control(ParanoError("malformed", "the stream failed"))))
        await stream.end()

    async def ws_channel(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        try:
            try:
                first = await asyncio.wait_for(receive(), OPEN_DEADLINE)
            except asyncio.TimeoutError:
                raise ParanoError("timeout", f"no channel open within {OPEN_DEADLINE:g}s") from None
            if first["type"] != "websocket.receive" or not first.get("bytes"):
                raise ParanoError("malformed", "the first frame must open the channel")
            if len(first["bytes"]) > self.max_message:
                raise ParanoError("malformed", "message too large")
            channel, inner, _ = await self._open(scope, first["bytes"], b"W")
        except ParanoError as exc:
            await self._refused("a WebSocket channel", exc)
            await send({"type": "websocket.close", "code": exc.ws_code})
            return
        except _Refused as refused:
            await self._refused("a WebSocket channel", refused.error)
            await send({"type": "websocket.send", "bytes": refused.channel.seal(_error_control(refused.error))})
            await send({"type": "websocket.close", "code": 1000})
            return
        await _SealedWebSocket(self, channel, inner, receive, send).run()


class _SealedWebSocket:
    """One WebSocket channel: the inner app's messages sealed out, the page's opened in."""

    def __init__(self, layer: ParanoMiddleware, channel: Channel, inner: Scope, receive: Receive, send: Send) -> None:
        self.layer = layer
        self.channel = channel
        self.inner = inner
        self.outer_receive = receive
        self.outer_send = send
        self.connected = False
        self.closed = False
        #: the browser went: nothing more is sent
        self.gone = False
        self.sid = inner[SCOPE_PARANO]["sid"]

    async def run(self) -> None:
        await self._seal(control_plaintext({"accepted": True}))
        try:
            await self.layer.app(self.inner, self.receive, self.send)
        except Exception:
            logger.exception("parano: the WebSocket %s failed", self.inner["path"])
            await self.send({"type": "websocket.close", "code": 1011, "reason": "the application failed"})
        if not self.closed:
            await self._outer({"type": "websocket.close", "code": 1000})

    async def _seal(self, plaintext: bytes) -> None:
        await self._outer({"type": "websocket.send", "bytes": self.channel.seal(plaintext)})

    async def _outer(self, message: Message) -> None:
        """To the browser; one gone (uvicorn's ClientDisconnected) is no fault: what the app
        sends until it reads the disconnect goes nowhere."""
        if self.gone:
            return
        try:
            await self.outer_send(message)
        except OSError:
            self.gone = True

    async def receive(self) -> Message:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        message = await self.outer_receive()
        if message["type"] != "websocket.receive":
            return message
        try:
            data = message.get("bytes") or b""
            if len(data) > self.layer.max_message:
                raise ParanoError("malformed", "message too large")
            plaintext = self.channel.open(data_box(data))
            if len(plaintext) < 9 or plaintext[0] != TEXT:
                raise ParanoError("malformed", "not a text message")
            seq, text = int.from_bytes(plaintext[1:9], "big"), plaintext[9:].decode()
        except (ParanoError, UnicodeDecodeError) as exc:
            error = exc if isinstance(exc, ParanoError) else ParanoError("malformed", "not UTF-8 text")
            await self.layer._refused("a WebSocket message", error)
            if not self.closed:
                self.closed = True
                await self._seal(_error_control(error))
                await self._outer({"type": "websocket.close", "code": 1000})
            return {"type": "websocket.disconnect", "code": 1000}
        return {"type": "websocket.receive", "text": text, "htagweb.seq": seq}

    async def send(self, message: Message) -> None:
        if self.closed or message["type"] == "websocket.accept":
            return
        if message["type"] == "websocket.send":
            data = message["text"].encode() if message.get("text") is not None else message.get("bytes", b"")
            await self._seal(text_plaintext(data))
            session = self.inner.get("session")
            if session is not None and session.sid != self.sid:  # rotated: the page needs the new credential
                self.sid = session.sid
                await self._seal(control_plaintext({"session": self.layer.credentials.issue(session.sid)}))
            return
        # a close, or a refusal before accepting (websocket.http.response.*): said sealed, then a plain close
        self.closed = True
        if message["type"] == "websocket.close":
            control = {"close": message.get("code", 1000), "reason": message.get("reason") or ""}
        else:
            control = {"close": 4403, "reason": "the application refused this WebSocket"}
        await self._seal(control_plaintext(control))
        await self._outer({"type": "websocket.close", "code": 1000})


class _EventStream:
    """The outer answer of an SSE channel: sealed messages as SSE events, base64."""

    def __init__(self, send: Send) -> None:
        self.send = send

    async def start(self) -> None:
        headers = [(b"content-type", b"text/event-stream")] + [
            (k.lower().encode(), v.encode()) for k, v in {**SEALED, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}.items()
        ]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def event(self, message: bytes) -> None:
        await self.send({"type": "http.response.body", "body": b"data: " + base64.b64encode(message) + b"\n\n", "more_body": True})

    async def end(self) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})


def _request_head(head_bytes: bytes) -> dict[str, Any]:
    try:
        head = json.loads(head_bytes)
        if not (
            isinstance(head, dict)
            and isinstance(head.get("path"), str)
            and head["path"].startswith("/")
            and isinstance(head.get("headers", []), list)
            and isinstance(head.get("session", ""), str)
            and isinstance(head.get("page", ""), str)
        ):
            raise ValueError
    except (ValueError, RecursionError):  # (nested deeper than the stack allows)
        raise ParanoError("malformed", "bad request head") from None
    return head


def _sealed_at(ticket: Ticket, head: dict[str, Any], ticket_lifetime: float) -> float:
    """When the client sealed an Open, by the server's clock: its key exchange, plus its stamp
    ``age``, the milliseconds since then by the client's clock (§4.2), whatever that clock's
    offset. One sealed further than OPEN_WINDOW from now is refused ``expired``: nothing runs,
    and the page re-keys and sends it again."""
    age = head.get("age")
    if type(age) is not int or abs(age) > MAX_STAMP:
        reason = "the request has no stamp: this page's script is older than the server, reload it (a kiosk file: write it again)"
        raise ParanoError("malformed", reason)
    sealed_at = ticket.expires - ticket_lifetime + age / 1000
    if abs(time.time() - sealed_at) > OPEN_WINDOW:
        raise ParanoError("expired", "this message was sealed too long ago, or the device's clock jumped")
    return sealed_at


def _answer(head: dict[str, Any], body: bytes) -> bytes:
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + body


def _error_answer(error: ParanoError, status: int | None = None) -> bytes:
    head = {
        "status": status or error.http_status,
        "headers": [["content-type", "text/plain; charset=utf-8"]],
        "error": {"code": error.code, "reason": error.reason},
    }
    return _answer(head, error.reason.encode())


def _error_control(error: ParanoError) -> bytes:
    return control_plaintext({"error": {"code": error.code, "reason": error.reason}})


def _sealed_response(channel: Channel, answer: bytes) -> Response:
    return Response(channel.seal(answer), media_type="application/octet-stream", headers=SEALED)


def _sse_data(event: bytes) -> bytes:
    """The data of one SSE event (its ``data:`` lines joined)."""
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)



def _after_startup(send: Send, then: Callable[[], None]) -> Send:
    """``send`` of the lifespan, calling ``then`` once the application has started (its logging set up)."""

    async def sending(message: Message) -> None:
        await send(message)
        if message["type"] == "lifespan.startup.complete":
            then()

    return sending


async def _read_body(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit:
            raise ParanoError("malformed", "message too large")
        if not message.get("more_body"):
            return bytes(body)

