"""The user process: one htag app instance for one session, behind a Unix socket.

Forked by the fork-server with its listening socket already bound. It serves
bridge connections (see :mod:`htagweb.bridge`) through :class:`HtagHost`,
publishes when an interaction is running (the fork-server kills it when one
lasts too long), and ends itself after ``timeout_inactivity`` or on SIGTERM,
running the app's ``on_destroy`` first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import select
import signal
import socket
import struct
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from starlette.types import Message, Receive, Scope, Send

from . import bridge
from .config import Config
from .host import HtagHost
from .rehearsal import rehearse
from .sessions import Session

logger = logging.getLogger("htagweb")

#: shared with the fork-server: (monotonic start of the oldest running interaction or 0, state)
PAGE = struct.Struct("<di")
RUNNING, EXITING = 0, 1
#: after PAGE, also for the fork-server: (monotonic time of the last exchange, whether the page went live)
ACTIVITY = struct.Struct("<di")
#: seconds after which a new user's arrival counts as over even if no answer followed its page
SETTLE_LIMIT = 1.0
#: from the first answer after the page to the arrival being over: time for the front and the browser to take it
SETTLE_DELAY = 0.01


def new_page() -> mmap.mmap:
    page = mmap.mmap(-1, PAGE.size + ACTIVITY.size)  # anonymous and shared: survives fork
    PAGE.pack_into(page, 0, 0.0, RUNNING)
    ACTIVITY.pack_into(page, PAGE.size, time.monotonic(), 0)
    return page


def activity(page: mmap.mmap) -> tuple[float, bool]:
    """(last exchange, went live) of the process publishing on ``page``."""
    last, live = ACTIVITY.unpack_from(page, PAGE.size)
    return last, bool(live)


class Watchdog:
    """Publishes to the fork-server when the oldest running interaction started."""

    def __init__(self, page: mmap.mmap) -> None:
        self.page = page
        self._started: dict[int, float] = {}
        self._next = 0
        self.state = RUNNING

    @property
    def busy(self) -> bool:
        return bool(self._started)

    @contextmanager
    def interaction(self) -> Iterator[None]:
        token, self._next = self._next, self._next + 1
        self._started[token] = time.monotonic()
        self._publish()
        try:
            yield
        finally:
            del self._started[token]
            self._publish()

    def exiting(self) -> None:
        self.state = EXITING
        self._publish()

    def active(self, now: float, live: bool) -> None:
        """An exchange now; ``live``: the page has opened a WebSocket or SSE stream, or sent an event."""
        ACTIVITY.pack_into(self.page, PAGE.size, now, live)

    def _publish(self) -> None:
        PAGE.pack_into(self.page, 0, min(self._started.values(), default=0.0), self.state)


class UserProcess:
    """Serves one session's bridge connections. A spare is built and serving before
    it knows its session: connections wait until :meth:`assign` names it."""

    def __init__(self, config: Config, watchdog: Watchdog, control: socket.socket | None = None) -> None:
        self.config = config
        self.watchdog = watchdog
        self.label = "(spare)"
        self.session = Session(self.label)
        self.host: HtagHost | None = None
        self.assigned = asyncio.Event()
        #: a page that never went live is provisional: the first to make room at max_processes
        self.live = False
        self.last_activity = time.monotonic()
        self.writers: set[asyncio.StreamWriter] = set()
        self.stopping = asyncio.Event()
        #: the line to the fork-server, open until this user's arrival is over
        self.control = control
        self._settling: asyncio.TimerHandle | None = None

    def assign(self, load: Callable[[], type], label: str) -> None:
        self.label = label
        self.session = Session(label)
        try:
            with self.watchdog.interaction():
                app_cls, load_error = load(), None
        except Exception:
            logger.exception("user process of session %s could not load its app", label)
            app_cls, load_error = None, traceback.format_exc()
        self.host = HtagHost(app_cls, self.session, self.config, self.watchdog, load_error)
        self.last_activity = time.monotonic()
        self.assigned.set()

    @property
    def last_activity(self) -> float:
        return self._last_activity

    @last_activity.setter
    def last_activity(self, now: float) -> None:
        self._last_activity = now
        self.watchdog.active(now, self.live)

    def settle_after(self, delay: float) -> None:
        """Calls :meth:`settled` in ``delay`` seconds, unless it is due sooner already."""
        if self.control is None:
            return
        loop = asyncio.get_running_loop()
        if self._settling is not None:
            if self._settling.when() <= loop.time() + delay:
                return
            self._settling.cancel()
        self._settling = loop.call_later(delay, self.settled)

    def settled(self) -> None:
        """Tells the fork-server (through ``control``) that this user's arrival is over:
        it forks the next spare then, not while this first page competes for the CPU."""
        if self.control is not None:
            try:
                self.control.send(b"1")
            except OSError:
                pass
            self.control.close()
            self.control = None

    async def serve(self, listener: socket.socket, assignment: Awaitable[None] | None = None) -> None:
        """Serve ``listener`` until the process must end. A spare's ``assignment`` (run
        once serving) waits for the fork-server to name its user; the arrival of that
        user starts then, and is over within ``SETTLE_LIMIT`` at the latest."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # both: a stray Ctrl-C still runs on_destroy
            loop.add_signal_handler(sig, self.stopping.set)
        server = await asyncio.start_unix_server(self.handle, sock=listener)
        if assignment is not None:
            await assignment
        self.settle_after(SETTLE_LIMIT)
        expiry = asyncio.create_task(self._expire_when_idle())
        await self.stopping.wait()
        self.watchdog.exiting()
        server.close()
        expiry.cancel()
        self.settled()
        if self.host is not None:
            await self.host.destroy(self.config.shutdown_grace)
        for writer in list(self.writers):
            writer.close()

    async def _expire_when_idle(self) -> None:
        timeout = self.config.timeout_inactivity
        if not timeout:
            return
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            if not self.watchdog.busy and time.monotonic() - self.last_activity >= timeout:
                logger.info("user process expired: session %s after %ss of inactivity", self.label, timeout)
                self.stopping.set()
                return

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        self.last_activity = time.monotonic()
        try:
            await self.assigned.wait()
            assert self.host is not None
            kind, body = await bridge.read_frame(reader)
            if kind != bridge.SCOPE:
                raise bridge.BridgeError("connection did not start with a scope")
            scope = bridge.decode_scope(body)
            if scope["htagweb"]["endpoint"] != "page" and not self.live:
                self.live = True
                self.last_activity = time.monotonic()
            data = scope["htagweb"].pop("session")
            self.session.merge(data["version"], data["items"])
            receive = self._receiver(reader, scope["type"])
            await self.host(scope, receive, self._sender(writer, scope))
            # the front closes first: closing with its bytes unread would reset the connection under them
            await asyncio.wait_for(reader.read(), self.config.shutdown_grace)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass
        except Exception:
            logger.exception("bridge connection failed in user process of session %s", self.label)
        finally:
            self.writers.discard(writer)
            writer.close()
            if self.host is not None and self.host.broken:
                self.stopping.set()

    def _receiver(self, reader: asyncio.StreamReader, kind: str) -> Receive:
        """The app's receive: the next frame, read when asked (no task, no queue: a
        click's frame goes straight from the socket to htag)."""
        disconnect: Message = {"type": "http.disconnect"} if kind == "http" else {"type": "websocket.disconnect", "code": 1006}

        async def receive() -> Message:
            while True:
                try:
                    frame_kind, body = await bridge.read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError, bridge.BridgeError):
                    return disconnect
                self.last_activity = time.monotonic()
                if frame_kind != bridge.SESSION_DATA:
                    return bridge.decode_inbound(frame_kind, body)
                data = json.loads(body)
                self.session.merge(data["version"], data["items"])

        return receive

    def _sender(self, writer: asyncio.StreamWriter, scope: Scope) -> Send:
        session = self.session
        # the arrival is over with the first answer after the page (WebSocket, SSE or event), or the page itself over plain HTTP
        settling = scope["htagweb"]["endpoint"] != "page" or self.config.http_only

        async def send(message: Message) -> None:
            if settling and self.control is not None and message["type"] in ("websocket.send", "http.response.body"):
                self.settle_after(SETTLE_DELAY)
            self.last_activity = time.monotonic()
            changed, deleted = session.changes()
            if changed or deleted or session.rotated:
                # saved before any byte of the answer leaves: a route the browser calls next sees it
                session.mark_synced(changed, deleted, session.version)
                changes = {"set": changed, "delete": deleted, "rotate": session.rotated}
                session.rotated = False  # the front applies it, with an id of its own choosing
                writer.write(bridge.json_frame(bridge.SESSION_CHANGES, changes))
            writer.write(bridge.encode_outbound(message))
            await writer.drain()

        return send


