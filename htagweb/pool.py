"""The front's handle on user processes: connect, spawning through the fork-server.

Connecting to a user socket that exists is the common case and costs one
``connect()``. Only when it fails is the fork-server asked to ensure the
process, which it does at most once per user whatever the number of workers.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
from typing import Any

from . import forkserver
from .appspec import AppSpec
from .config import Config
from .runtime import Runtime

logger = logging.getLogger("htagweb")

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class SpawnRefused(Exception):
    def __init__(self, status: int, message: str, traceback: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.traceback = traceback


class ProcessPool:
    def __init__(self, runtime: Runtime, config: Config, apps: dict[str, AppSpec]) -> None:
        self.runtime = runtime
        self.config = config
        self.apps = apps
        self._presence: Connection | None = None
        self._start_lock: asyncio.Lock | None = None
        self._request_lock: asyncio.Lock | None = None
        self._requests: Connection | None = None

    async def start(self) -> None:
        """Make sure the fork-server runs and tell it this worker is alive."""
        if self._presence is not None and not self._presence[0].at_eof():
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._presence is not None and not self._presence[0].at_eof():
                return
            self._presence = await self._connect_forkserver()
            await self._ask(self._presence, {"op": "hello", "pid": os.getpid(), "ppid": os.getppid()})

    async def stop(self) -> None:
        """Say bye; the last worker to leave waits while user processes end."""
        if self._presence is None:
            return
        reader, writer = self._presence
        self._presence = None
        try:
            reply = await self._ask((reader, writer), {"op": "bye"})
            if reply.get("remaining") == 0:
                await asyncio.wait_for(reader.read(), self.config.shutdown_grace + 5)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
            pass
        finally:
            writer.close()

    async def connect(
        self, key: str, app: str, label: str, source: dict[str, str] | None = None, recheck: bool = False
    ) -> tuple[Connection, bool]:
        """A bridge connection to the user process of ``key``, and whether it was just spawned.

        ``recheck`` asks the fork-server first (it replaces a development app whose source changed)."""
        path = str(self.runtime.user_socket_path(key))
        if not recheck:
            try:
                return await asyncio.open_unix_connection(path), False
            except (FileNotFoundError, ConnectionRefusedError):
                pass
        reply = await self.request({"op": "ensure", "key": key, "app": app, "label": label, "source": source})
        if not reply.get("ok"):
            raise SpawnRefused(reply.get("status", 500), reply.get("error", "unknown error"), reply.get("traceback"))
        return await asyncio.open_unix_connection(path), bool(reply.get("spawned"))

    async def count(self, counter: str) -> None:
        """Add one to a server-wide counter of /_htagweb/metrics (on error paths only)."""
        try:
            await self.request({"op": "count", "counter": counter})
        except (OSError, ValueError):
            logger.warning("could not count %s: fork-server unreachable", counter)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """One request to the fork-server, on a connection this worker keeps (the
        fork-server answers one request at a time anyway)."""
        await self.start()
        if self._request_lock is None:
            self._request_lock = asyncio.Lock()
        async with self._request_lock:
            for attempt in (1, 2):  # a kept connection may have been closed meanwhile: retry once, afresh
                if self._requests is None:
                    self._requests = await self._connect_forkserver()
                try:
                    return await self._ask(self._requests, message)
                except (ConnectionError, OSError, asyncio.IncompleteReadError):
                    self._drop_requests()
                    if attempt == 2:
                        raise
                except BaseException:  # cancelled mid-request: its reply must not reach the next one
                    self._drop_requests()
                    raise
        raise AssertionError("unreachable")

    def _drop_requests(self) -> None:
        if self._requests is not None:
            self._requests[1].close()
            self._requests = None

    @staticmethod
    async def _ask(connection: Connection, message: dict[str, Any]) -> dict[str, Any]:
        reader, writer = connection
        writer.write(json.dumps(message).encode() + b"\n")
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
                forkserver.start(self.runtime, self.config, self.apps)
                return await asyncio.open_unix_connection(path)
        finally:
            os.close(fd)
