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
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from . import bridge
from .client import EndedAtStart, ForkServerClient, SpawnRefused
from .config import Config
from .ends import End
from .origin import OriginPolicy
from .pages import error_page, htag_error, htag_refusal, refuse
from .runtime import Runtime
from .sessions import (
    COOKIE_NAME,
    SCOPE_NEW,
    SCOPE_PARANO,
    SECURE_COOKIE_NAME,
    STORE_DOWN,
    Session,
    make_rotation_signer,
    move,
    new_session_id,
    rotation_script,
)
from .stores import SessionStore, StoreUnavailable

logger = logging.getLogger("htagweb")

RELOAD = "Reload the page to start again."
#: the app ran the user's action, but the session changes it made could not be written
STORE_UNSAVED = "The session store is unavailable: the changes this action made to your session were not saved. Reload the page."
#: a fork-server killed while a request waited for it, and the connection made afresh killed too
UNREACHABLE = "The server cannot reach its process manager now: try again in a moment."

#: what a user reads when the process of their session is gone, by why it is gone
DEATHS: dict[End, tuple[int, str]] = {
    End.EXPIRED: (410, f"This session ended after a time without activity. {RELOAD}"),
    End.STOPPED: (410, f"This session ended: the server was restarted. {RELOAD}"),
    End.RELOADED: (410, f"This session ended: the application's source changed. {RELOAD}"),
    End.KILLED: (410, f"This session was ended by the server's administrator. {RELOAD}"),
    End.EVICTED: (503, f"This idle session was ended to make room for other users. {RELOAD}"),
    End.LOST: (502, f"This session was lost: the server restarted its process manager. {RELOAD}"),
    End.CRASHED: (502, f"The application stopped unexpectedly. {RELOAD}"),
    End.BROKEN: (502, f"The application could not be started. {RELOAD}"),
    End.MEMORY_LIMIT: (507, f"The application went over its memory limit and was stopped. {RELOAD}"),
    End.OPEN_FILES_LIMIT: (507, f"The application went over its open files limit and was stopped. {RELOAD}"),
    End.SHUTDOWN_GRACE: (503, f"The server is restarting. {RELOAD}"),
}
#: the normal ends of a session: not counted as cut exchanges, and a WebSocket closes
#: quietly (htag's client reconnects on the next event, and gets a fresh process)
QUIET = frozenset({End.EXPIRED, End.STOPPED, End.RELOADED})


