"""Server-side session stores.

A session is a set of keys, each holding a JSON text. Stores merge writes key by
key, so a Starlette route and the htag app writing different keys of one session
at the same moment both keep their write. Every write bumps a version number:
the front compares versions to know when a long-lived WebSocket must be sent
fresh session data.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import mmap
import os
import secrets
import sqlite3
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

Items = dict[str, str]  # key -> JSON text
T = TypeVar("T")
GENERATION = struct.Struct("<Q")
#: seconds a query of the SQLite store waits for another process' lock
LOCK_WAIT = 10.0
#: seconds the Redis store waits for its server (a URL's own ``socket_timeout`` wins)
REDIS_WAIT = 5.0


class StoreUnavailable(Exception):
    """The store could not be read or written: its server down or hung, its file locked
    or damaged. Raised instead of the backend's own error, so that the front refuses
    the request with a 503 its user can read and logs one line, not a traceback; the
    next request tries the store again. A store of one's own raises it the same way."""


def _unavailable(cause: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"{type(cause).__name__}: {cause}")


class SessionStore(ABC):
    """What htagweb needs from a session store. Used by the front only: user
    processes never see the store, only their own session's data. A store that cannot
    be reached raises :class:`StoreUnavailable`."""

    max_age: float = 14 * 24 * 3600
    #: seconds between two purges of expired claims (parano mode claims one per channel)
    purge_interval: float = 600.0

    @abstractmethod
    async def load(self, sid: str) -> tuple[int, Items]:
        """(version, items); (0, {}) for an unknown session."""

    @abstractmethod
    async def version(self, sid: str) -> int: ...

    @abstractmethod
    async def update(self, sid: str, set_items: Items, delete: list[str]) -> int:
        """Apply a diff atomically; return the new version."""

    @abstractmethod
    async def claim(self, sid: str, token: str, expires: float) -> bool:
        """Record ``token`` for ``sid`` until ``expires``; False if it was already
        recorded. Parano mode claims each channel id, so a replayed channel is refused."""

    async def delete(self, sid: str) -> None:
        """Forget a session (its id was rotated). This default empties it through :meth:`update`."""
        _, items = await self.load(sid)
        if items:
            await self.update(sid, {}, list(items))

    async def touch(self, sid: str) -> None:
        """The session is in use: keep it ``max_age`` longer (rolling expiry). Stores that
        expire sessions by their last write override it."""
        return None

    def generation(self) -> int | None:
        """A number that changes whenever any session of this store may have changed,
        read without a round trip; None if the store cannot tell. A front asks for a
        session's version (a round trip) only when it changed: a click that changes
        nothing costs the store nothing."""
        return None

    async def close(self) -> None:
        return None


