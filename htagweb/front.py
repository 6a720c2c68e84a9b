"""The front's ASGI endpoint for one htag app: route an exchange to its user process.

One instance per (app, endpoint): ``page`` (the GET of the page), ``ws``,
``stream`` (SSE) and ``event`` (POST). It finds the user process of the
session, forwards the exchange over the bridge, applies the session changes the
process sends back, and turns a process that died mid-exchange into a message
the user can read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from . import bridge
from .config import Config
from .origin import OriginPolicy
from .pages import error_page, htag_error
from .pool import Connection, ProcessPool, SpawnRefused
from .runtime import Runtime
from .sessions import (
    COOKIE_NAME,
    SCOPE_NEW,
    SCOPE_PARANO,
    SECURE_COOKIE_NAME,
    Session,
    make_rotation_signer,
    move,
    new_session_id,
    rotation_script,
)
from .stores import SessionStore

logger = logging.getLogger("htagweb")

RETRY_AFTER = 30


class HtagEndpoint:
    def __init__(
        self,
        app: str,
        endpoint: str,
        runtime: Runtime,
        pool: ProcessPool,
        store: SessionStore,
        config: Config,
        bootstrap: Response | None = None,
        source: dict[str, str] | None = None,
    ) -> None:
        self.app = app
        self.endpoint = endpoint
        self.runtime = runtime
        self.pool = pool
        self.store = store
        self.config = config
        self.bootstrap = bootstrap
        self.source = source
        self.origins = OriginPolicy(config.allowed_origins, config.trust_proxy_headers)
        self.rotation_signer = make_rotation_signer(runtime.secrets)
        #: a development file app is checked for changed source at each page load
        self.recheck = endpoint == "page" and source is not None and source["kind"] == "file"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.endpoint == "page" and scope.get("method") == "HEAD":  # a probe, not a user: no session, no process
            await Response(media_type="text/html", headers={"Cache-Control": "no-store"})(scope, receive, send)
            return
        session: Session = scope["session"]
        parano = scope.get(SCOPE_PARANO)
        if self.config.parano and parano is None:  # plaintext never reaches a parano app
            if self.endpoint == "page" and self.bootstrap is not None:
                await self.bootstrap(scope, receive, send)
            else:
                await self._refuse(scope, receive, send, 403, "This server accepts only encrypted (parano) exchanges.")
            return
        if parano is None and self.endpoint in ("ws", "stream") and not self.origins.allows(scope):
            # a parano channel authenticates itself; a plain one is refused to another site's page
            await self._refuse_origin(scope, receive, send)
            return
        if self.endpoint == "page" and "n" in dict(_query(scope)) and not self.origins.allows_navigation(scope):
            logger.warning("ignored a cross-site reset (?n=) of app %s: the user's app is served as it is", self.app)
            scope = {**scope, "query_string": _without_query_name(scope, "n")}
        if self.endpoint != "page" and scope[SCOPE_NEW]:
            await self._refuse(scope, receive, send, 403, "No valid session: reload the page.")
            return
        key = self.runtime.process_key(session.sid, self.app)
        label = session.sid[:8]
        try:
            connection, spawned = await self.pool.connect(key, self.app, label, self.source, self.recheck, self.origins.client(scope))
        except SpawnRefused as exc:
            trace = exc.traceback if self.config.debug else None
            await self._refuse(scope, receive, send, exc.status, str(exc), trace)
            return
        session.used = True  # a user now: the session's cookie is sent
        if self.endpoint == "page" and not spawned:
            logger.info("user process reused: session %s, app %s", label, self.app)
        extra = {"endpoint": self.endpoint, "session": session.snapshot()}
        if parano and parano.get("page"):  # the page's events are delivered in its order (crypto/PROTOCOL.md §7)
            extra["order"] = {"page": parano["page"], "seq": parano.get("seq")}
        exchange = _Exchange(self, scope, session, key, connection)
        try:
            if scope["type"] == "websocket":
                await exchange.websocket(scope, receive, send, extra)
            else:
                await exchange.http(scope, receive, send, extra)
        finally:
            connection[1].close()

    async def _refuse_origin(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = dict(scope["headers"]).get(b"origin", b"").decode("latin-1")
        kind = "WebSocket" if scope["type"] == "websocket" else "request"
        client = scope.get("client") or ("?",)
        logger.warning("refused a cross-origin %s to %s from %s: Origin %r", kind, scope["path"], client[0], origin[:100])
        await self._refuse(scope, receive, send, 403, "Refused: this page is not allowed to connect to this application.")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, message: str, trace: str | None = None) -> None:
        if scope["type"] == "websocket":
            code = 1013 if status in (429, 503) else 4403 if status == 403 else 1011
            await send({"type": "websocket.close", "code": code, "reason": message[:120]})
            return
        response: Response
        if self.endpoint == "event":
            response = JSONResponse({"status": "error", "payloads": [htag_error(message)]}, status_code=status)
        else:
            response = error_page(status, message, trace, RETRY_AFTER if status in (429, 503) else None)
        await response(scope, receive, send)


def _query(scope: Scope) -> list[tuple[str, str]]:
    """The query as the app reads it (names decoded: ``%6E`` is ``n``)."""
    return parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


def _without_query_name(scope: Scope, name: str) -> bytes:
    return urlencode([(k, v) for k, v in _query(scope) if k != name]).encode("latin-1")


def _forwarded_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The request headers minus our session cookie: the user process has no use for it."""
    headers = []
    for name, value in scope["headers"]:
        if name == b"cookie":
            ours = (COOKIE_NAME.encode(), SECURE_COOKIE_NAME.encode())
            kept = [c for c in value.split(b";") if c.strip().partition(b"=")[0] not in ours]
            if not kept:
                continue
            value = b";".join(kept)
        headers.append((name, value))
    return headers


