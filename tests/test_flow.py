"""What flows between the browser, the front and the user process: back-pressure
when a process does not read, and the session store kept off the event loop and
out of the way of clicks that change nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import threading
from pathlib import Path

from helpers import APP, User, click, count

NAP = """
import time as _time


def _nap(self, event):
    _time.sleep(5)


App.nap = _nap
_init = App.init


def _init_with_nap(self):
    _init(self)
    Tag.button("nap", _id="nap", _onclick=self.nap)


App.init = _init_with_nap
"""

COUNTING_STORE = """
from htagweb.stores import SQLiteStore


class CountingStore(SQLiteStore):
    asked = 0

    async def load(self, sid):
        CountingStore.asked += 1
        return await super().load(sid)

    async def version(self, sid):
        CountingStore.asked += 1
        return await super().version(sid)


async def asked(request):
    return PlainTextResponse(str(CountingStore.asked))


app = WebServerWS(App, runtime_dir=RUNTIME_DIR, session_store=CountingStore(RUNTIME_DIR + "/counted.sqlite3"))
app.add_route("/asked", asked)
app.add_route("/set", set_value)
app.add_route("/get", get_values)
"""


def run(coro):
    return asyncio.run(coro)


def peak_memory(pid: int) -> int:
    """The process' high-water mark of resident memory, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_process_that_does_not_read_holds_the_client_back(server):
    """While a handler runs, the process reads nothing: what the browser sends meanwhile
    must wait in the network (back-pressure), not pile up in the front's memory."""
    srv = server(APP + NAP + "\napp = WebServerWS(App, runtime_dir=RUNTIME_DIR)\n")
    # 1 MiB that compression cannot shrink on the wire, the frame just within max_body_size
    padding = base64.b64encode(os.urandom(3 * 2**18 - 300)).decode()
    frame = json.dumps({"id": "nowhere", "event": "click", "data": {"pad": padding}})
    frames = 60

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            async with user.ws() as ws:
                await ws.recv()
                before = peak_memory(srv.proc.pid)
                await ws.send(json.dumps({"id": "nap", "event": "click", "data": {"callback_id": "nap"}}))
                for _ in range(frames):
                    await ws.send(frame)
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
                return peak_memory(srv.proc.pid) - before

    grown = run(scenario())
    # what the client could send while the handler ran (tens of MiB here) must not have piled up in the front
    assert grown < 16 * 2**20, f"the front's memory grew by {grown // 2**20} MiB for {frames} MiB sent"


def test_a_locked_database_does_not_stop_the_worker(server):
    """Another process holds the SQLite write lock: a click whose session change must wait for it
    must not freeze the worker's event loop, where other users' clicks are served."""
    srv = server(APP + "\napp = WebServerWS(App, runtime_dir=RUNTIME_DIR)\napp.add_route('/get', get_values)\n")

    async def scenario():
        async with User(srv.url) as writer, User(srv.url) as other:
            await writer.page()
            await other.page()
            async with writer.ws() as writer_ws, other.ws() as other_ws:
                await writer_ws.recv(), await other_ws.recv()
                answered = threading.Event()
                holding = threading.Event()
                lock = threading.Thread(target=_hold_write_lock, args=(srv.runtime_dir / "sessions.sqlite3", holding, answered))
                lock.start()
                await asyncio.to_thread(holding.wait, 20)
                writing = asyncio.create_task(click(writer_ws, "session", value="kept", callback_id="w"))
                await asyncio.sleep(0.5)  # let the write reach the lock first
                other_click = await click(other_ws, "inc")
                still_locked = not answered.is_set() and lock.is_alive()
                answered.set()
                assert count(other_click["updates"]["count"]) == 1
                assert still_locked, "the other user's click was answered only once the lock was gone"
                assert (await writing)["result"] == {"from_app": "kept"}
                await asyncio.to_thread(lock.join, 20)
            assert (await writer.http.get("/get")).json() == {"from_app": "kept"}

    run(scenario())


def test_a_database_locked_past_the_store_wait_is_told_to_its_users(server):
    """Another process holds the SQLite write lock past the store's wait (a backup, a stuck
    tool): a route's write is refused with a 503 its user can read, not a 500 and a
    traceback; a click that writes the session is told its change was not saved; a click
    that does not is answered; once the lock is gone, writes go through."""
    from htagweb.front import STORE_UNSAVED
    from htagweb.sessions import STORE_DOWN
    from htagweb.stores import LOCK_WAIT

    routes = "app.add_route('/set', set_value)\napp.add_route('/get', get_values)\n"
    srv = server(APP + "\napp = WebServerWS(App, runtime_dir=RUNTIME_DIR)\n" + routes)
    database = srv.runtime_dir / "sessions.sqlite3"

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            await user.http.get("/set", params={"v": "before"})
            async with user.ws() as ws:
                await ws.recv()
                answered, holding = threading.Event(), threading.Event()
                lock = threading.Thread(target=_hold_write_lock, args=(database, holding, answered, LOCK_WAIT + 30))
                lock.start()
                try:
                    await asyncio.to_thread(holding.wait, 20)
                    assert count((await click(ws, "inc"))["updates"]["count"]) == 1
                    refused, unsaved = await asyncio.gather(
                        user.http.get("/set", params={"v": "locked out"}), click(ws, "session", value="unsaved", callback_id="w")
                    )
                    assert refused.status_code == 503 and STORE_DOWN in refused.text and refused.headers["retry-after"]
                    assert unsaved["action"] == "error" and unsaved["traceback"] == STORE_UNSAVED
                    await ws.wait_closed()
                    assert ws.close_code == 1013
                finally:
                    answered.set()
                    await asyncio.to_thread(lock.join, 20)
            assert (await user.http.get("/get")).json() == {"from_route": "before"}
            assert (await user.http.get("/set", params={"v": "after"})).text == "ok"
            assert (await user.http.get("/get")).json() == {"from_route": "after"}

    run(scenario())
    assert srv.log.count("database is locked") == 2 and "session changes were not saved" in srv.log and "Traceback" not in srv.log


def _hold_write_lock(path: Path, holding: threading.Event, answered: threading.Event, most: float = 15) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    holding.set()
    answered.wait(most)
    conn.execute("ROLLBACK")
    conn.close()


def test_clicks_that_change_nothing_cost_no_store_round_trip(server):
    srv = server(APP + COUNTING_STORE)

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            async with user.ws() as ws:
                await ws.recv()
                before = int((await user.http.get("/asked")).text)
                for n in range(1, 21):
                    assert count((await click(ws, "inc", callback_id=str(n)))["updates"]["count"]) == n
                after = int((await user.http.get("/asked")).text)
                assert after - before == 1, f"{after - before} store reads for 20 clicks"  # the /asked request's own load
                assert (await user.http.get("/set", params={"v": "fresh"})).text == "ok"
                assert (await click(ws, "session", callback_id="s"))["result"] == {"from_route": "fresh"}

    run(scenario())