class MemoryStore(SessionStore):
    """Sessions in the memory of one worker process: for tests and single-worker
    development servers. Lost at restart and not shared between workers."""

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[int, Items]] = {}
        self._claims: dict[tuple[str, str], float] = {}
        self._generation = 0
        self._purged = 0.0

    def generation(self) -> int:
        return self._generation

    async def load(self, sid: str) -> tuple[int, Items]:
        version, items = self._sessions.get(sid, (0, {}))
        return version, dict(items)

    async def version(self, sid: str) -> int:
        return self._sessions.get(sid, (0, {}))[0]

    async def update(self, sid: str, set_items: Items, delete: list[str]) -> int:
        version, items = self._sessions.get(sid, (0, {}))
        items = {**items, **set_items}
        for key in delete:
            items.pop(key, None)
        self._sessions[sid] = (version + 1, items)
        self._generation += 1
        return version + 1

    async def delete(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    async def claim(self, sid: str, token: str, expires: float) -> bool:
        now = time.time()
        if now - self._purged >= self.purge_interval:
            self._claims = {k: v for k, v in self._claims.items() if v > now}
            self._purged = now
        if self._claims.get((sid, token), 0) > now:
            return False
        self._claims[(sid, token)] = expires
        return True


class SQLiteStore(SessionStore):
    """Sessions in a SQLite file, shared by every worker of one machine and kept
    across restarts. Each process opens its own connection (never across fork),
    used from one thread of its own: a query waiting for another process' write
    lock (up to 10 s) never holds up the worker's event loop.

    Beside the database, ``<path>-gen`` holds the store's generation: a random
    number each write replaces, mapped in every worker's memory."""

    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS sessions (sid TEXT PRIMARY KEY, version INTEGER NOT NULL, touched REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS items (sid TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (sid, key));
    CREATE TABLE IF NOT EXISTS claims (sid TEXT NOT NULL, token TEXT NOT NULL, expires REAL NOT NULL, PRIMARY KEY (sid, token));
    """

    def __init__(self, path: Path | str, max_age: float | None = None) -> None:
        self.path = str(path)
        if max_age is not None:
            self.max_age = max_age
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._purged = time.time()  # the connection purges when it opens
        self._executor: ThreadPoolExecutor | None = None
        self._generation: mmap.mmap | None = None
        self._generation_pid = 0

    async def _run(self, query: Callable[..., T], *args: Any) -> T:
        if self._executor is None or self._pid != os.getpid():
            self._executor, self._conn, self._pid = ThreadPoolExecutor(1, thread_name_prefix="htagweb-sqlite"), None, os.getpid()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, query, *args)
        except sqlite3.DatabaseError as exc:
            # locked past LOCK_WAIT, a disk full or failing, a damaged file; not a fault of ours
            if type(exc) not in (sqlite3.OperationalError, sqlite3.DatabaseError):
                raise
            raise _unavailable(exc) from exc

    def generation(self) -> int:
        if self._generation is None or self._generation_pid != os.getpid():
            fd = os.open(f"{self.path}-gen", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < GENERATION.size:
                    os.ftruncate(fd, GENERATION.size)
                self._generation, self._generation_pid = mmap.mmap(fd, GENERATION.size), os.getpid()
            finally:
                os.close(fd)
        return GENERATION.unpack_from(self._generation)[0]

    def _bump_generation(self) -> None:
        self.generation()
        assert self._generation is not None
        GENERATION.pack_into(self._generation, 0, secrets.randbits(64))

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:  # in the store's thread (see _run)
            conn = sqlite3.connect(self.path, timeout=LOCK_WAIT, isolation_level=None, check_same_thread=False)
            _use_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(self._SCHEMA)
            self._purge(conn)
            self._conn = conn
        return self._conn

    def _purge(self, conn: sqlite3.Connection) -> None:
        cutoff = time.time() - self.max_age
        with conn:
            conn.execute("DELETE FROM items WHERE sid IN (SELECT sid FROM sessions WHERE touched < ?)", (cutoff,))
            conn.execute("DELETE FROM sessions WHERE touched < ?", (cutoff,))
            conn.execute("DELETE FROM claims WHERE expires < ?", (time.time(),))

    async def load(self, sid: str) -> tuple[int, Items]:
        return await self._run(self._load, sid)

    async def version(self, sid: str) -> int:
        return await self._run(self._version, sid)

    async def update(self, sid: str, set_items: Items, delete: list[str]) -> int:
        return await self._run(self._update, sid, set_items, delete)

    async def claim(self, sid: str, token: str, expires: float) -> bool:
        return await self._run(self._claim, sid, token, expires)

    def _load(self, sid: str) -> tuple[int, Items]:
        conn = self.conn
        row = conn.execute("SELECT version FROM sessions WHERE sid=?", (sid,)).fetchone()
        if row is None:
            return 0, {}
        items = dict(conn.execute("SELECT key, value FROM items WHERE sid=?", (sid,)).fetchall())
        return row[0], items

    def _version(self, sid: str) -> int:
        row = self.conn.execute("SELECT version FROM sessions WHERE sid=?", (sid,)).fetchone()
        return row[0] if row else 0

    def _update(self, sid: str, set_items: Items, delete: list[str]) -> int:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO items (sid, key, value) VALUES (?, ?, ?) ON CONFLICT(sid, key) DO UPDATE SET value=excluded.value",
                [(sid, k, v) for k, v in set_items.items()],
            )
            conn.executemany("DELETE FROM items WHERE sid=? AND key=?", [(sid, k) for k in delete])
            conn.execute(
                "INSERT INTO sessions (sid, version, touched) VALUES (?, 1, ?) "
                "ON CONFLICT(sid) DO UPDATE SET version=version+1, touched=excluded.touched",
                (sid, time.time()),
            )
            version = conn.execute("SELECT version FROM sessions WHERE sid=?", (sid,)).fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._bump_generation()
        return version

    def _claim(self, sid: str, token: str, expires: float) -> bool:
        conn = self.conn
        now = time.time()
        with conn:
            if now - self._purged >= self.purge_interval:
                conn.execute("DELETE FROM claims WHERE expires < ?", (now,))
                self._purged = now
            conn.execute("DELETE FROM claims WHERE sid=? AND token=? AND expires < ?", (sid, token, now))
            inserted = conn.execute("INSERT OR IGNORE INTO claims (sid, token, expires) VALUES (?, ?, ?)", (sid, token, expires)).rowcount
        return inserted == 1

    async def delete(self, sid: str) -> None:
        await self._run(self._delete, sid)

    async def touch(self, sid: str) -> None:
        await self._run(self._touch, sid)

    def _delete(self, sid: str) -> None:
        with self.conn as conn:
            conn.execute("DELETE FROM items WHERE sid=?", (sid,))
            conn.execute("DELETE FROM sessions WHERE sid=?", (sid,))
        self._bump_generation()

    def _touch(self, sid: str) -> None:
        with self.conn as conn:
            conn.execute("UPDATE sessions SET touched=? WHERE sid=?", (time.time(), sid))

    async def close(self) -> None:
        if self._executor is not None and self._pid == os.getpid():
            if self._conn is not None:
                await self._run(self._conn.close)
            self._executor.shutdown()
        self._conn, self._executor = None, None


class RedisStore(SessionStore):
    """Sessions in Redis, shared by several machines (``pip install htagweb[redis]``).

    Per session: a hash of its items and a version counter, both expiring
    ``max_age`` after the last write; channel claims expire once their Open could no longer be replayed (crypto/PROTOCOL.md §4).
    """

    def __init__(self, url: str, max_age: float | None = None, prefix: str = "htagweb:") -> None:
        if max_age is not None:
            self.max_age = max_age
        self.url = url
        self.prefix = prefix
        self._client: Any = None
        self._pid = 0

    @property
    def client(self) -> Any:
        import redis.asyncio

        if self._client is None or self._pid != os.getpid():  # never share a connection pool across fork
            self._client = redis.asyncio.Redis.from_url(
                self.url, decode_responses=True, socket_timeout=REDIS_WAIT, socket_connect_timeout=REDIS_WAIT
            )
            self._pid = os.getpid()
        return self._client

    @contextlib.asynccontextmanager
    async def _reached(self) -> AsyncIterator[Any]:
        """The client; Redis' errors (down, hung, out of memory, read-only) as StoreUnavailable."""
        from redis.exceptions import RedisError

        try:
            yield self.client
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def load(self, sid: str) -> tuple[int, Items]:
        async with self._reached() as client, client.pipeline(transaction=True) as pipe:
            version, items = await pipe.get(self.prefix + "v:" + sid).hgetall(self.prefix + "s:" + sid).execute()
        return int(version or 0), items

    async def version(self, sid: str) -> int:
        async with self._reached() as client:
            return int(await client.get(self.prefix + "v:" + sid) or 0)

    async def update(self, sid: str, set_items: Items, delete: list[str]) -> int:
        items_key, version_key, ttl = self.prefix + "s:" + sid, self.prefix + "v:" + sid, int(self.max_age)
        async with self._reached() as client, client.pipeline(transaction=True) as pipe:
            if set_items:
                pipe.hset(items_key, mapping=set_items)
            if delete:
                pipe.hdel(items_key, *delete)
            pipe.incr(version_key).expire(items_key, ttl).expire(version_key, ttl)
            results = await pipe.execute()
        return int(results[-3])

    async def claim(self, sid: str, token: str, expires: float) -> bool:
        ttl = max(1, math.ceil(expires - time.time()))  # never shorter than asked: a replay is refused until then
        async with self._reached() as client:
            return bool(await client.set(self.prefix + "c:" + sid + ":" + token, "1", nx=True, ex=ttl))

    async def delete(self, sid: str) -> None:
        async with self._reached() as client:
            await client.delete(self.prefix + "s:" + sid, self.prefix + "v:" + sid)

    async def touch(self, sid: str) -> None:
        ttl = int(self.max_age)
        async with self._reached() as client, client.pipeline(transaction=True) as pipe:
            await pipe.expire(self.prefix + "s:" + sid, ttl).expire(self.prefix + "v:" + sid, ttl).execute()

    async def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            await self._client.aclose()
        self._client = None


def make_store(spec: SessionStore | str | None, default_path: Path, max_age: float | None = None) -> SessionStore:
    store = _store(spec, default_path)
    if max_age is not None:
        store.max_age = max_age
    return store


def _store(spec: SessionStore | str | None, default_path: Path) -> SessionStore:
    if isinstance(spec, SessionStore):
        return spec
    if spec is None or spec == "sqlite":
        return SQLiteStore(default_path)
    if spec == "memory":
        return MemoryStore()
    if spec.startswith("sqlite:///"):
        return SQLiteStore(spec[len("sqlite:///") :])
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec)
    raise ValueError(f"unknown session store {spec!r} (want 'sqlite', 'sqlite:///PATH', 'memory', 'redis://...' or a SessionStore)")


def _use_wal(conn: sqlite3.Connection) -> None:
    """WAL mode (readers and the writer do not wait for each other). Switching to it needs
    the database to itself, and SQLite refuses at once, whatever the busy timeout, while
    another connection writes in rollback mode: asked again until that write is over."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