def new_loop() -> asyncio.AbstractEventLoop:
    try:  # the fastest loop at hand: a click's round trip crosses this loop twice
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def run_spare(
    control: socket.socket, listener: socket.socket, classes: dict[str, type], config: Config, page: mmap.mmap, rehearsed: bool
) -> None:
    """A spare user process, waiting for the fork-server to name its session and app
    (or to go away); afterwards ``control`` tells the fork-server when this user's
    arrival is over.

    The ``rehearsed`` spare rehearses a first page load and serves meanwhile. The
    others sleep, before even an event loop exists: the fewer pages a spare writes
    to, the fewer it copies (about 1.6 MB, against 5 once rehearsed)."""
    if rehearsed:
        loop = new_loop()
        try:
            loop.run_until_complete(rehearse(UserProcess(config, Watchdog(page)), lambda: bool(select.select([control], [], [], 0)[0])))
        except Exception:
            logger.warning("spare user process: the rehearsal of a first page load failed", exc_info=True)
    else:
        select.select([control], [], [])
        loop = new_loop()
    process = UserProcess(config, Watchdog(page), control)

    async def assignment() -> None:
        message = await loop.sock_recv(control, 4096)
        if not message:
            process.stopping.set()
            return
        request = json.loads(message)
        process.assign(lambda: classes[request["app"]], request["label"])

    control.setblocking(False)
    loop.run_until_complete(process.serve(listener, assignment()))


def run(listener: socket.socket, load: Callable[[], type], config: Config, page: mmap.mmap, label: str, control: socket.socket) -> None:
    """Entry point in a child forked for a user; returns when the process must end.
    ``control`` tells the fork-server when this user's arrival is over."""
    loop = new_loop()
    process = UserProcess(config, Watchdog(page), control)
    process.assign(load, label)
    loop.run_until_complete(process.serve(listener))
