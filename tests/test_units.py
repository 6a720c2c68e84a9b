"""Unit tests of the pure logic, beside the end-to-end suite: the bridge codec, the
session merge, the store contract (claims included), folder URLs, the fork-server's
typed requests, exit codes, CPU pressure."""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import resource
import select
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import alive
from hypothesis import given
from hypothesis import strategies as st

from htagweb import bridge, generation
from htagweb.client import ENSURE_TRIES, EndedAtStart, ForkServerClient, SpawnRefused
from htagweb.config import Config
from htagweb.ends import End, Exit, from_status
from htagweb.folder import resolve
from htagweb.forkserver import census, messages
from htagweb.forkserver import zygote as zygote_module
from htagweb.forkserver.children import (
    Child,
    SpareChild,
    listen,
    open_files,
    readable,
    resident_memory,
    stack_path,
    stopped,
)
from htagweb.forkserver.imports import RETRY_AFTER, Imports
from htagweb.forkserver.lines import Line, Lines, Reply
from htagweb.forkserver.loader import AppLoader
from htagweb.forkserver.pressure import WINDOW, CpuPressure
from htagweb.forkserver.spares import Spares
from htagweb.forkserver.zygote import PACKET, SPARE, ForkRefused, Zygote, ZygoteStuck, serve
from htagweb.forkserver.zygotes import IN_FLIGHT, Zygotes
from htagweb.ordering import PageOrder
from htagweb.pages import compact
from htagweb.runtime import Runtime
from htagweb.sessions import Session
from htagweb.slot import ANSWERED, ARRIVING, EXITING, LIVE, REHEARSING, RUNNING, Watchdog, new_slot, read_slot, shared_slot
from htagweb.stores import MemoryStore, SQLiteStore, StoreUnavailable

text = st.text(max_size=200)
raw = st.binary(max_size=200)
headers = st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=40)), max_size=5)


def _latin1(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k.decode("latin-1").encode("latin-1"), v) for k, v in pairs]


inbound = st.one_of(
    st.builds(lambda t: {"type": "websocket.receive", "text": t}, text),
    st.builds(lambda b: {"type": "websocket.receive", "bytes": b}, raw),
    st.builds(lambda b, more: {"type": "http.request", "body": b, "more_body": more}, raw, st.booleans()),
    st.just({"type": "websocket.connect"}),
    st.builds(lambda code: {"type": "websocket.disconnect", "code": code}, st.integers(1000, 4999)),
)
outbound = st.one_of(
    st.builds(lambda t: {"type": "websocket.send", "text": t}, text),
    st.builds(lambda b: {"type": "websocket.send", "bytes": b}, raw),
    st.builds(lambda b, more: {"type": "http.response.body", "body": b, "more_body": more}, raw, st.booleans()),
    st.builds(lambda status, h: {"type": "http.response.start", "status": status, "headers": h}, st.integers(100, 599), headers),
    st.builds(lambda sub, h: {"type": "websocket.accept", "subprotocol": sub, "headers": h}, st.one_of(st.none(), text), headers),
    st.builds(lambda code, reason: {"type": "websocket.close", "code": code, "reason": reason}, st.integers(1000, 4999), text),
)


def _read(data: bytes) -> tuple[int, bytes]:
    async def read() -> tuple[int, bytes]:
        ours, theirs = socket.socketpair()
        with theirs:
            theirs.sendall(data)
        link = await bridge.connect(sock=ours)
        try:
            return await link.read()
        finally:
            link.close()

    return asyncio.run(read())


@given(inbound)
def test_bridge_inbound_round_trip(message):
    assert bridge.decode_inbound(*_read(bridge.encode_inbound(message))) == message


@given(outbound)
def test_bridge_outbound_round_trip(message):
    assert bridge.decode_outbound(*_read(bridge.encode_outbound(message))) == message


@given(st.sampled_from(["http", "websocket"]), st.text(min_size=1, max_size=50).map(lambda p: "/" + p), headers, raw)
def test_bridge_scope_round_trip(kind, path, pairs, query):
    scope = {"type": kind, "path": path, "headers": pairs, "query_string": query.decode("latin-1").encode("latin-1")}
    decoded = bridge.decode_scope(_read(bridge.encode_scope(scope, {"endpoint": "page"}))[1])
    assert (decoded["type"], decoded["path"], decoded["headers"], decoded["query_string"]) == (kind, path, pairs, scope["query_string"])
    assert decoded["htagweb"] == {"endpoint": "page"}


def test_a_frame_of_one_direction_is_not_read_as_the_other():
    with pytest.raises(bridge.BridgeError):
        bridge.decode_outbound(*_read(bridge.encode_inbound({"type": "websocket.receive", "text": "x"})))
    with pytest.raises(bridge.BridgeError):
        _read(bridge.HEADER.pack(bridge.MAX_FRAME + 1, bridge.WS_TEXT_IN))