class _Exchange:
    """One browser exchange relayed to one user process."""

    def __init__(self, endpoint: HtagEndpoint, scope: Scope, session: Session, key: str, connection: Connection) -> None:
        self.endpoint = endpoint
        self.scope = scope
        self.store = endpoint.store
        self.session = session
        self.key = key
        self.reader, self.writer = connection
        self.known_version = session.version
        #: the browser is reading this connection as it goes (an accepted WebSocket, an SSE stream)
        self.live = False
        #: messages of ours for the browser, sent once it is live
        self.pending: list[Message] = []

    def _open(self, scope: Scope, extra: dict[str, Any], first: bytes) -> None:
        """Send the scope and the first message in one write."""
        self.writer.write(bridge.encode_scope({**scope, "headers": _forwarded_headers(scope)}, extra) + first)

    async def _apply_changes(self, body: bytes) -> None:
        data = json.loads(body)
        version = await self.store.update(self.session.sid, dict(data["set"]), list(data["delete"]))
        if version == self.known_version + 1:  # nobody else wrote meanwhile
            self.known_version = version
        if data.get("rotate"):
            await self._rotate()

    async def _rotate(self) -> None:
        """The app called ``session.rotate()``: a new id of our choosing (never the process'),
        the data and the user processes moved to it, and the new cookie for the browser: in
        this response if it has not started (the session layer adds it), else through the
        live connection, whose page fetches it with a ticket."""
        old, new = self.session.sid, new_session_id()
        self.session.sid = new
        self.known_version = self.session.version = await move(self.store, old, new)
        await self.endpoint.pool.rotate(old, new)
        self.key = self.endpoint.runtime.process_key(new, self.endpoint.app)
        logger.info("session %s rotated to %s by its app", old[:8], new[:8])
        if self.scope.get(SCOPE_PARANO):
            return  # the parano layer hands the page its new credential, inside the channel
        if self.scope["type"] == "http" and self.endpoint.endpoint != "stream":
            return  # the answer has not started: the session layer adds the cookie to it
        script = rotation_script(self.endpoint.rotation_signer, self.scope.get("root_path", ""), old, new)
        payload = json.dumps({"action": "update", "updates": {}, "js": [script]})
        if self.scope["type"] == "websocket":
            self.pending.append({"type": "websocket.send", "text": payload})
        else:
            self.pending.append({"type": "http.response.body", "body": f"data: {payload}\n\n".encode(), "more_body": True})

    async def _read(self) -> Message | None:
        """The next ASGI message from the process (or of ours, once the browser reads the
        connection live), session changes applied; None at EOF."""
        while True:
            if self.live and self.pending:
                return self.pending.pop(0)
            try:
                kind, body = await bridge.read_frame(self.reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if kind == bridge.SESSION_CHANGES:
                await self._apply_changes(body)
                continue
            message = bridge.decode_outbound(kind, body)
            if message["type"] == "websocket.accept" or (message["type"] == "http.response.start" and self.endpoint.endpoint == "stream"):
                self.live = True
            return message

    async def _death_message(self) -> tuple[int, str]:
        """Why the process is gone, as an HTTP status and words for the user."""
        try:
            reply = await self.endpoint.pool.request({"op": "status", "key": self.key})
            reason = reply.get("reason") or "unknown"
        except (OSError, ValueError):
            reason = "unknown"
        if reason == "ended":
            return 410, "This session ended (inactivity or server restart). Reload the page to start again."
        if reason.startswith("evicted"):  # said, not closed quietly as an ended session: the user did nothing wrong
            return 503, "This idle session was ended to make room for other users. Reload the page to start again."
        await self.endpoint.pool.count("bridge_errors")
        if reason.startswith(("memory limit", "open files limit")):
            return 507, f"The application went over its {reason.split(':')[0]} and was stopped. Reload the page to start again."
        if reason.startswith("interaction timeout"):
            return 504, (
                f"The application took longer than {self.endpoint.config.timeout_interaction:g}s to answer and was stopped. "
                "Reload the page to start again."
            )
        return 502, "The application stopped unexpectedly. Reload the page to start again."

    async def http(self, scope: Scope, receive: Receive, send: Send, extra: dict[str, Any]) -> None:
        body = bytearray()
        while True:  # whole body first: the body limit applies before the process sees anything
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self._open(scope, extra, bridge.frame(bridge.HTTP_BODY, b"\x00" + bytes(body)))
        relaying = asyncio.create_task(self._relay_response(scope, receive, send))
        gone = asyncio.create_task(self._client_gone(receive))
        done, _ = await asyncio.wait({relaying, gone}, return_when=asyncio.FIRST_COMPLETED)
        # a client that left ends the exchange: closing the bridge tells the process (an SSE stream stops)
        relaying.cancel()
        gone.cancel()
        if relaying in done:
            relaying.result()

    async def _relay_response(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        while True:
            message = await self._read()
            if message is None:
                await self._died(scope, receive, send, started)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                return

    @staticmethod
    async def _client_gone(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        await asyncio.sleep(0)  # a response just completed also reads as a disconnect: let the relay finish first

    async def _died(self, scope: Scope, receive: Receive, send: Send, started: bool) -> None:
        status, message = await self._death_message()
        if started:  # an SSE stream: tell htag's client in its own format, then end
            chunk = f"data: {htag_error(message)}\n\n".encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": False})
        elif self.endpoint.endpoint == "event":
            await JSONResponse({"status": "error", "payloads": [htag_error(message)]})(scope, receive, send)
        else:
            await error_page(status, message)(scope, receive, send)

    async def websocket(self, scope: Scope, receive: Receive, send: Send, extra: dict[str, Any]) -> None:
        await receive()  # websocket.connect
        self._open(scope, extra, bridge.frame(bridge.WS_CONNECT))
        first = await self._read()
        if first is None:
            await send({"type": "websocket.close", "code": 1011, "reason": (await self._death_message())[1][:120]})
            return
        await send(first)
        if first["type"] != "websocket.accept":
            return
        upstream = asyncio.create_task(self._client_to_process(receive))
        downstream = asyncio.create_task(self._process_to_client(send))
        done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        if downstream in done and downstream.result() == "died" and upstream not in done:
            status, message = await self._death_message()
            if status != 410:  # an ended session closes quietly: htag's client reconnects on the next event
                await send({"type": "websocket.send", "text": htag_error(message)})
            await send({"type": "websocket.close", "code": 1001 if status == 410 else 1000, "reason": message[:120]})
        upstream.cancel()
        downstream.cancel()

    async def _client_to_process(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.receive":
                version = await self.store.version(self.session.sid)
                if version != self.known_version:  # a route changed the session since
                    _, items = await self.store.load(self.session.sid)
                    self.writer.write(bridge.json_frame(bridge.SESSION_DATA, {"version": version, "items": items}))
                    self.known_version = version
            self.writer.write(bridge.encode_inbound(message))
            if message["type"] == "websocket.disconnect":
                return

    async def _process_to_client(self, send: Send) -> str:
        while True:
            message = await self._read()
            if message is None:
                return "died"
            await send(message)
            if message["type"] == "websocket.close":
                return "closed"