class HtagEndpoint:
    def __init__(
        self,
        app: str,
        endpoint: str,
        runtime: Runtime,
        client: ForkServerClient,
        store: SessionStore,
        config: Config,
        bootstrap: Response | None = None,
        source: dict[str, str] | None = None,
    ) -> None:
        self.app = app
        self.endpoint = endpoint
        self.runtime = runtime
        self.client = client
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
                await refuse(scope, receive, send, 403, "This server accepts only encrypted (parano) exchanges.")
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
            # a new session has no process yet: no connection to try
            connection = None if self.recheck or scope[SCOPE_NEW] else await self.client.open(key)
            if connection is None and self.endpoint != "page":
                # the page's process is gone: a fresh one would silently show another state, unless its end was
                # a normal one and the page reconnects (a fresh app's first message is its whole state); a click
                # posted over HTTP cannot run in a fresh app (its page's token is the old one's): told whatever the end
                status, message, quiet = await death_message(self.client, key, self.config)
                if not quiet or self.endpoint == "event":
                    await self._tell_gone(scope, receive, send, status, message)
                    return
            spawned = False
            if connection is None:
                connection, spawned = await self.client.connect(
                    key, self.app, label, self.source, recheck=True, client=self.origins.client(scope)
                )
        except SpawnRefused as exc:
            trace = exc.traceback if self.config.debug else None
            await self._refuse(scope, receive, send, exc.status, str(exc), trace)
            return
        except EndedAtStart as exc:
            status, message, _ = await death_words(self.client, exc.end, self.config)
            await self._refuse(scope, receive, send, status, message)
            return
        except OSError as exc:  # its death raced this request twice (ConnectionError is an OSError)
            logger.warning("the fork-server could not be reached (session %s, app %s): %s", label, self.app, exc)
            await self._refuse(scope, receive, send, 503, UNREACHABLE)
            return
        session.used = True  # a user now: the session's cookie is sent
        if self.endpoint == "page" and not spawned:
            logger.info("user process reused: session %s, app %s", label, self.app)
        extra = {"endpoint": self.endpoint, "session": session.snapshot()}
        if parano and parano.get("page"):  # the page's events are delivered in its order (crypto/PROTOCOL.md §7)
            extra["order"] = {"page": parano["page"], "seq": parano.get("seq")}
        exchange = _Exchange(self, scope, session, key, connection)
        told = _Told(send)
        try:
            if scope["type"] == "websocket":
                await exchange.websocket(scope, receive, told, extra)
            else:
                await exchange.http(scope, receive, told, extra)
        except StoreUnavailable as exc:
            unsaved = "the app's session changes were not saved: " if exchange.unsaved else ""
            logger.warning("session store unavailable (session %s, app %s): %s%s", label, self.app, unsaved, exc)
            await self._store_down(scope, receive, told, STORE_UNSAVED if unsaved else STORE_DOWN)
        finally:
            connection.close()

    async def _store_down(self, scope: Scope, receive: Receive, told: _Told, message: str) -> None:
        """The store failed mid-exchange (a click's session refresh, the app's session write):
        the user reads so in htag's overlay, or a 503, by what the browser was told already."""
        if told.ended:
            return
        if not told.started:
            await self._refuse(scope, receive, told, 503, message)
        elif scope["type"] == "websocket":
            await told({"type": "websocket.send", "text": htag_error(message)})
            await told({"type": "websocket.close", "code": 1013, "reason": message[:120]})
        else:  # a stream
            await told({"type": "http.response.body", "body": f"data: {htag_error(message)}\n\n".encode(), "more_body": False})

    async def _tell_gone(self, scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
        """Say, in htag's error overlay, that the page's process is gone."""
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": htag_error(message)})
            await send({"type": "websocket.close", "code": 1000, "reason": message[:120]})
        else:
            await self._refuse(scope, receive, send, status, message)

    async def _refuse_origin(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = dict(scope["headers"]).get(b"origin", b"").decode("latin-1")
        kind = "WebSocket" if scope["type"] == "websocket" else "request"
        client = scope.get("client") or ("?",)
        logger.warning("refused a cross-origin %s to %s from %s: Origin %r", kind, scope["path"], client[0], origin[:100])
        await refuse(scope, receive, send, 403, "Refused: this page is not allowed to connect to this application.")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, message: str, trace: str | None = None) -> None:
        """Tell the user's page why its request cannot be served: a page of ``status``, a
        refused WebSocket, or an event's answer that htag's client shows in its overlay.
        (A request no user's page sends, plaintext to a parano app or another site's page,
        gets :func:`.pages.refuse` itself: its status, never the overlay's 200.)"""
        if self.endpoint == "event" and scope["type"] == "http":
            await htag_refusal(message)(scope, receive, send)
        else:
            await refuse(scope, receive, send, status, message, trace)


async def death_message(client: ForkServerClient, key: str, config: Config) -> tuple[int, str, bool]:
    """Why the process of ``key`` is gone, as an HTTP status and words for the user,
    and whether it is a normal end (counted as a cut exchange otherwise)."""
    try:
        reply = await client.status(key)
        end = End(reply["reason"]) if reply.get("reason") else End.CRASHED
    except (OSError, ValueError, KeyError):
        end = End.LOST
    return await death_words(client, end, config)


async def death_words(client: ForkServerClient, end: End, config: Config) -> tuple[int, str, bool]:
    """``end`` as an HTTP status and words for the user, and whether it is a normal end
    (counted as a cut exchange otherwise)."""
    if end not in QUIET | {End.KILLED, End.EVICTED}:  # an eviction is said, not counted: the user did nothing wrong
        await client.count("bridge_errors")
    if end is End.INTERACTION_TIMEOUT:
        return 504, f"The application took longer than {config.timeout_interaction:g}s to answer and was stopped. {RELOAD}", False
    return *DEATHS[end], end in QUIET


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

    def __init__(self, endpoint: HtagEndpoint, scope: Scope, session: Session, key: str, link: bridge.Link) -> None:
        self.endpoint = endpoint
        self.scope = scope
        self.store = endpoint.store
        self.session = session
        self.key = key
        self.link = link
        self.known_version = session.version
        #: the store's generation when the session was last read (see SessionStore.generation)
        self.seen_generation = session.generation
        #: the browser is reading this connection as it goes (an accepted WebSocket, an SSE stream)
        self.live = False
        #: messages of ours for the browser, sent once it is live
        self.pending: list[Message] = []
        #: when the process was handed a request it has not answered yet (None: it answered)
        self.asked_at: float | None = None
        self.loop = asyncio.get_running_loop()
        #: when the oldest request unanswered is looked at (see _stall_due), and the fork-server told
        self.stall_timer: asyncio.TimerHandle | None = None
        self.stall_told: asyncio.Task[None] | None = None
        #: the app's session changes could not be written: the store failed
        self.unsaved = False

    async def _open(self, scope: Scope, extra: dict[str, Any], first: bytes) -> None:
        """Send the scope and the first message in one write."""
        self._asking()
        self.link.write(bridge.encode_scope({**scope, "headers": _forwarded_headers(scope)}, extra) + first)
        try:
            await self.link.drain()
        except ConnectionResetError:  # the process ended meanwhile: the answer read next tells why
            pass

    async def _apply_changes(self, body: bytes) -> None:
        data = json.loads(body)
        try:
            version = await self.store.update(self.session.sid, dict(data["set"]), list(data["delete"]))
        except StoreUnavailable:
            self.unsaved = True
            raise
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
        await self.endpoint.client.rotate(old, new)
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
                kind, body = await self.link.read()
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            self.asked_at = None
            if kind == bridge.SESSION_CHANGES:
                await self._apply_changes(body)
                continue
            message = bridge.decode_outbound(kind, body)
            if message["type"] == "websocket.accept" or (message["type"] == "http.response.start" and self.endpoint.endpoint == "stream"):
                self.live = True
            return message

    def _asking(self) -> None:
        """A request goes to the process. One stopped by a signal or a debugger never starts
        its handler: its slot never says busy, and the watchdog of hung
        handlers never fires. A request left unanswered for ``timeout_interaction`` is told to
        the fork-server, which ends such a process (see ``_stall_due``); its user is then told
        as for a hung handler. A timer, not a task: a click costs a float and a comparison."""
        if self.asked_at is not None:
            return
        self.asked_at = self.loop.time()
        limit = self.endpoint.config.timeout_interaction
        if self.stall_timer is None and limit:
            self.stall_timer = self.loop.call_later(limit, self._stall_due)

    def _stall_due(self) -> None:
        self.stall_timer = None
        if self.asked_at is None:
            return
        left = self.asked_at + self.endpoint.config.timeout_interaction - self.loop.time()
        if left > 0:  # answered meanwhile, asked again since
            self.stall_timer = self.loop.call_later(left, self._stall_due)
            return
        self.asked_at = None
        if self.stall_told is None or self.stall_told.done():
            self.stall_told = asyncio.create_task(self._tell_stalled())

    async def _tell_stalled(self) -> None:
        try:
            await self.endpoint.client.stalled(self.key)
        except OSError:  # the fork-server is gone: so is the process
            pass

    async def _watching_stalls(self, relay: Awaitable[Any]) -> None:
        """``relay``; then the timer and the word to the fork-server of :meth:`_asking` go."""
        try:
            await relay
        finally:
            if self.stall_timer is not None:
                self.stall_timer.cancel()
            if self.stall_told is not None:
                self.stall_told.cancel()
                await asyncio.gather(self.stall_told, return_exceptions=True)

    async def _death_message(self) -> tuple[int, str, bool]:
        return await death_message(self.endpoint.client, self.key, self.endpoint.config)

    async def http(self, scope: Scope, receive: Receive, send: Send, extra: dict[str, Any]) -> None:
        body = bytearray()
        while True:  # whole body first: the body limit applies before the process sees anything
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await self._watching_stalls(self._http_relay(scope, receive, send, extra, bytes(body)))

    async def _http_relay(self, scope: Scope, receive: Receive, send: Send, extra: dict[str, Any], body: bytes) -> None:
        await self._open(scope, extra, bridge.frame(bridge.HTTP_BODY, b"\x00" + body))
        if self.endpoint.endpoint != "stream":  # an answer, not a stream: relayed to its end
            await self._relay_response(scope, receive, send)
            return
        relaying = asyncio.create_task(self._relay_response(scope, receive, send))
        gone = asyncio.create_task(self._client_gone(receive))
        # a client that left ends the stream: closing the bridge tells the process, whose stream stops
        await _first_of(relaying, gone)

    async def _relay_response(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The process' answer to the browser. An answer's start goes out with its body, so that
        a process that dies in between is told as one that never answered (its body cannot be
        cut short: the start said its length); an SSE stream's at once, its events come later."""
        stream = self.endpoint.endpoint == "stream"
        held: Message | None = None
        stream_started = False
        while True:
            message = await self._read()
            if message is None:
                await self._died(scope, receive, send, stream_started)
                return
            if message["type"] == "http.response.start" and not stream:
                held = message
                continue
            if held is not None:
                await send(held)
                held = None
            stream_started = stream
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                return

    @staticmethod
    async def _client_gone(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        await asyncio.sleep(0)  # a response just completed also reads as a disconnect: let the relay finish first

    async def _died(self, scope: Scope, receive: Receive, send: Send, stream_started: bool) -> None:
        status, message, _ = await self._death_message()
        if stream_started:  # tell htag's client in the stream's own format, then end
            chunk = f"data: {htag_error(message)}\n\n".encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": False})
        elif self.endpoint.endpoint == "event":
            await htag_refusal(message)(scope, receive, send)
        else:
            await error_page(status, message)(scope, receive, send)

    async def websocket(self, scope: Scope, receive: Receive, send: Send, extra: dict[str, Any]) -> None:
        await self._watching_stalls(self._websocket(scope, receive, send, extra))

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, extra: dict[str, Any]) -> None:
        await receive()  # websocket.connect
        await self._open(scope, extra, bridge.frame(bridge.WS_CONNECT))
        first = await self._read()
        if first is None:  # gone before it answered: told with that end's status (a close now reads as a bare 403)
            status, message, _ = await self._death_message()
            await self.endpoint._refuse(scope, receive, send, status, message)
            return
        await send(first)
        if first["type"] != "websocket.accept":
            return
        upstream = asyncio.create_task(self._client_to_process(receive))
        downstream = asyncio.create_task(self._process_to_client(send))
        done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        if downstream in done and not downstream.exception() and downstream.result() == "died" and upstream not in done:
            _, message, quiet = await self._death_message()
            if not quiet:
                await send({"type": "websocket.send", "text": htag_error(message)})
            await send({"type": "websocket.close", "code": 1001 if quiet else 1000, "reason": message[:120]})
        await _first_of(downstream, upstream)

    async def _client_to_process(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.receive":
                await self._refresh_session()
                self._asking()
            self.link.write(bridge.encode_inbound(message))
            if message["type"] == "websocket.disconnect":
                return
            await self.link.drain()  # a process that does not read holds the client back

    async def _refresh_session(self) -> None:
        """Before a click reaches the process: the session data, if a route changed it since.
        Asks the store only when its generation says something may have changed."""
        generation = self.store.generation()
        if generation is not None and generation == self.seen_generation:
            return
        version = await self.store.version(self.session.sid)
        if version != self.known_version:  # a route changed the session since
            _, items = await self.store.load(self.session.sid)
            self.link.write(bridge.json_frame(bridge.SESSION_DATA, {"version": version, "items": items}))
            self.known_version = version
        self.seen_generation = generation

    async def _process_to_client(self, send: Send) -> str:
        while True:
            message = await self._read()
            if message is None:
                return "died"
            await send(message)
            if message["type"] == "websocket.close":
                return "closed"


class _Told:
    """``send``, remembering whether the browser's answer started and ended."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = self.ended = False

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("http.response.start", "websocket.accept"):
            self.started = True
        elif kind == "websocket.close" or (kind == "http.response.body" and not message.get("more_body")):
            self.started = self.ended = True
        await self.send(message)


async def _first_of(main: asyncio.Task[Any], other: asyncio.Task[Any]) -> None:
    """Wait for either task; cancel and await both. ``main``'s failure is raised,
    ``other``'s logged (a store's failure raised, for the user to read): no task is left
    running, no exception lost."""
    await asyncio.wait({main, other}, return_when=asyncio.FIRST_COMPLETED)
    main_done = main.done()
    for task in (main, other):
        task.cancel()
    results = await asyncio.gather(main, other, return_exceptions=True)
    if isinstance(results[1], StoreUnavailable):  # for the user to read
        raise results[1]
    if isinstance(results[1], ConnectionError | asyncio.IncompleteReadError):  # the other end went first
        logger.debug("bridge relay ended: %r", results[1])
    elif isinstance(results[1], Exception):
        logger.warning("bridge relay failed", exc_info=results[1])
    if main_done and isinstance(results[0], Exception):
        raise results[0]
