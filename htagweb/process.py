"""The user process: one htag app instance for one session, behind a Unix socket.

Forked by the fork-server's zygote with its listening socket already bound. It serves
bridge connections (see :mod:`htagweb.bridge`) through :class:`HtagHost`,
publishes in its slot (:mod:`htagweb.slot`) when an interaction is running
(the fork-server kills it when one lasts too long), and ends itself after
``timeout_inactivity`` or on SIGTERM, running the app's ``on_destroy`` first. It
exits with a code that says why (:class:`htagweb.ends.Exit`).

SIGTERM also comes when its zygote dies (``PR_SET_PDEATHSIG``), which dies with
the fork-server: then no one is left to kill it if on_destroy or a handler hangs,
so a SIGTERM arms an alarm that ends the process ``shutdown_grace`` seconds later
whatever it is doing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import os
import signal
import socket
import time
import traceback
from collections.abc import Awaitable, Callable

from setproctitle import setproctitle
from starlette.types import Message, Receive, Scope, Send

from . import bridge
from .config import Config
from .ends import Exit
from .host import HtagHost
from .merging import merge_memory
from .sessions import Session
from .slot import ARRIVING, SETTLE_DELAY, SETTLE_LIMIT, Watchdog

logger = logging.getLogger("htagweb")

#: seconds between two looks at a process' inactivity at most, when its time is up (a handler runs on)
EXPIRY_CHECK = 1.0


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
        self.links: set[bridge.Link] = set()
        self.stopping = asyncio.Event()
        #: why it ends, once it must
        self.exit = Exit.STOPPED
        #: the line to the fork-server, open until this user's arrival is over
        self.control = control
        self._settling: asyncio.TimerHandle | None = None
        self._parent = os.getppid()

    @property
    def last_activity(self) -> float:
        return self.watchdog.last_activity

    def assign(self, load: Callable[[], type], label: str, app: str) -> None:
        self.label = label
        if label != "rehearsal":
            setproctitle(f"htagweb user {app} {label}")
        self.session = Session(label)
        try:
            with self.watchdog.interaction():
                app_cls, load_error = load(), None
        except Exception:
            logger.exception("user process of session %s could not load its app", label)
            app_cls, load_error = None, traceback.format_exc()
        self.host = HtagHost(app_cls, self.session, self.config, self.watchdog, load_error)
        self.watchdog.touch()
        self.assigned.set()

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
            if self.config.merge_memory:  # idle from now on, mostly: its pages are merged where alike
                merge_memory()

    async def serve(self, listener: socket.socket, assignment: Awaitable[None] | None = None) -> Exit:
        """Serve ``listener`` until the process must end; why it ends. A spare's
        ``assignment`` (run once serving) waits for the fork-server to name its user;
        the arrival of that user starts then, and is over within ``SETTLE_LIMIT`` at the latest."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # both: a stray Ctrl-C still runs on_destroy
            signal.signal(sig, lambda signum, frame: self.stop_soon(loop))
        server = await loop.create_unix_server(lambda: bridge.Link(self.handle), sock=listener)
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
            if self.host.broken:
                self.exit = Exit.BROKEN
        for link in list(self.links):
            link.close()
        if os.getppid() != self._parent:
            self.exit = Exit.ORPHANED
        return self.exit

    def stop_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGTERM: end through on_destroy; a signal handler, so it runs even while a
        handler hangs the loop, and arms the alarm that ends the process if it stays hung."""
        signal.alarm(max(1, round(self.config.shutdown_grace)) + 1)
        loop.call_soon_threadsafe(self.stopping.set)

    async def _expire_when_idle(self) -> None:
        """Wakes when the timeout would be over if nothing happened meanwhile (not every
        second: a thousand idle users would wake a thousand processes a second)."""
        timeout = self.config.timeout_inactivity
        if not timeout:
            return
        while True:
            await asyncio.sleep(max(min(EXPIRY_CHECK, timeout / 4), self.last_activity + timeout - time.monotonic()))
            if not self.watchdog.busy and time.monotonic() - self.last_activity >= timeout:
                logger.info("user process expired: session %s after %ss of inactivity", self.label, timeout)
                self.exit = Exit.EXPIRED
                self.stopping.set()
                return

    async def handle(self, link: bridge.Link) -> None:
        self.links.add(link)
        self.watchdog.touch()
        try:
            await self.assigned.wait()
            assert self.host is not None
            kind, body = await link.read()
            if kind != bridge.SCOPE:
                raise bridge.BridgeError("connection did not start with a scope")
            scope = bridge.decode_scope(body)
            if scope["htagweb"]["endpoint"] != "page" and not self.watchdog.live:
                self.watchdog.went_live()
            data = scope["htagweb"].pop("session")
            self.session.merge(data["version"], data["items"])
            await self.host(scope, self._receiver(link, scope["type"]), self._sender(link, scope))
            # the front closes first: closing with its bytes unread would reset the connection under them
            await asyncio.wait_for(link.read_to_end(), self.config.shutdown_grace)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass
        except Exception:
            logger.exception("bridge connection failed in user process of session %s", self.label)
        finally:
            self.links.discard(link)
            link.close()
            if self.host is not None and self.host.broken:
                self.stopping.set()

    def _receiver(self, link: bridge.Link, kind: str) -> Receive:
        """The app's receive: the next frame, read when asked (no task, no queue: a
        click's frame goes straight from the socket to htag)."""
        disconnect: Message = {"type": "http.disconnect"} if kind == "http" else {"type": "websocket.disconnect", "code": 1006}

        async def receive() -> Message:
            while True:
                try:
                    frame_kind, body = await link.read()
                except (asyncio.IncompleteReadError, ConnectionError, bridge.BridgeError):
                    return disconnect
                self.watchdog.touch()
                if frame_kind != bridge.SESSION_DATA:
                    return bridge.decode_inbound(frame_kind, body)
                data = json.loads(body)
                self.session.merge(data["version"], data["items"])

        return receive

    def _sender(self, link: bridge.Link, scope: Scope) -> Send:
        session = self.session
        # the arrival is over with the first answer after the page (WebSocket, SSE or event), or the page itself over plain HTTP
        settling = scope["htagweb"]["endpoint"] != "page" or self.config.http_only

        async def send(message: Message) -> None:
            if settling and self.control is not None and message["type"] in ("websocket.send", "http.response.body"):
                self.settle_after(SETTLE_DELAY)
            if self.watchdog.stage == ARRIVING and message["type"] != "http.response.start" and not message.get("more_body"):
                self.watchdog.answered()  # its user has the whole of its first answer: it may make room now
            self.watchdog.touch()
            changed, deleted = session.changes()
            if changed or deleted or session.rotated:
                # saved before any byte of the answer leaves: a route the browser calls next sees it
                session.mark_synced(changed, deleted, session.version)
                changes = {"set": changed, "delete": deleted, "rotate": session.rotated}
                session.rotated = False  # the front applies it, with an id of its own choosing
                link.write(bridge.json_frame(bridge.SESSION_CHANGES, changes))
            link.write(bridge.encode_outbound(message))
            await link.drain()

        return send


def new_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop
    try:  # the fastest loop at hand: a click's round trip crosses this loop twice
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def run(
    listener: socket.socket, load: Callable[[], type], config: Config, slot: mmap.mmap, label: str, app: str, control: socket.socket
) -> Exit:
    """Entry point in a child forked for a user; returns why it ends.
    ``control`` tells the fork-server when this user's arrival is over."""
    loop = new_loop()
    process = UserProcess(config, Watchdog(slot), control)
    process.assign(load, label, app)
    return loop.run_until_complete(process.serve(listener))