class _Transport(asyncio.Transport):
    """What a Link asks of its transport: whether it paused reading, what it wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.written = b""

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)


def _linked() -> tuple[bridge.Link, _Transport]:
    link, transport = bridge.Link(), _Transport()
    link.connection_made(transport)
    return link, transport


@given(st.lists(st.tuples(st.integers(0, 255), raw), max_size=8), st.lists(st.integers(1, 50), max_size=20))
def test_link_cuts_frames_wherever_the_bytes_are_split(frames, cuts):
    async def run() -> list[tuple[int, bytes]]:
        link, _ = _linked()
        data = b"".join(bridge.frame(kind, body) for kind, body in frames)
        for cut in cuts:
            link.data_received(data[:cut])
            data = data[cut:]
        link.data_received(data)
        link.eof_received()
        read = []
        with pytest.raises(asyncio.IncompleteReadError):
            while True:
                read.append(await link.read())
        return read

    assert asyncio.run(run()) == frames


def test_link_reads_what_came_before_an_end_then_the_end():
    """And one reader at a time, as with a StreamReader."""

    async def run() -> None:
        link, _ = _linked()
        waiting = asyncio.ensure_future(link.read())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            await link.read()
        link.data_received(bridge.frame(bridge.WS_TEXT_OUT, b"first"))
        assert await waiting == (bridge.WS_TEXT_OUT, b"first")
        link.data_received(bridge.frame(bridge.WS_TEXT_OUT, b"last") + bridge.HEADER.pack(10, bridge.WS_TEXT_OUT) + b"cut")
        link.connection_lost(ConnectionResetError("reset"))
        assert await link.read() == (bridge.WS_TEXT_OUT, b"last")
        with pytest.raises(ConnectionResetError):
            await link.read()
        with pytest.raises(ConnectionResetError):
            await link.drain()
        link, _ = _linked()
        link.data_received(bridge.frame(bridge.WS_TEXT_OUT, b"ok") + bridge.HEADER.pack(bridge.MAX_FRAME + 1, bridge.WS_TEXT_OUT))
        link.data_received(bridge.frame(bridge.WS_TEXT_OUT, b"ignored"))
        assert await link.read() == (bridge.WS_TEXT_OUT, b"ok")
        with pytest.raises(bridge.BridgeError):
            await link.read()

    asyncio.run(run())


def test_link_back_pressure_both_ways():
    """Frames not taken pause the socket beyond LIMIT until taken; drain waits while the peer does not read."""

    async def run() -> None:
        link, transport = _linked()
        body = b"x" * (bridge.Link.LIMIT // 2)
        link.data_received(bridge.frame(bridge.WS_TEXT_OUT, body) * 2)
        assert not transport.paused
        link.data_received(bridge.frame(bridge.WS_TEXT_OUT, body))
        assert transport.paused
        await link.read()
        assert not transport.paused
        link.pause_writing()
        drained = asyncio.ensure_future(link.drain())
        await asyncio.sleep(0)
        assert not drained.done()
        link.resume_writing()
        await drained

    asyncio.run(run())


def test_watchdog_slot_says_the_oldest_running_interaction_and_the_last_exchange():
    slot = new_slot(REHEARSING)
    watchdog = Watchdog(slot)
    watchdog.touch()
    assert read_slot(slot) == (0.0, watchdog.last_activity, REHEARSING, ARRIVING)  # a touch writes its field only
    with watchdog.interaction():
        first = read_slot(slot).busy_since
        assert 0 < first <= time.monotonic()
        second = watchdog.interaction()
        second.__enter__()
        assert read_slot(slot).busy_since == first
    assert read_slot(slot).busy_since > first  # the first ended: the second's clock runs
    second.__exit__(None, None, None)
    assert read_slot(slot).busy_since == 0.0 and not watchdog.busy
    watchdog.answered()
    assert read_slot(slot) == (0.0, watchdog.last_activity, REHEARSING, ANSWERED) and not read_slot(slot).live
    watchdog.went_live()
    assert read_slot(slot) == (0.0, watchdog.last_activity, RUNNING, LIVE) and read_slot(slot).live
    watchdog.exiting()
    assert read_slot(slot).state == EXITING


def test_session_merge_keeps_local_changes_and_takes_the_stores_others():
    session = Session("sid", 1, {"a": "1", "b": "2", "c": "3"})
    session["a"] = 10  # changed here, not synced yet
    del session["b"]
    session.merge(2, {"a": "1", "b": "2", "c": "30", "d": "4"})  # the store: c changed, d added by a route
    assert dict(session) == {"a": 10, "c": 30, "d": 4} and session.version == 2
    assert session.changes() == ({"a": "10"}, ["b"])


def _stores(tmp_path: Path):
    return [MemoryStore(), SQLiteStore(tmp_path / "s.sqlite3")]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_store_contract(tmp_path, kind):
    store = dict(zip(["memory", "sqlite"], _stores(tmp_path), strict=True))[kind]

    async def scenario():
        assert await store.load("s") == (0, {}) and await store.version("s") == 0
        generation = store.generation()
        assert await store.update("s", {"a": '"x"', "b": "1"}, []) == 1
        assert store.generation() != generation  # every write changes it
        assert await store.update("s", {"b": "2"}, ["a", "missing"]) == 2
        assert await store.load("s") == (2, {"b": "2"}) and await store.version("s") == 2
        assert await store.load("other") == (0, {})
        expires = time.time() + 60
        assert await store.claim("s", "channel", expires) is True
        assert await store.claim("s", "channel", expires) is False  # a replay
        assert await store.claim("other", "channel", expires) is True  # per session
        assert await store.claim("s", "old", time.time() - 1) is True
        assert await store.claim("s", "old", expires) is True  # an expired claim no longer holds
        await store.close()

    asyncio.run(scenario())


def test_a_sqlite_store_opened_while_another_connection_writes_waits_for_it(tmp_path):
    """Switching a database to WAL needs it to itself, and SQLite refuses at once ("database
    is locked", whatever the busy timeout) while another connection writes in rollback mode:
    a worker's first request failed with a 500 when it opened its connection then (seen once
    in bench/chaos.py, at a start). The store waits for the writer as it does for any lock."""
    path = tmp_path / "s.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # rollback mode, as any new file
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE elsewhere (x)")
    committed = threading.Timer(0.5, lambda: writer.execute("COMMIT"))
    committed.start()
    store = SQLiteStore(path)
    try:
        assert asyncio.run(store.load("s")) == (0, {})
        assert asyncio.run(store.update("s", {"a": "1"}, [])) == 1
    finally:
        committed.join()
        writer.close()
        asyncio.run(store.close())
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_damaged_sqlite_file_is_told_as_a_store_unavailable_and_a_fault_of_ours_is_not(tmp_path):
    """A store's failure is raised as StoreUnavailable, naming its cause (the front tells the
    user, logs one line); a query of ours that breaks a constraint stays the bug it is."""
    damaged = tmp_path / "damaged.sqlite3"
    damaged.write_bytes(b"not a database, a disk that failed" * 200)
    store = SQLiteStore(damaged)
    with pytest.raises(StoreUnavailable, match="DatabaseError: file is not a database"):
        asyncio.run(store.load("s"))
    asyncio.run(store.close())

    store = SQLiteStore(tmp_path / "s.sqlite3")

    def broken(sid: str) -> None:
        store.conn.execute("INSERT INTO claims VALUES (?, 't', 0)", (sid,))
        store.conn.execute("INSERT INTO claims VALUES (?, 't', 0)", (sid,))

    with pytest.raises(sqlite3.IntegrityError):
        asyncio.run(store._run(broken, "s"))
    asyncio.run(store.close())


def test_a_page_order_admits_a_number_delivered_before_only_for_an_event_that_ran():
    order = PageOrder(wait=0.05)
    order.register("p")

    async def scenario():
        assert await order.admit("p", 1) is None
        assert await order.admit("p", 1) == "event 1 of this page was delivered already (a replay)"
        assert await order.admit("p", 1, ran=True) is None  # sent again once its WebSocket was cut
        assert await order.admit("p", 2) is None  # the order goes on from where it was
        assert "event 3 of this page never arrived" in await order.admit("p", 4)
        assert "never arrived" in await order.admit("p", 2, ran=True)  # a page whose event was lost stays over

    asyncio.run(scenario())


def test_a_parano_websocket_whose_browser_is_gone_ends_quietly(caplog):
    """The browser left while the app sends (a network drops, a tab closes): uvicorn raises
    ClientDisconnected on the send. That is no fault: seen in a browser test as an ERROR and
    a traceback in the log, a line for every such drop."""
    from types import SimpleNamespace

    from uvicorn.protocols.utils import ClientDisconnected

    from htagweb.parano import _SealedWebSocket
    from htagweb.sessions import SCOPE_PARANO

    sent: list[bytes] = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "the app's state"})
        await send({"type": "websocket.send", "text": "more"})

    async def outer_send(message):
        if sent:
            raise ClientDisconnected()
        sent.append(message["bytes"])

    layer = SimpleNamespace(app=app)
    channel = SimpleNamespace(seal=lambda plaintext: plaintext)
    inner = {"type": "websocket", "path": "/ws", SCOPE_PARANO: {"sid": "s"}}
    with caplog.at_level("DEBUG", logger="htagweb"):
        asyncio.run(_SealedWebSocket(layer, channel, inner, None, outer_send).run())  # type: ignore[arg-type]
    assert len(sent) == 1 and not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


def test_folder_urls_stay_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "hello.py").write_text("from htag import Tag\nclass App(Tag.App):\n    pass\n")
    (root / "sub" / "other.py").write_text("from htag import Tag\nclass Other(Tag.App):\n    pass\n")
    (root / "plain.py").write_text("x = 1\n")
    (root / "_private.py").write_text("class App: pass\n")
    (tmp_path / "outside.py").write_text("class App: pass\n")
    os.symlink(tmp_path / "outside.py", root / "link.py")
    assert resolve(root, "/") == resolve(root, "") and resolve(root, "/").kind == "index"
    hello = resolve(root, "/hello")
    assert (hello.kind, hello.rel, hello.endpoint, hello.class_name) == ("file", "hello", "page", "App")
    assert resolve(root, "/hello/ws").endpoint == "ws" and resolve(root, "/hello/event").endpoint == "event"
    assert resolve(root, "/sub/other").class_name == "Other" and resolve(root, "/sub/").kind == "index"
    for refused in ["/plain", "/_private", "/../outside", "/link", "/.hidden", "/hello.py", "/nowhere", "/sub/../hello"]:
        assert resolve(root, refused) is None, refused


def test_fork_server_requests_are_typed():
    for request in [messages.Ensure("k", "a:App", "label"), messages.Status("k"), messages.Kill("ab", None), messages.Hello(2, 1, True)]:
        assert messages.decode(messages.encode(request)) == (request, None)
        assert messages.decode(messages.encode(request, 7)) == (request, 7)
    bad_lines = [b"not json", b"[]", b'{"op": "nope"}', b'{"op": "status"}', b'{"op": "status", "key": 3}']
    bad_lines += [b'{"op": "hello", "pid": true, "ppid": 1}', b'{"op": "stats", "id": "1"}', b'{"op": "stats", "id": true}']
    for bad in bad_lines:
        with pytest.raises(messages.BadRequest):
            messages.decode(bad)
    with pytest.raises(messages.BadRequest, match="unknown fields") as refused:
        messages.decode(b'{"op": "stats", "extra": 1, "id": 4}')
    assert refused.value.ident == 4  # its refusal is matched to it


def test_exit_codes_tell_why_a_process_ended():
    def exited(code: int) -> int:
        return code << 8

    assert from_status(exited(Exit.EXPIRED)) is End.EXPIRED and from_status(exited(Exit.STOPPED)) is End.STOPPED
    assert from_status(exited(Exit.BROKEN)) is End.BROKEN
    assert from_status(exited(Exit.CRASHED)) is End.CRASHED and from_status(exited(3)) is End.CRASHED
    assert from_status(9) is End.CRASHED  # killed by a signal nobody sent


def _stall(path: Path, microseconds: int) -> None:
    path.write_text(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={microseconds}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


def test_cpu_pressure_calls_calm_only_a_recent_window_with_little_waiting(tmp_path):
    psi, now = tmp_path / "cpu", [100.0]
    _stall(psi, 1_000_000)
    pressure = CpuPressure(psi, clock=lambda: now[0])
    now[0] += 1.2 * WINDOW
    assert pressure.is_calm()  # nobody waited
    _stall(psi, 1_000_000 + int(WINDOW * 1e6))  # a task waited as long as a window
    now[0] += 0.5 * WINDOW
    assert pressure.is_calm()  # the window is not over: the last verdict stands
    now[0] += 0.7 * WINDOW
    assert not pressure.is_calm()
    now[0] += 3 * WINDOW  # a long-past window says nothing of now: measured afresh
    assert not pressure.is_calm()
    now[0] += 1.2 * WINDOW
    assert pressure.is_calm()
    assert CpuPressure(tmp_path / "missing").is_calm()  # a kernel without PSI: calm, as before


def test_a_new_user_gets_a_rehearsed_spare_then_one_asleep_then_one_still_rehearsing(tmp_path):
    """Giving a user a spare still rehearsing would make them wait for a step of its rehearsal."""
    spares = Spares(Runtime(tmp_path / "rt"), Config(), selectors.DefaultSelector(), fork=lambda request, path, told: None)
    kinds = {"rehearsing": (True, REHEARSING), "asleep": (False, RUNNING), "rehearsed": (True, RUNNING)}
    controls = []
    for pid, (name, (rehearsed, state)) in enumerate(kinds.items(), start=10**7):
        path = spares.runtime.users_dir / f".spare-{name}.sock"
        path.touch()
        ours, theirs = socket.socketpair()
        controls.append(theirs)
        spare = SpareChild(pid, new_slot(state), tmp_path, control=ours, path=path, apps=frozenset({"a"}), rehearsed=rehearsed)
        spares.spares.append(spare)
    given = []
    for n in range(3):
        spare = spares.take(spares.runtime.users_dir / f"user{n}.sock", "a", f"user{n}")
        assert spare is not None
        given.append(spare.path.name.removeprefix(".spare-").removesuffix(".sock"))
    assert given == ["rehearsed", "asleep", "rehearsing"]
    assert [json.loads(c.recv(100))["label"] for c in controls] == ["user2", "user1", "user0"]


def test_the_watchdogs_read_of_open_files_and_memory_matches_proc():
    pipes = [os.pipe() for _ in range(5)]
    passed = [fd for pair in pipes for fd in pair]
    asleep = "import sys, time; sys.stdout.write('asleep'); sys.stdout.flush(); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", asleep], pass_fds=passed, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.read(6) == b"asleep"  # started: its memory holds still
        listed = len(os.listdir(f"/proc/{child.pid}/fd"))
        assert open_files(child.pid) == listed == 3 + len(passed)
        assert resident_memory(child.pid) == psutil.Process(child.pid).memory_info().rss
    finally:
        child.kill()
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        for fd in passed:
            os.close(fd)


def test_a_process_gone_before_the_front_connects_is_asked_for_again_then_refused_clearly(tmp_path):
    """A process that made room for another user before its front connected is asked for
    again, a few times; one that crashed at its start is told as such, not asked for again
    (each would crash in turn, and the user would read that the server is busy)."""
    runtime = Runtime(tmp_path / "rt")
    runtime.users_dir.mkdir(parents=True, exist_ok=True)
    client = ForkServerClient(runtime, Config(), {})
    key = runtime.process_key("s" * 32, "app")
    ensured: list[object] = []
    listener = socket.socket(socket.AF_UNIX)

    async def ensure_then(appears_at: int, gone: End = End.EVICTED) -> bool:
        async def request(message: object) -> dict:
            if isinstance(message, messages.Status):
                return {"ok": True, "alive": False, "reason": gone.value}
            ensured.append(message)
            if len(ensured) == appears_at:  # the process that finally stays
                listener.bind(str(runtime.user_socket_path(key)))
                listener.listen()
            return {"ok": True, "spawned": True}

        client.request = request  # type: ignore[method-assign]
        connection, spawned = await client.connect(key, "app", "label", recheck=True)
        connection.close()
        return spawned

    with pytest.raises(SpawnRefused) as refused:
        asyncio.run(ensure_then(appears_at=0))
    assert refused.value.status == 503 and "try again" in str(refused.value)
    assert len(ensured) == ENSURE_TRIES
    ensured.clear()
    with pytest.raises(EndedAtStart) as ended:
        asyncio.run(ensure_then(appears_at=0, gone=End.CRASHED))
    assert ended.value.end is End.CRASHED and len(ensured) == 1
    ensured.clear()
    assert asyncio.run(ensure_then(appears_at=2)) and len(ensured) == 2
    listener.close()


def said(zygote: Zygote, deadline: float) -> Zygote:
    """``zygote`` once it said its import is over."""
    while zygote.importing is not None and time.monotonic() < deadline:
        select.select([zygote.line], [], [], 1)
        zygote.exits()
    assert zygote.importing is None
    return zygote


def answer(zygote: Zygote, ask: Callable[[Callable[[Any], None]], None], deadline: float) -> Any:
    """What comes of asking ``zygote`` (``ask`` sends the request with what is told), as the
    fork-server's loop takes it."""
    told: list[Any] = []
    ask(told.append)
    while not told and time.monotonic() < deadline:
        select.select([zygote.line], [], [], 1)
        zygote.exits()
        for tell in zygote.told():
            tell()
    [outcome] = told
    return outcome


