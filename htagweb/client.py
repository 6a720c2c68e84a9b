"""A worker's client of the fork-server, and its way to user processes.

Connecting to a user socket that exists is the common case and costs one
``connect()``. Only when it fails is the fork-server asked to ensure the
process, which it does at most once per user whatever the number of workers.
The fork-server is started by the first worker that finds none.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from . import bridge, forkserver
from .appspec import AppSpec
from .config import Config
from .ends import End
from .forkserver import messages
from .generation import code_generation
from .runtime import Runtime, RuntimeDirError

logger = logging.getLogger("htagweb")

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


#: times a front asks for a user's process that ends before it can connect to it
ENSURE_TRIES = 3
#: the ends of a process just forked, before its front connected, after which another is asked for
ASKED_ANEW = frozenset({End.EVICTED, End.RELOADED, End.LOST})
#: seconds a page waits for its app's first import before it is told to come back (503)
LOADING_WAIT = 5.0
#: seconds between two asks while the app is being imported: the first, then doubled up to the last
#: (a crowd waiting for a slow import does not flood the fork-server)
LOADING_POLLS = (0.005, 0.25)


class SpawnRefused(Exception):
    def __init__(self, status: int, message: str, traceback: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.traceback = traceback


class EndedAtStart(Exception):
    """The process just forked for a user ended before the front could connect to it, for
    another reason than making room for a newcomer: it crashed at its start, most often."""

    def __init__(self, end: End) -> None:
        super().__init__(end.value)
        self.end = end


class ForkServerClient:
    def __init__(self, runtime: Runtime, config: Config, apps: dict[str, AppSpec]) -> None:
        self.runtime = runtime
        self.config = config
        self.apps = apps
        self._presence: Connection | None = None
        self._start_lock: asyncio.Lock | None = None
        self._channel_lock: asyncio.Lock | None = None
        self._channel: _Channel | None = None

    async def start(self) -> None:
        """Make sure the fork-server runs and tell it this worker is alive."""
        if self._presence is not None and not self._presence[0].at_eof():
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._presence is not None and not self._presence[0].at_eof():
                return
            if not self.runtime.generation:  # once every app is added: the code this worker serves
                self.runtime.generation = code_generation(self.apps.values())
            presence = await self._connect_forkserver()
            reply = await self._ask(presence, messages.Hello(os.getpid(), os.getppid(), _supervised(), self.config.server_id))
            if not reply.get("ok"):
                presence[1].close()
                raise RuntimeDirError(f"{self.runtime.path}: {reply.get('error')}")
            self._presence = presence

    async def stop(self) -> None:
        """Say bye; the last worker to leave waits while user processes end."""
        if self._presence is None:
            return
        reader, writer = self._presence
        self._presence = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        try:
            reply = await self._ask((reader, writer), messages.Bye())
            if reply.get("stopping"):  # the last worker: the fork-server ends every user process, then hangs up
                await asyncio.wait_for(reader.read(), self.config.shutdown_grace + 5)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
            pass
        finally:
            writer.close()

    async def open(self, key: str) -> bridge.Link | None:
        """A bridge connection to the live user process of ``key``; None if there is none."""
        try:
            return await bridge.connect(str(self.runtime.user_socket_path(key)))
        except (FileNotFoundError, ConnectionRefusedError):
            return None

    async def connect(
        self, key: str, app: str, label: str, source: dict[str, str] | None = None, recheck: bool = False, client: str = ""
    ) -> tuple[bridge.Link, bool]:
        """A bridge connection to the user process of ``key``, and whether it was just spawned.

        ``recheck`` asks the fork-server first (it replaces a development app whose source changed);
        ``client`` is the address a new process would count against (see admission.py)."""
        if not recheck and (connection := await self.open(key)) is not None:
            return connection, False
        loop = asyncio.get_running_loop()
        loading_until, pause = loop.time() + LOADING_WAIT, LOADING_POLLS[0]
        tries = 0
        while tries < ENSURE_TRIES:
            reply = await self.request(messages.Ensure(key, app, label, source, client))
            # its app's first import, in a zygote of its own; room made by older code generations (census.py)
            if (reply.get("loading") or reply.get("retry")) and loop.time() < loading_until:
                await asyncio.sleep(pause)
                pause = min(2 * pause, LOADING_POLLS[1])
                continue
            tries += 1
            if not reply.get("ok"):
                raise SpawnRefused(reply.get("status", 500), reply.get("error", "unknown error"), reply.get("traceback"))
            if (connection := await self.open(key)) is not None:
                return connection, bool(reply.get("spawned"))
            # it ended between the reply and now: anew if it made room for another user (or its
            # source changed), else told (it crashed at its start)
            reason = (await self.status(key)).get("reason")
            if reason is not None and (end := End(reason)) not in ASKED_ANEW:
                raise EndedAtStart(end)
        raise SpawnRefused(503, "The server is busy starting user sessions: try again in a moment.")

    async def status(self, key: str) -> dict[str, Any]:
        """Whether the process of ``key`` lives, or why it is gone. A process unknown to this
        worker's fork-server may belong to an older code generation's (after a reload): asked too."""
        reply = await self.request(messages.Status(key))
        if reply.get("reason") == "lost":
            async for other in self._ask_older(messages.Status(key)):
                if other.get("reason") != "lost":
                    return other
        return reply

    async def stats(self) -> dict[str, Any]:
        """The server's figures: this worker's fork-server's, with the user processes and the
        counts of older code generations' fork-servers added (their users stay after a reload)."""
        stats = await self.request(messages.Stats())
        async for older in self._ask_older(messages.Stats()):
            if older.get("ok"):
                for figure in ("processes", "provisional", "busy"):
                    stats[figure] += older[figure]
                for counter, value in older["counters"].items():
                    stats["counters"][counter] = stats["counters"].get(counter, 0) + value
        return stats

    async def stalled(self, key: str) -> bool:
        """The process of ``key`` left a request unanswered for ``timeout_interaction``: whether
        it was ended (it was stopped). One unknown to this worker's fork-server may belong to an
        older code generation's (a user in before a reload keeps its process): asked too."""
        if (await self.request(messages.Stalled(key))).get("ended"):
            return True
        async for other in self._ask_older(messages.Stalled(key)):
            if other.get("ended"):
                return True
        return False

    async def rotate(self, old: str, new: str) -> None:
        """A session id changed: its user processes answer to the new one only, those of older
        code generations' fork-servers too (a user in before a reload keeps its process)."""
        await self.request(messages.Rotate(old, new))
        async for _ in self._ask_older(messages.Rotate(old, new)):
            pass

    async def _ask_older(self, request: messages.Request) -> AsyncIterator[dict[str, Any]]:
        """The replies of the older code generations' fork-servers to ``request``, one at a time
        (one killed, its socket left behind, or one that breaks off, is skipped)."""
        for path in self.runtime.forkserver_sockets():
            if path == self.runtime.forkserver_socket:
                continue
            try:
                reader, writer = await asyncio.open_unix_connection(str(path))
            except OSError:
                continue
            try:
                reply = await self._ask((reader, writer), request)
            except (OSError, ValueError):
                continue
            finally:
                writer.close()
            yield reply

    async def count(self, counter: str) -> None:
        """Add one to a server-wide counter of /_htagweb/metrics (on error paths only)."""
        try:
            await self.request(messages.Count(counter))
        except (OSError, ValueError):
            logger.warning("could not count %s: fork-server unreachable", counter)

    async def request(self, message: messages.Request) -> dict[str, Any]:
        """One request to the fork-server, on a connection this worker keeps.

        Requests are pipelined: each is written as soon as it comes, with an id its
        reply carries back. A crowd of new users then waits for the fork-server's work
        only, not also for a round trip through this worker's busy event loop between two
        of them; and a request answered at once (a spare for the next user, the health
        check) does not wait behind one that waits for a fork."""
        await self.start()
        for attempt in (1, 2):  # a kept connection may have been closed meanwhile: retry once, afresh
            channel = await self._request_channel()
            try:
                return await channel.ask(message)
            except (ConnectionError, OSError):
                if self._channel is channel:
                    self._channel = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _request_channel(self) -> _Channel:
        if self._channel is None or self._channel.closed:
            if self._channel_lock is None:
                self._channel_lock = asyncio.Lock()
            async with self._channel_lock:
                if self._channel is None or self._channel.closed:
                    self._channel = _Channel(await self._connect_forkserver())
        return self._channel

    @staticmethod
    async def _ask(connection: Connection, message: messages.Request) -> dict[str, Any]:
        reader, writer = connection
        writer.write(messages.encode(message))
        line = await reader.readline()
        if not line:
            raise ConnectionError("fork-server closed the connection")
        return json.loads(line)

    async def _connect_forkserver(self) -> Connection:
        path = str(self.runtime.forkserver_socket)
        try:
            return await asyncio.open_unix_connection(path)
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        fd = os.open(self.runtime.forkserver_lock, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            while True:  # workers race here; polling keeps the event loop free
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            try:
                return await asyncio.open_unix_connection(path)
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            # started outside the except: the fork-server and every user process would
            # otherwise carry this FileNotFoundError as the context of each later traceback
            forkserver.start(self.runtime, self.config, self.apps)
            return await asyncio.open_unix_connection(path)
        finally:
            os.close(fd)


def _supervised() -> bool:
    """Whether this worker's parent manages workers, and may replace them (gunicorn's HUP, uvicorn --workers)."""
    return multiprocessing.parent_process() is not None or "gunicorn.arbiter" in sys.modules


class _Channel:
    """A kept connection to the fork-server carrying pipelined requests, each with an id:
    replies come as they are ready, one line each, with the id of their request."""

    def __init__(self, connection: Connection) -> None:
        self.reader, self.writer = connection
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count()
        self.closed = False
        self.reading = asyncio.create_task(self._read_replies())

    async def ask(self, message: messages.Request) -> dict[str, Any]:
        if self.closed:
            raise ConnectionError("fork-server connection closed")
        ident = next(self.ids)
        reply = self.waiting[ident] = asyncio.get_running_loop().create_future()
        self.writer.write(messages.encode(message, ident))
        try:
            return await reply
        finally:
            self.waiting.pop(ident, None)  # a waiter that gives up: its reply is read and dropped

    def close(self) -> None:
        self.reading.cancel()
        self.writer.close()

    async def _read_replies(self) -> None:
        error: Exception = ConnectionError("fork-server closed the connection")
        try:
            while line := await self.reader.readline():
                answer = json.loads(line)
                reply = self.waiting.pop(answer.pop("id"), None)
                if reply is not None and not reply.done():
                    reply.set_result(answer)
        except (OSError, ValueError, KeyError) as exc:
            error = ConnectionError(f"fork-server connection broken: {exc!r}")
        finally:
            self.closed = True
            self.writer.close()
            for reply in self.waiting.values():
                if not reply.done():
                    reply.set_exception(error)
            self.waiting.clear()