def spare(zygote: Zygote, path: Path, deadline: float) -> tuple[int, int, mmap.mmap, socket.socket]:
    """A spare forked by ``zygote``, listening at ``path``: (pid, pidfd, slot, its control line)."""
    listener, (slot, slot_fd), (ours, theirs) = listen(path), shared_slot(), socket.socketpair()
    try:
        pid, pidfd = answer(zygote, lambda told: zygote.fork(SPARE, [theirs.fileno(), listener.fileno(), slot_fd], told), deadline)
    finally:
        theirs.close()
        listener.close()
        os.close(slot_fd)
    return pid, pidfd, slot, ours


def test_the_zygote_forks_tells_each_end_and_imports_in_the_next_zygote(tmp_path):
    """The line to a real zygote: an app is imported in a next zygote, its child, which says
    so and then forks (here a spare, its own child, signalled through its pidfd, its end told
    with its status); one that cannot be imported is told with its traceback."""
    runtime = Runtime(tmp_path / "rt")
    parent = os.getpid()
    zygote = Zygote.start(lambda line: serve(line, AppLoader({}, runtime), Config(), runtime.users_dir, parent, "htagweb zygote test"), [])
    deadline = time.monotonic() + 20
    try:
        failed = said(answer(zygote, lambda told: zygote.next("no_such_module:App", None, told), deadline), deadline)
        assert failed.imported is not None and "No module named 'no_such_module'" in failed.imported["traceback"]
        failed.close()
        following = said(answer(zygote, lambda told: zygote.next("htagweb.rehearsal:RehearsalApp", None, told), deadline), deadline)
        assert following.imported is None and psutil.Process(following.pid).ppid() == zygote.pid
        pid, pidfd, slot, ours = spare(following, runtime.users_dir / "spare.sock", deadline)
        forked = psutil.Process(pid)
        assert forked.ppid() == following.pid
        while forked.cmdline()[:1] != ["htagweb spare"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert forked.cmdline()[:1] == ["htagweb spare"]
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        ended: list[tuple[int, int]] = []
        while not ended and time.monotonic() < deadline:
            select.select([following.line], [], [], 1)
            ended += following.exits()
        assert ended == [(pid, signal.SIGKILL)]  # killed by signal 9: its waitpid status
        os.close(pidfd)
        ours.close()
        slot.close()
        following.stop()
        assert not alive([following.pid])
    finally:
        zygote.stop()
    assert not psutil.pid_exists(zygote.pid)


def test_a_failed_import_is_told_with_its_traceback_when_its_end_is_read_first(tmp_path, monkeypatch):
    """A next zygote says on its own line that its import failed, then ends; its end is told
    on its parent's line. The fork-server reads the two lines in no fixed order: read first,
    the end must not hide the word (seen as "Its import ended the process (exit code 0)")."""
    runtime = Runtime(tmp_path / "rt")
    (tmp_path / "broken_at_import.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # before the fork: the zygotes inherit it
    parent = os.getpid()
    zygote = Zygote.start(lambda line: serve(line, AppLoader({}, runtime), Config(), runtime.users_dir, parent, "htagweb zygote test"), [])
    imports = Imports(Config(), runtime.users_dir, selectors.DefaultSelector())
    deadline = time.monotonic() + 20
    try:
        imports.queue["broken_at_import:App"] = None
        imports.start_next(zygote.next)
        assert imports.asking == "broken_at_import:App"
        ended: list[tuple[int, int]] = []
        while not ended and time.monotonic() < deadline:
            select.select([zygote.line], [], [], 1)
            ended += zygote.exits()
            for tell in zygote.told():
                tell()
        assert imports.next is not None and imports.asking is None
        assert [pid for pid, _ in ended] == [imports.next.pid]
        assert imports.ended(*ended[0])
        failure = imports.failures["broken_at_import:App"].traceback
        assert "RuntimeError: boom at import" in failure and "ended the process" not in failure
    finally:
        imports.stop()
        zygote.stop()


def test_a_zygote_that_runs_but_does_not_answer_is_given_up_after_answer_wait(monkeypatch):
    """A zygote that is not stopped (frozen by the cgroup freezer, starved on a machine out of
    memory) is given ANSWER_WAIT, not for ever, and nothing waits for it meanwhile; the answer
    that comes later is taken as late."""
    monkeypatch.setattr(zygote_module, "ANSWER_WAIT", 0.3)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    running = Zygote(os.getpid(), ours)  # this process: it runs, and its end of the line says nothing
    told: list[object] = []
    try:
        assert not stopped(running.pid) and running.overdue() is None and running.next_look() == float("inf")
        running.fork(SPARE, [], told.append)  # returns at once
        assert theirs.recv(PACKET) == SPARE and not told
        assert 0 < running.next_look() <= zygote_module.LOOK_AFTER
        while running.overdue() is None:
            time.sleep(running.next_look())
        assert running.overdue() == "no answer within 0.3s"
        for tell in running.abandon(ZygoteStuck("no answer within 0.3s")):
            tell()
        [given_up] = told
        assert isinstance(given_up, ZygoteStuck) and running.owed == 1 and running.overdue() is None
        theirs.send(b'error {"error": "late"}')
        assert running.exits() == [] and running.owed == 0 and running.told() == [] and len(told) == 1
    finally:
        running.close()
        theirs.close()


def test_a_zygote_answers_in_order_and_its_refusal_is_told(monkeypatch):
    """Requests sent one after the other, without waiting: their answers are told to their
    askers in the order of the requests, a refusal as a ForkRefused; ends read on the way are
    kept for the reaper."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    zygote = Zygote(os.getpid(), ours)
    told: list[object] = []
    try:
        zygote.fork(SPARE, [], lambda outcome: told.append(("first", outcome)))
        zygote.fork(SPARE, [], lambda outcome: told.append(("second", outcome)))
        assert [theirs.recv(PACKET), theirs.recv(PACKET)] == [SPARE, SPARE]
        pidfd = os.pidfd_open(os.getpid())
        socket.send_fds(theirs, [b"pid 1234"], [pidfd])
        os.close(pidfd)
        theirs.send(b"exit 99 0")
        theirs.send(b'error {"error": "OSError(11, \'Resource temporarily unavailable\')"}')
        select.select([ours], [], [], 5)
        assert zygote.exits() == [(99, 0)] and not told
        for tell in zygote.told():
            tell()
        [(first, (pid, handed)), (second, refused)] = told
        assert (first, pid, second) == ("first", 1234, "second") and isinstance(refused, ForkRefused) and "Resource" in str(refused)
        os.close(handed)
        assert not zygote.asked and zygote.overdue() is None
    finally:
        zygote.close()
        theirs.close()


def test_a_stopped_zygote_is_given_up_at_once_and_its_late_fork_ended(tmp_path):
    """A zygote stopped (SIGSTOP, a debugger) cannot answer: it is given up without waiting
    ANSWER_WAIT; once it goes on, the process it forks for the request given up is killed,
    and its end told."""
    runtime = Runtime(tmp_path / "rt")
    parent = os.getpid()
    zygote = Zygote.start(lambda line: serve(line, AppLoader({}, runtime), Config(), runtime.users_dir, parent, "htagweb zygote test"), [])
    deadline = time.monotonic() + 20
    try:
        os.kill(zygote.pid, signal.SIGSTOP)
        ours, theirs = socket.socketpair()
        listener = listen(runtime.users_dir / "spare.sock")
        slot, slot_fd = shared_slot()
        told: list[object] = []
        zygote.fork(SPARE, [theirs.fileno(), listener.fileno(), slot_fd], told.append)
        for handed in (theirs, listener, ours):
            handed.close()
        os.close(slot_fd)
        while zygote.overdue() is None and time.monotonic() < deadline:
            time.sleep(zygote.next_look())
        assert zygote.overdue() == "it is stopped (SIGSTOP, or a debugger)"
        for tell in zygote.abandon(ZygoteStuck("stopped")):
            tell()
        assert isinstance(told[0], ZygoteStuck)
        assert zygote.owed == 1 and not psutil.Process(zygote.pid).children()
        os.kill(zygote.pid, signal.SIGCONT)
        ended: list[tuple[int, int]] = []
        while not ended and time.monotonic() < deadline:
            select.select([zygote.line], [], [], 1)
            ended += zygote.exits()
        [(late, status)] = ended
        assert status == signal.SIGKILL and zygote.owed == 0 and not psutil.pid_exists(late) and len(told) == 1
        slot.close()
    finally:
        os.kill(zygote.pid, signal.SIGCONT)
        zygote.stop()
    assert not psutil.pid_exists(zygote.pid)


def test_a_zygote_whose_fork_server_dies_with_its_messages_unread_ends_quietly(tmp_path, capfd):
    """The fork-server killed with the zygote's last messages unread: the zygote's next read
    fails with ECONNRESET, not an end of file. It must end as for an end of file, without a
    traceback in the server's log (each kill of a fork-server printed one, now and then)."""
    runtime = Runtime(tmp_path / "rt")
    parent = os.getpid()
    zygote = Zygote.start(lambda line: serve(line, AppLoader({}, runtime), Config(), runtime.users_dir, parent, "htagweb zygote test"), [])
    _, pidfd, slot, ours = spare(zygote, runtime.users_dir / "spare.sock", time.monotonic() + 20)
    signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # its end is told on the line, and left unread
    assert readable(zygote.line.fileno(), 20)
    zygote.line.close()
    _, status = os.waitpid(zygote.pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == Exit.STOPPED
    assert "Traceback" not in capfd.readouterr().err
    os.close(pidfd)
    ours.close()
    slot.close()


def test_a_process_is_joined_through_a_pidfd_above_1024(tmp_path):
    """A fork-server with a thousand users holds descriptors above select()'s 1024: its stop,
    which waits for its processes through their pidfds, failed there (ValueError) and left
    its socket behind."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(limit[0], 2048), limit[1]))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pidfd = os.pidfd_open(sleeper.pid)
        os.dup2(pidfd, 1500)
        os.close(pidfd)
        child = Child(sleeper.pid, new_slot(), tmp_path, pidfd=1500)
        assert not child.join(0.05)
        child.kill()
        assert child.join(10)
        child.release()
    finally:
        sleeper.kill()
        sleeper.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, limit)


def test_compact_drops_comment_lines_and_indentation_only():
    source = "// why\n(function () {\n  var a = 'x // not a comment';\n\n    // more\n  return a;\n})();\n"
    assert compact(source) == "(function () {\nvar a = 'x // not a comment';\nreturn a;\n})();"


def test_a_page_waits_for_its_apps_first_import_asking_less_and_less_often(tmp_path, monkeypatch):
    runtime = Runtime(tmp_path / "rt")
    runtime.users_dir.mkdir(parents=True, exist_ok=True)
    client = ForkServerClient(runtime, Config(), {})
    key = runtime.process_key("s" * 32, "app")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(runtime.user_socket_path(key)))
    listener.listen()
    loading = messages.error(503, "The application app is still loading: try again in a moment.", loading=True)
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        await real_sleep(0)

    async def ensure(imported_at: int) -> bool:
        asked = 0

        async def request(message: object) -> dict:
            nonlocal asked
            asked += 1
            return {"ok": True, "spawned": True} if asked == imported_at else loading

        client.request = request  # type: ignore[method-assign]
        connection, spawned = await client.connect(key, "app", "label", recheck=True)
        connection.close()
        return spawned

    monkeypatch.setattr(asyncio, "sleep", sleep)
    assert asyncio.run(ensure(imported_at=9))
    assert pauses == [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.25, 0.25]
    monkeypatch.setattr(asyncio, "sleep", real_sleep)
    monkeypatch.setattr("htagweb.client.LOADING_WAIT", 0.1)
    with pytest.raises(SpawnRefused) as refused:
        asyncio.run(ensure(imported_at=0))  # never
    assert refused.value.status == 503 and "still loading" in str(refused.value)
    listener.close()


class FakeNextZygote:
    """What Imports sees of a next zygote: its word on the import is set by the test."""

    def __init__(self, app: str, pid: int) -> None:
        self.app, self.pid, self.importing, self.imported = app, pid, app, None
        self.line, self._other = socket.socketpair()
        self.signals: list[int] = []

    def exits(self) -> list[tuple[int, int]]:
        return []

    def signal(self, signum: int) -> None:
        self.signals.append(signum)

    def close(self) -> None:
        self.line.close()
        self._other.close()


def test_imports_run_one_at_a_time_in_order_tell_failures_and_abort_the_late(tmp_path):
    imports = Imports(Config(timeout_interaction=10), tmp_path, selectors.DefaultSelector())
    forked: list[FakeNextZygote] = []

    def fork_next(app: str, source: object, told: Callable[[object], None]) -> None:
        forked.append(FakeNextZygote(app, 1000 + len(forked)))
        told(forked[-1])

    later: list[Callable[[object], None]] = []
    assert imports.refusal("a", None, lambda app, source, told: later.append(told))["loading"]  # told later
    assert imports.refusal("a", None, fork_next)["loading"] and imports.refusal("b", None, fork_next)["loading"]
    assert not forked and imports.asking == "a" and imports.holds_spares() and imports.timeout() == float("inf")
    forked.append(FakeNextZygote("a", 1000))
    later[0](forked[0])
    assert [z.app for z in forked] == ["a"] and imports.holds_spares()  # b waits its turn
    forked[0].importing = None  # "ok"
    assert imports.done() is forked[0]
    imports.start_next(fork_next)
    assert [z.app for z in forked] == ["a", "b"]
    forked[1].importing, forked[1].imported = None, {"error": "ImportError()", "traceback": "Traceback: b"}
    assert imports.done() is None
    refused = imports.refusal("b", None, fork_next)
    assert refused["status"] == 500 and refused["traceback"] == "Traceback: b" and len(forked) == 2
    imports.failures["b"].at -= RETRY_AFTER  # a while later: tried again
    assert imports.refusal("b", None, fork_next)["loading"] and len(forked) == 3
    imports.started -= 11  # past timeout_interaction: aborted, its stack read once it ended
    assert imports.done() is None and forked[2].signals == [signal.SIGABRT] and imports.timeout() == 1.0
    stack_path(tmp_path, forked[2].pid).write_text('File "b.py", line 3 in connect')
    assert imports.ended(forked[2].pid, signal.SIGABRT)
    assert "took longer than 10 s" in imports.failures["b"].traceback and 'b.py", line 3' in imports.failures["b"].traceback
    imports.failures.clear()
    imports.refusal("c", None, fork_next)
    assert imports.ended(forked[3].pid, signal.SIGTERM) and "c" not in imports.failures  # cut short: no fault of c
    imports.refusal("d", None, fork_next)
    forked[4].importing = None  # "ok", then killed before its word was taken
    assert imports.ended(forked[4].pid, signal.SIGKILL) and "d" not in imports.failures and imports.next is None
    assert imports.next is None and not imports.holds_spares() and imports.timeout() == float("inf")

    def refused(app: str, source: object, told: Callable[[object], None]) -> None:
        told(ForkRefused("too many open files"))

    imports.refusal("d", None, refused)  # no process to be had: told at the next ask, not raised
    assert imports.next is None and "could not start" in imports.refusal("d", None, fork_next)["traceback"]
    imports.next, imports.failures = None, {}

    def stuck(app: str, source: object, told: Callable[[object], None]) -> None:
        told(ZygoteStuck("no answer within 3s"))

    assert imports.refusal("e", None, stuck)["loading"]  # a new zygote was started: e waits for it, no failure
    assert imports.next is None and "e" not in imports.failures and imports.timeout() == 0.0
    imports.start_next(fork_next)
    assert forked[-1].app == "e" and imports.next is forked[-1]


def holding(kind: type, waiting: list[Reply]) -> Callable[[Line, messages.Request, Reply], None]:
    """A fork-server's handler that holds the replies to requests of ``kind`` in ``waiting``
    and answers the others at once, with their counter."""

    def handle(line: Line, request: messages.Request, reply: Reply) -> None:
        if isinstance(request, kind):
            waiting.append(reply)
        else:
            reply.set({"ok": True, "counter": getattr(request, "counter", None)})

    return handle


def test_lines_answer_in_the_order_of_the_requests_and_drop_a_garbled_or_closed_line():
    """A reply set later (a status that waits for an end) holds back those after it on the
    same line, not another line's; a bad request is answered as such; a line that closes
    is dropped and said so."""
    selector = selectors.DefaultSelector()
    waiting: list[Reply] = []
    dropped: list[Line] = []
    lines = Lines(selector, holding(messages.Status, waiting), dropped.append)
    ours, theirs = socket.socketpair()
    other, other_theirs = socket.socketpair()
    lines.add(ours)
    lines.add(other)
    theirs.sendall(messages.encode(messages.Status("k")) + messages.encode(messages.Count("a")) + b"not json\n")
    other_theirs.sendall(messages.encode(messages.Count("b")))
    for _ in range(2):
        for key, mask in selector.select(1):
            key.data(mask)
    other_theirs.settimeout(5)
    assert json.loads(other_theirs.recv(4096)) == {"ok": True, "counter": "b"}
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):  # the status waits: nothing after it leaves
        theirs.recv(4096)
    [status] = waiting
    status.set({"ok": True, "alive": False})
    [line] = [line for line in lines.open.values() if line.sock is ours]
    lines.flush(line)
    theirs.setblocking(True)
    theirs.settimeout(5)
    received = b""
    while received.count(b"\n") < 3:
        received += theirs.recv(4096)
    first, second, third = (json.loads(part) for part in received.splitlines())
    assert first == {"ok": True, "alive": False} and second == {"ok": True, "counter": "a"}
    assert third["status"] == 400 and "bad request" in third["error"]
    theirs.close()
    for key, mask in selector.select(1):
        key.data(mask)
    assert dropped == [line] and ours.fileno() == -1 and lines.filenos() == [other.fileno()]
    lines.close_all()
    other_theirs.close()
    selector.close()


def test_lines_send_a_reply_to_a_request_with_an_id_once_it_is_set():
    """A request waiting for the zygote's fork holds back no reply to a request with an id
    sent after it (a spare for the next user, a health check); a reply without an id still
    goes out after those before it."""
    selector = selectors.DefaultSelector()
    waiting: list[Reply] = []
    lines = Lines(selector, holding(messages.Ensure, waiting), lambda line: None)
    ours, theirs = socket.socketpair()
    lines.add(ours)
    ensure, count = messages.encode(messages.Ensure("k", "a:App", "l"), 1), messages.encode(messages.Count("b"), 2)
    theirs.sendall(ensure + count + messages.encode(messages.Count("c")))
    for key, mask in selector.select(1):
        key.data(mask)
    theirs.settimeout(5)
    assert json.loads(theirs.recv(4096)) == {"ok": True, "counter": "b", "id": 2}
    [forked] = waiting
    forked.set({"ok": True, "pid": 12})
    lines.flush(lines.open[ours])
    received = b""
    while received.count(b"\n") < 2:
        received += theirs.recv(4096)
    assert [json.loads(part) for part in received.splitlines()] == [{"ok": True, "pid": 12, "id": 1}, {"ok": True, "counter": "c"}]
    lines.close_all()
    theirs.close()
    selector.close()


def test_older_generations_are_asked_for_room_then_left_alone_for_a_while(tmp_path, monkeypatch):
    """What a new fork-server sees of a retired one (census.py): its count, read from the file
    it writes; asked for room by a signal at the cap, not twice while that room is under way
    (ROOM_WAIT), and not for NOT_AGAIN seconds once none came; one that ended counts nothing."""
    sent: list[int] = []
    monkeypatch.setattr(census.signal, "pidfd_send_signal", lambda fd, signum: sent.append(signum))
    clock = [100.0]
    monkeypatch.setattr(census.time, "monotonic", lambda: clock[0])
    retired = subprocess.Popen(["sleep", "30"])
    socket_path = tmp_path / "forkserver-old.sock"
    older = census.OlderGenerations()
    try:
        older.add(socket_path, retired.pid)
        assert older.processes() == 0  # nothing written yet
        census.publish(socket_path, 3)
        assert older.processes() == 3
        assert older.make_room(3) and sent == [census.ROOM_SIGNAL]
        assert older.make_room(3) and len(sent) == 1  # under way: not asked twice
        census.publish(socket_path, 2)
        assert older.make_room(2) and len(sent) == 2  # room was given, and taken: asked again
        clock[0] += census.ROOM_WAIT
        assert not older.make_room(2)  # none came: the new one makes room itself
        clock[0] += 1
        assert not older.make_room(2) and len(sent) == 2
        clock[0] += census.NOT_AGAIN
        assert older.make_room(2) and len(sent) == 3
    finally:
        retired.kill()
        retired.wait()
    assert older.processes() == 0 and not older.older  # ended: its processes with it


def test_an_upgrade_of_htagweb_is_a_new_code_generation(tmp_path, monkeypatch):
    """A worker of an upgraded htagweb (pip install, then gunicorn's HUP) must not talk to the
    fork-server of the old one, whose protocol may differ, though both live in site-packages."""
    package = tmp_path / "htagweb"
    shutil.copytree(Path(generation.__file__).parent, package, ignore=shutil.ignore_patterns("js", "__pycache__"))
    monkeypatch.setattr(generation, "__file__", str(package / "generation.py"))
    before = generation.code_generation([])
    assert generation.code_generation([]) == before
    (package / "forkserver" / "messages.py").write_text((package / "forkserver" / "messages.py").read_text() + "\n# 1.1\n")
    assert generation.code_generation([]) != before


def zygotes_answered_by_the_test(tmp_path: Path) -> tuple[Runtime, selectors.BaseSelector, Zygotes, socket.socket]:
    """The fork-server's zygotes, the current one this process: the test answers on the line's
    other end (returned last), as a zygote would."""
    runtime = Runtime(tmp_path / "rt")
    selector = selectors.DefaultSelector()
    zygotes = Zygotes(
        runtime, Config(), AppLoader({}, runtime), selector, resource.getrlimit(resource.RLIMIT_NOFILE),
        inherited=list, stopping=lambda: False, on_current_gone=lambda: None, on_gone=lambda: None,
    )  # fmt: skip
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    zygotes.current = Zygote(os.getpid(), ours)
    return runtime, selector, zygotes, theirs


def test_a_burst_of_forks_waits_its_turn_instead_of_filling_the_zygotes_line(tmp_path):
    """A thousand users at once, the spares spent: sent all at once, their requests filled the
    zygote's line (some 270 fit), which read as a zygote that does not read it, and the rest of
    the burst was refused. At most IN_FLIGHT are sent; each answer lets the next one in."""
    runtime, selector, zygotes, theirs = zygotes_answered_by_the_test(tmp_path)
    ours = zygotes.current.line
    theirs.setblocking(False)
    told: list[object] = []

    def received() -> int:
        count = 0
        while True:
            try:
                _, handed, _, _ = socket.recv_fds(theirs, PACKET, 3)
            except BlockingIOError:
                return count
            for fd in handed:
                os.close(fd)
            count += 1

    try:
        for n in range(300):
            zygotes.fork_listening(SPARE, runtime.users_dir / f"{n}.sock", told.append)
        zygotes.tell()
        assert received() == IN_FLIGHT and len(zygotes.waiting_room) == 300 - IN_FLIGHT and not told
        theirs.send(b'error {"error": "no memory"}')
        select.select([ours], [], [], 5)
        assert zygotes.ends() == []
        zygotes.tell()
        [refused] = told
        assert isinstance(refused, ForkRefused) and str(refused) == "no memory"
        assert received() == 1 and len(zygotes.waiting_room) == 300 - IN_FLIGHT - 1
        assert zygotes.current.overdue() is None and not zygotes.given_up
    finally:
        for kept in zygotes.kept:
            kept.close()
        zygotes.current.close()
        theirs.close()
        selector.close()


def test_a_process_that_ends_right_after_its_fork_is_taken_as_that_process(tmp_path):
    """A zygote says "pid N" and, once N ended, "exit N". A fork-server busy elsewhere reads
    both in one go: the answer must be told before the end is taken, else the end is that of
    no process it knows, dropped, and N counted as alive for ever."""
    runtime, selector, zygotes, theirs = zygotes_answered_by_the_test(tmp_path)
    ours = zygotes.current.line
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    pidfd = os.pidfd_open(quick.pid)
    told: list[object] = []
    try:
        zygotes.fork_listening(SPARE, runtime.users_dir / "quick.sock", told.append)
        for fd in socket.recv_fds(theirs, PACKET, 3)[1]:
            os.close(fd)
        quick.wait()
        socket.send_fds(theirs, [b"pid %d" % quick.pid], [pidfd])
        theirs.send(b"exit %d 0" % quick.pid)
        select.select([ours], [], [], 5)
        assert zygotes.ends() == [(quick.pid, 0)] and len(told) == 1  # told before its end was taken
        [(pid, child_pidfd, slot, control)] = told
        assert pid == quick.pid
        os.close(child_pidfd)
        slot.close()
        control.close()
    finally:
        os.close(pidfd)
        zygotes.current.close()
        theirs.close()
        selector.close()
