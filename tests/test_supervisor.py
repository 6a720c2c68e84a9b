"""Faults of the fork-server and its user processes, against real servers: a
fork-server killed, a crash, a hung handler, a client that stops reading; and
what ``ps`` shows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import websockets
from helpers import TLS, User, alive, click, count, forked_by, pid, server_source, title

from htagweb import manage
from htagweb.forkserver.imports import RETRY_AFTER


def run(coro):
    return asyncio.run(coro)


def wait_for(predicate, what: str, timeout: float = 20.0):
    """Wait for the system to reach a state (not a timing assertion: the bound only ends a stuck test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(what)


def wait_for_quietly(predicate, timeout: float = 20.0) -> bool:
    """Whether the system reached a state within ``timeout`` (the caller says what it lacks)."""
    try:
        wait_for(predicate, "", timeout)
    except AssertionError:
        return False
    return True


def held(process: int) -> list[str]:
    """What the descriptors of ``process`` point to (one closed while listed is left out)."""
    targets = []
    for fd in os.listdir(f"/proc/{process}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{process}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return targets


def clean(targets: list[str], slots: int) -> bool:
    """No pidfd, and ``slots`` slots (a user process maps its own)."""
    return "anon_inode:[pidfd]" not in targets and sum("memfd:htagweb-slot" in target for target in targets) == slots


def forkserver_of(srv) -> psutil.Process:
    return psutil.Process(int(srv.wait_log(r"fork-server (\d+) serving").group(1)))


async def page_and_zygote(srv, user: User, forked: int) -> tuple[int, psutil.Process, psutil.Process]:
    """The pid of ``user``'s process, once it loaded the page and the fork-server has ``forked``
    processes (``user``'s and the spares); the fork-server; its zygote."""
    first = pid((await user.page()).text)
    forkserver = forkserver_of(srv)
    wait_for(lambda: len(forked_by(forkserver)) >= forked, "no spares were forked")
    [zygote] = forkserver.children()
    return first, forkserver, zygote


def test_user_processes_end_with_their_fork_server_and_users_are_told(server):
    """The fork-server SIGKILLed (or chosen by the OOM killer): its user processes must not
    live on, orphaned and uncounted (here they would live forever: no inactivity timeout)."""
    srv = server(server_source("WebServerWS", timeout_inactivity=0, spare_processes=2))

    async def scenario():
        async with User(srv.url) as watcher, User(srv.url) as reader:
            watcher_pid = pid((await watcher.page()).text)
            reader_pid = pid((await reader.page()).text)
            forkserver = forkserver_of(srv)
            wait_for(lambda: len(forked_by(forkserver)) >= 4, "no spares were forked")
            children = {p.pid for p in forked_by(forkserver)}
            assert {watcher_pid, reader_pid} <= children
            async with watcher.ws() as ws:
                await ws.recv()
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
                forkserver.kill()
                outlived = "user processes outlived their fork-server"
                await asyncio.to_thread(wait_for, lambda: not alive(children), outlived)
                message = json.loads(await ws.recv())
                assert message["action"] == "error" and "Reload the page" in message["traceback"]
            async with reader.ws() as ws:  # a page loaded before: its state is gone, a fresh process must not pretend otherwise
                message = json.loads(await ws.recv())
                assert message["action"] == "error" and "Reload the page" in message["traceback"]
            again = await reader.page()
            assert pid(again.text) not in children and count(again.text) == 0
        assert len(re.findall(r"fork-server \d+ serving", srv.log)) == 2

    run(scenario())


def test_a_killed_zygote_takes_its_processes_with_it_and_is_replaced(server):
    """The zygote SIGKILLed (or chosen by the OOM killer): the processes it forked end
    (their death signal), are reaped by the fork-server, their users are told to reload,
    and a new zygote forks for the next users; nothing is left orphaned."""
    srv = server(server_source("WebServerWS", timeout_inactivity=0, spare_processes=2))

    async def scenario():
        async with User(srv.url) as user:
            first, forkserver, zygote = await page_and_zygote(srv, user, 3)
            forked = {p.pid for p in forked_by(forkserver)}
            async with user.ws() as ws:
                await ws.recv()
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
                zygote.kill()
                await asyncio.to_thread(wait_for, lambda: not alive(forked), "processes outlived their zygote")
                message = json.loads(await ws.recv())
                assert message["action"] == "error" and "Reload the page" in message["traceback"]
            again = await user.page()
            assert pid(again.text) not in forked | {first} and count(again.text) == 0
            async with user.ws() as ws:
                await ws.recv()
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
            [new_zygote] = forkserver.children()
            assert new_zygote.pid != zygote.pid and title(new_zygote) == f"htagweb zygote {srv.runtime_dir}"
            assert pid(again.text) in {p.pid for p in new_zygote.children()}
            # the new zygote was forked while the fork-server still held the dying processes' pidfds
            # and slots: none of them reaches it, nor the processes it forks. A zygote holds a slot
            # and a pidfd for the moment it forks a spare (the pool refills meanwhile): only what
            # stays is a leak
            for process, slots in ((new_zygote.pid, 0), (pid(again.text), 1)):
                if not wait_for_quietly(lambda process=process, slots=slots: clean(held(process), slots)):
                    raise AssertionError(f"process {process} holds {held(process)}")
            return first

    first = run(scenario())
    srv.wait_log(r"ERROR.*fork-server: its zygote ended \(signal 9\): its processes end with it, a new one is started")
    srv.wait_log(rf"INFO.*user process ended: pid {first}, session \S+, app srv:App \(lost\)")  # counted, its session told
    assert "Traceback" not in srv.log


def test_a_zygote_that_stops_answering_holds_back_no_user(server):
    """The zygote stopped (SIGSTOP, a debugger, a machine out of memory): the fork-server must
    not wait for its answer for ever while every new user waits for it. Its processes live
    on; a new zygote forks for the next users; the fork it was asked for, made once it goes
    on, is ended; nothing is left."""
    srv = server(server_source("WebServerWS", timeout_inactivity=0, spare_processes=1))

    async def scenario():
        async with User(srv.url) as before:
            first, forkserver, zygote = await page_and_zygote(srv, before, 2)
            own = {p.pid for p in zygote.children()}
            zygote.suspend()
            try:
                async with before.ws() as ws:
                    await ws.recv()
                    newcomers = []
                    for _ in range(3):  # more than the pool of spares: a fork is asked for
                        async with User(srv.url) as newcomer:
                            page = await asyncio.wait_for(newcomer.page(), 60)  # the bound ends a stuck test
                            assert count(page.text) == 0
                            newcomers.append(pid(page.text))
                    assert count((await click(ws, "inc"))["updates"]["count"]) == 1
                    listed = {process.pid for process in await asyncio.to_thread(manage.users, srv.runtime_dir)}
                    assert {first, *newcomers} <= listed
                    [new_zygote] = [p for p in forkserver.children() if p.pid != zygote.pid]
                    assert set(newcomers) - own <= {p.pid for p in new_zygote.children()}
                    zygote.resume()
                    await asyncio.to_thread(srv.wait_log, r"zygote \d+ went on: ended the process \d+ it forked too late")
                    wait_for(lambda: {p.pid for p in zygote.children()} <= own, "the late fork lives on")
                    assert first in {p.pid for p in zygote.children()}
                    assert count((await click(ws, "inc"))["updates"]["count"]) == 2
            finally:
                zygote.resume()

    run(scenario())
    stuck = r"ERROR.*fork-server: its zygote is stuck \(it is stopped \(SIGSTOP, or a debugger\)\): it keeps its processes, a new one forks"
    srv.wait_log(stuck)  # at once: not after waiting ANSWER_WAIT for an answer that cannot come


def test_a_zygote_slow_to_answer_holds_back_no_other_request(freezer, server):
    """A zygote that runs but does not answer (frozen by the cgroup freezer, starved on a
    machine out of memory) reads as neither stopped nor ended: the fork-server gives it
    ANSWER_WAIT. Its loop must go on meanwhile: the load balancer's health check and the
    metrics are answered while a new user's process is still asked for. That user then gets
    a new zygote's process; the frozen zygote's late forks are ended once it thaws."""
    srv = server(server_source("WebServerWS", timeout_inactivity=0, spare_processes=1, metrics=True))

    async def scenario():
        async with User(srv.url) as before:
            first, forkserver, zygote = await page_and_zygote(srv, before, 2)
            own = {p.pid for p in zygote.children()}
            freezer.freeze(zygote.pid)
            try:
                async with User(srv.url) as spared, User(srv.url) as newcomer:
                    assert count((await spared.page()).text) == 0  # the spare; its replacement is asked of the zygote
                    arriving = asyncio.create_task(newcomer.page())  # a fork, asked of the zygote too
                    while True:
                        metrics = (await before.http.get("/_htagweb/metrics")).text
                        assert "its zygote is stuck" not in srv.log, "the fork-server's loop waited for the zygote's answer"
                        assert not arriving.done()
                        if "htagweb_starting_processes 1\n" in metrics:
                            break
                    assert (await before.http.get("/_htagweb/health")).json() == {"status": "ok", "user_processes": 2}
                    page = await asyncio.wait_for(arriving, 60)  # the bound ends a stuck test
                    assert count(page.text) == 0
                    [new_zygote] = [p for p in forkserver.children() if p.pid != zygote.pid]
                    assert pid(page.text) in {p.pid for p in new_zygote.children()}
                    freezer.thaw()
                    await asyncio.to_thread(srv.wait_log, r"zygote \d+ went on: ended the process \d+ it forked too late")
                    wait_for(lambda: {p.pid for p in zygote.children()} <= own, "a late fork lives on")
                    async with before.ws() as ws:
                        await ws.recv()
                        assert count((await click(ws, "inc"))["updates"]["count"]) == 1
                    assert pid((await before.page()).text) == first
            finally:
                freezer.thaw()

    run(scenario())
    srv.wait_log(r"ERROR.*fork-server: its zygote is stuck \(no answer within 3s\): it keeps its processes, a new one forks")
    assert "Traceback" not in srv.log


def test_a_user_whose_process_ends_under_a_stuck_zygote_gets_a_new_one(server):
    """A stuck zygote cannot tell the fork-server that one of its processes ended (it reaps
    them): that user must not be refused ("busy, try again") until it goes on, for ever if
    it never does. The process' pidfd says it ended: its user gets a new process, and its
    end, once told, is logged as what it was."""
    srv = server(server_source("WebServerWS", timeout_inactivity=0, spare_processes=1))

    async def scenario():
        async with User(srv.url) as user:
            first, _, zygote = await page_and_zygote(srv, user, 2)
            zygote.suspend()
            try:
                async with user.ws() as ws:
                    await ws.recv()
                    assert "stopped unexpectedly" in (await click(ws, "crash"))["traceback"]
                for _ in range(2):  # the spare, then a fork: asked of a new zygote
                    page = await asyncio.wait_for(user.page(), 60)  # the bound ends a stuck test
                    assert page.status_code == 200 and count(page.text) == 0 and pid(page.text) != first
                    async with user.ws() as ws:
                        await ws.recv()
                        assert count((await click(ws, "inc"))["updates"]["count"]) == 1
                    async with user.ws() as ws:
                        await ws.recv()
                        await click(ws, "crash")
            finally:
                zygote.resume()
            await asyncio.to_thread(srv.wait_log, rf"WARNING.*user process crashed: pid {first}, .*crashed \(exit code 3\)")

    run(scenario())
    assert "Traceback" not in srv.log


def test_a_server_that_may_fork_no_more_tells_new_users_and_recovers(pids_limit, server):
    """The machine gives no more processes (a container's or a unit's limit of tasks: fork
    fails with EAGAIN): new users are told to try again, users already in click on, the
    fork-server stays; once processes can be had, new users are served again."""
    srv = server(server_source("WebServerWS", timeout_inactivity=0, spare_processes=2, metrics=True))

    async def scenario():
        async with User(srv.url) as before:
            assert count((await before.page()).text) == 0
            forkserver = forkserver_of(srv)
            wait_for(lambda: len(forked_by(forkserver)) >= 3, "no spares were forked")
            [zygote] = forkserver.children()
            pids_limit(zygote.pid, 1)  # the zygote alone: each fork it tries fails
            async with before.ws() as ws:
                await ws.recv()
                answers = []
                for _ in range(4):  # the two spares, then forks refused
                    async with User(srv.url) as newcomer:
                        answers.append(await newcomer.page())
                assert [count(answer.text) for answer in answers[:2]] == [0, 0]
                refused = answers[-1]
                assert refused.status_code == 503 and "try again" in refused.text and refused.headers["Retry-After"]
                refusal = r"WARNING.*fork-server: cannot fork a spare user process \(.*Resource temporarily unavailable"
                await asyncio.to_thread(srv.wait_log, refusal)
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
                assert forkserver.is_running() and forkserver.status() != psutil.STATUS_ZOMBIE
                assert "htagweb_fork_failures_total 2" in (await before.http.get("/_htagweb/metrics")).text
                pids_limit(zygote.pid, "max")

                async def served() -> bool:
                    async with User(srv.url) as newcomer:
                        answer = await newcomer.page()
                        return answer.status_code == 200 and count(answer.text) == 0

                for _ in range(100):
                    if await served():
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("no new user was served once processes could be had again")
                assert count((await click(ws, "inc"))["updates"]["count"]) == 2

    run(scenario())
    assert len(re.findall(r"fork-server \d+ serving", srv.log)) == 1
    assert "Traceback" not in srv.log


def test_a_fork_server_out_of_descriptors_keeps_a_connection_waiting_and_stays(server):
    """A fork-server with no descriptor left (max_processes above its limit of open files,
    warned at start) cannot accept a new connection: a worker restarted by its master, or
    ``htagweb ps``. It must not die of it (``accept`` fails with EMFILE), which ended every
    user's process: the connection waits, users already in click on, and it is served once a
    descriptor is free."""
    srv = server(server_source("WebServerWS", timeout_inactivity=0, spare_processes=1))

    async def scenario():
        async with User(srv.url) as user:
            assert count((await user.page()).text) == 0
            session = user.http.cookies["htagweb_session"][:8]
            forkserver = forkserver_of(srv)
            limit = forkserver.rlimit(psutil.RLIMIT_NOFILE)
            in_use = {int(fd) for fd in os.listdir(f"/proc/{forkserver.pid}/fd")}
            forkserver.rlimit(psutil.RLIMIT_NOFILE, (min(set(range(len(in_use) + 1)) - in_use), limit[1]))  # none free
            try:
                listing = asyncio.create_task(asyncio.to_thread(manage.users, srv.runtime_dir))
                await asyncio.to_thread(srv.wait_log, r"WARNING.*fork-server: cannot accept a connection \(.*Too many open files")
                async with user.ws() as ws:
                    await ws.recv()
                    assert count((await click(ws, "inc"))["updates"]["count"]) == 1
                assert not listing.done()
            finally:
                forkserver.rlimit(psutil.RLIMIT_NOFILE, limit)
            assert [found.session for found in await listing] == [session]
            await asyncio.to_thread(srv.wait_log, r"INFO.*fork-server: connections are accepted again")
            assert forkserver.is_running()

    run(scenario())
    assert len(re.findall(r"fork-server \d+ serving", srv.log)) == 1
    assert "Traceback" not in srv.log


def test_a_fork_server_that_cannot_be_reached_is_told_as_such_not_as_an_internal_error(server):
    """The fork-server killed while a page waits for it, and the connection made afresh dies
    too (it raced the death: accepted by the dying fork-server, then reset). The user must
    get a page that says to try again, not "Internal Server Error" and a traceback in the
    log; once a fork-server can be had, the next load is served."""
    srv = server(server_source("WebServerWS", spare_processes=1))

    async def scenario():
        async with User(srv.url) as before:
            assert count((await before.page()).text) == 0
        forkserver = forkserver_of(srv)
        [path] = srv.runtime_dir.glob("forkserver*.sock")
        forkserver.kill()
        forkserver.wait(10)
        path.unlink()
        dying = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # accepts, then resets each connection
        dying.bind(str(path))
        dying.listen(16)
        stop = threading.Event()

        def reset_each() -> None:
            dying.settimeout(0.1)
            while not stop.is_set():
                try:
                    sock, _ = dying.accept()
                except TimeoutError:
                    continue
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

        resetter = threading.Thread(target=reset_each)
        resetter.start()
        try:
            async with User(srv.url) as newcomer:
                refused = await newcomer.page()
        finally:
            stop.set()
            resetter.join()
            dying.close()
            path.unlink()
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert "try again in a moment" in refused.text
        async with User(srv.url) as later:
            assert count((await later.page()).text) == 0

    run(scenario())
    assert re.search(r"WARNING.*the fork-server could not be reached \(session .{8}, app srv:App\): .*(reset|closed|Broken pipe)", srv.log)
    assert "Traceback" not in srv.log and "Exception in ASGI application" not in srv.log


@pytest.mark.parametrize("factory", ["WebServerWS", "WebServer"])
def test_a_stopped_user_process_with_a_click_waiting_is_ended_after_timeout_interaction(server, factory):
    """A user process stopped (SIGSTOP, a debugger) never starts the
    handler of a click: its slot never says busy, and the watchdog of hung handlers never
    fired. Its user waited for ever. Past ``timeout_interaction`` it is ended, its user told
    as for a hung handler; a user whose process is stopped but who asks nothing is left alone."""
    srv = server(server_source(factory, timeout_interaction=1))

    async def scenario():
        async with User(srv.url) as user, User(srv.url) as idle:
            process = psutil.Process(pid((await user.page()).text))
            idle_process = psutil.Process(pid((await idle.page()).text))
            idle_process.suspend()
            if factory == "WebServerWS":
                async with user.ws() as ws:
                    await ws.recv()
                    assert count((await click(ws, "inc"))["updates"]["count"]) == 1
                    await asyncio.sleep(0.3)  # its slot says idle again just after its answer: stopped between clicks
                    process.suspend()
                    answer = await asyncio.wait_for(click(ws, "inc"), 60)  # the bound ends a stuck test
                    assert answer["action"] == "error"
                    told = answer["traceback"]
            else:
                assert (await user.post_event("inc")).status_code == 200
                await asyncio.sleep(0.3)
                process.suspend()
                answer = await asyncio.wait_for(user.post_event("inc"), 60)
                [payload] = answer.json()["payloads"]
                told = json.loads(payload)["traceback"]
            assert "took longer than 1s to answer" in told and "Reload" in told
            wait_for(lambda: not alive([process.pid]), "the stopped process lives on")
            again = await user.page()
            assert again.status_code == 200 and count(again.text) == 0 and pid(again.text) != process.pid
            assert idle_process.status() == psutil.STATUS_STOPPED
            idle_process.resume()

    run(scenario())
    stopped = r"WARNING.*user process killed: pid \d+, session \S{8}, app srv:App \(stopped, by a signal or a debugger, with a request"
    srv.wait_log(stopped + r" waiting for 1s\)")


def test_a_server_stops_while_its_zygote_is_stopped(server):
    """A stopped zygote keeps a SIGTERM pending: the server's stop must not wait for it for
    ever (the fixture's stop fails on any process or socket left)."""
    srv = server(server_source("WebServerWS", spare_processes=1))

    async def scenario():
        async with User(srv.url) as user:
            assert count((await user.page()).text) == 0

    run(scenario())
    [zygote] = forkserver_of(srv).children()
    zygote.suspend()
    srv.stop()
    assert not zygote.is_running()


def test_a_crash_is_told_and_counted_as_a_crash_not_an_expiry(server):
    srv = server(server_source("WebServerWS", metrics=True))

    async def scenario():
        async with User(srv.url) as user:
            first = pid((await user.page()).text)
            async with user.ws() as ws:
                await ws.recv()
                message = await click(ws, "bail")
                assert message["action"] == "error" and "stopped unexpectedly" in message["traceback"]
            metrics = (await user.http.get("/_htagweb/metrics")).text
            assert "htagweb_crashes_total 1\n" in metrics and "htagweb_expiries_total 0\n" in metrics
            assert pid((await user.page()).text) != first

    run(scenario())
    srv.wait_log(r"WARNING.*user process crashed: pid \d+, session \S{8}, app srv:App")


def test_a_hung_handler_leaves_its_stack_in_the_log(server):
    srv = server(server_source("WebServerWS", timeout_interaction=1))
    line = next(n for n, text in enumerate((srv.workdir / "srv.py").read_text().splitlines(), 1) if "time.sleep(3600)" in text)

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            label = user.http.cookies["htagweb_session"][:8]
            async with user.ws() as ws:
                await ws.recv()
                message = await click(ws, "hang")
                assert "took longer than 1s" in message["traceback"]
            return label

    label = run(scenario())
    logged = srv.wait_log(rf"WARNING.*session {re.escape(label)}, app srv:App[^\n]*\n(?:[^\n]*\n)*?[^\n]*srv\.py\", line (\d+) in hang")
    assert int(logged.group(1)) == line


def test_process_titles_say_what_each_process_is(server):
    srv = server(server_source("WebServerWS", spare_processes=2))
    [user_pid] = [pid(text) for text in run(_pages(srv.url, 1))]
    forkserver = forkserver_of(srv)
    wait_for(lambda: len(forked_by(forkserver)) >= 3, "no spares were forked")
    assert title(forkserver) == f"htagweb fork-server {srv.runtime_dir}"
    assert [title(p) for p in forkserver.children()] == [f"htagweb zygote {srv.runtime_dir}"]
    label = re.search(r"user process spawned: pid \d+, session (\S{8})", srv.log).group(1)
    assert title(psutil.Process(user_pid)) == f"htagweb user srv:App {label}"
    # a spare forked a moment ago shows its parent's title until its first steps are done
    spares = [p for p in forked_by(forkserver) if p.pid != user_pid]
    wait_for(lambda: all(title(spare) == "htagweb spare" for spare in spares), f"spare titles: {[title(p) for p in spares]}")


async def _pages(url: str, n: int) -> list[str]:
    texts = []
    for _ in range(n):
        async with User(url) as user:
            texts.append((await user.page()).text)
    return texts


def _forkserver_line(srv) -> socket.socket:
    line = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    [path] = srv.runtime_dir.glob("forkserver*.sock")  # one code generation
    line.connect(str(path))
    line.settimeout(20)
    return line


def _reply(line: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = line.recv(65536)
        assert chunk, "the fork-server closed the line"
        data += chunk
    return json.loads(data)


def test_a_status_request_does_not_hold_up_other_workers(server):
    """A worker asks why a process is gone while it is still alive: the fork-server waits
    for its end, but not by sleeping while every other worker's requests wait."""
    srv = server(server_source("WebServerWS"))
    run(_pages(srv.url, 1))
    [key] = [p.stem for p in (srv.runtime_dir / "u").glob("*.sock") if not p.name.startswith(".")]
    asking, other = _forkserver_line(srv), _forkserver_line(srv)
    try:
        asking.sendall(json.dumps({"op": "status", "key": key}).encode() + b"\n")
        time.sleep(0.1)  # let the status request in first
        other.sendall(b'{"op": "stats"}\n')
        assert _reply(other)["processes"] == 1
        asking.setblocking(False)
        try:
            early = asking.recv(65536)
        except BlockingIOError:
            early = b""
        assert early == b"", "the status reply came first: the fork-server held the other request until it was done"
        asking.setblocking(True)
        assert _reply(asking)["alive"] is True
    finally:
        asking.close()
        other.close()


def test_a_worker_that_stops_reading_replies_does_not_stall_the_fork_server(server):
    srv = server(server_source("WebServerWS"))
    greedy = _forkserver_line(srv)
    flood = threading.Thread(target=_send_quietly, args=(greedy, b'{"op": "stats"}\n' * 100_000), daemon=True)
    flood.start()  # some 20 MB of replies, never read
    try:

        async def newcomer():
            async with User(srv.url) as user:
                return count((await user.page()).text)

        assert run(newcomer()) == 0
    finally:
        greedy.shutdown(socket.SHUT_RDWR)
        greedy.close()
        flood.join(20)


def _send_quietly(line: socket.socket, data: bytes) -> None:
    try:
        line.sendall(data)
    except OSError:
        pass


def test_an_app_whose_import_hangs_holds_back_no_other_user(server):
    """A "module:Class" app is imported once the server is up. An import that never ends (a
    database out of reach at import time, a bug) must not stop the fork-server: the other
    apps' new users are served, users already in click on, the app's visitors are told it
    is loading, and once ``timeout_interaction`` is over the log says where it hung."""
    files = {"stuck.py": "import time\n\n\ndef connect():\n    while True:\n        time.sleep(0.1)\n\n\nconnect()\n"}
    source = server_source("WebServerWS", spare_processes=1, timeout_interaction=8) + 'app.add_app("/stuck", "stuck:App")\n'
    srv = server(source, files=files)

    async def scenario():
        async with User(srv.url) as before, User(srv.url) as visitor, User(srv.url) as after:
            assert count((await before.page()).text) == 0
            async with before.ws() as ws:
                await ws.recv()
                stuck = asyncio.create_task(visitor.page("/stuck"))
                await asyncio.to_thread(srv.wait_log, r"importing stuck:App")
                assert count((await after.page()).text) == 0  # another app's new user
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
                importing = [p for p in psutil.process_iter(["cmdline"]) if "importing stuck:App" in " ".join(p.info["cmdline"] or [])]
                assert len(importing) == 1  # what ps shows
                answer = await stuck
                assert answer.status_code == 503 and "still loading" in answer.text and answer.headers["Retry-After"]
                logged = await asyncio.to_thread(srv.wait_log, r"stuck:App: its import has taken over 8s; its Python stack(.|\n)*")
                assert 'stuck.py", line 6 in connect' in logged.group(0)
                again = await visitor.page("/stuck")
                assert again.status_code == 500 and "could not be loaded" in again.text
                assert not importing[0].is_running()
                assert count((await click(ws, "inc"))["updates"]["count"]) == 2

    run(scenario())


def test_a_killed_zygote_takes_the_zygote_of_an_imported_app_with_it(server):
    """An app named by a string runs in a next zygote, forked by the first: the first SIGKILLed,
    both zygotes' processes end and their users are told; new zygotes serve both apps."""
    files = {"strapp.py": "from htag import Tag\n\n\nclass App(Tag.App):\n    def init(self):\n        Tag.p('string app')\n"}
    srv = server(server_source("WebServerWS", timeout_inactivity=0, spare_processes=1) + 'app.add_app("/str", "strapp:App")\n', files=files)

    async def scenario():
        async with User(srv.url) as user:
            counter = pid((await user.page()).text)
            assert "string app" in (await user.page("/str")).text
            forkserver = forkserver_of(srv)
            [first] = forkserver.children()
            [following] = [p for p in first.children() if title(p).startswith("htagweb zygote ")]
            forked = {p.pid for p in forked_by(forkserver)}
            assert counter in forked and any(p.pid in forked for p in following.children())
            async with user.ws() as ws, user.ws("/str/ws") as str_ws:
                await ws.recv()
                await str_ws.recv()
                first.kill()
                await asyncio.to_thread(wait_for, lambda: not alive(forked | {following.pid}), "processes outlived their zygote")
                for socket_ in (ws, str_ws):
                    message = json.loads(await socket_.recv())
                    assert message["action"] == "error" and "Reload the page" in message["traceback"]
            assert count((await user.page()).text) == 0
            assert "string app" in (await user.page("/str")).text
            zygotes = [p for p in forkserver.children(recursive=True) if title(p).startswith("htagweb zygote ")]
            assert len(zygotes) == 2 and not {first.pid, following.pid} & {p.pid for p in zygotes}

    run(scenario())
    srv.wait_log(r"ERROR.*fork-server: an older zygote ended \(signal 9\): its processes end with it, and the zygotes forked from it")


def test_a_server_stops_while_an_app_is_still_importing(server):
    """The import that never ends is no reason to stay: the server's stop ends its zygote too
    (the fixture's stop fails on any process or socket left)."""
    files = {"stuck.py": "import time\nwhile True:\n    time.sleep(0.1)\n"}
    source = server_source("WebServerWS", spare_processes=1, timeout_interaction=0) + 'app.add_app("/stuck", "stuck:App")\n'
    srv = server(source, files=files)

    async def scenario():
        async with User(srv.url) as visitor:
            answer = await visitor.page("/stuck")
            assert answer.status_code == 503 and "still loading" in answer.text

    run(scenario())
    importing = [p for p in psutil.process_iter(["cmdline"]) if "importing stuck:App" in " ".join(p.info["cmdline"] or [])]
    assert len(importing) == 1
    srv.stop()
    assert not importing[0].is_running()


def test_an_import_cut_short_by_its_zygotes_death_is_tried_again(server):
    """The zygote that forked an import's zygote is killed: that import ends with it, through
    no fault of the app; the next visit imports it again (no 500)."""
    files = {"stuck.py": "import time\nwhile True:\n    time.sleep(0.1)\n"}
    source = server_source("WebServerWS", spare_processes=1, timeout_interaction=0) + 'app.add_app("/stuck", "stuck:App")\n'
    srv = server(source, files=files)

    async def scenario():
        async with User(srv.url) as visitor:
            assert (await visitor.page("/stuck")).status_code == 503
            [first] = forkserver_of(srv).children()
            first.kill()
            await asyncio.to_thread(srv.wait_log, r"the import of stuck:App was cut short \(its zygote ended\)")
            again = await visitor.page("/stuck")
            assert again.status_code == 503 and "still loading" in again.text
            assert len(re.findall(r"importing stuck:App in a new zygote", srv.log)) == 2

    run(scenario())


def test_an_app_whose_import_ends_the_process_is_told_as_such(server):
    """An import that ends its process (``os._exit``, a crash in a C extension) is a fault of the
    app: its visitors get a 500, the log says how it ended, the other apps are served."""
    files = {"quits.py": "import os\nos._exit(3)\n"}
    source = server_source("WebServerWS", spare_processes=1) + 'app.add_app("/quits", "quits:App")\n'
    srv = server(source, files=files)

    async def scenario():
        async with User(srv.url) as visitor:
            answer = await visitor.page("/quits")
            assert answer.status_code == 500 and "could not be loaded" in answer.text
            assert count((await visitor.page()).text) == 0

    run(scenario())
    srv.wait_log(r"ERROR.*cannot load htag app quits:App: its zygote ended while importing it \(exit code 3\)")


@contextlib.contextmanager
def busy_fork_server(srv, lines: int = 4) -> Iterator[None]:
    """The fork-server kept busy by other workers' streams of stats requests, each of which reads
    the zygotes' lines: a zygote's answer "pid N" and, right behind it, "exit N" for a process
    that ended at once are read in one go before the loop tells anyone of the answer."""
    busy = [_forkserver_line(srv) for _ in range(lines)]
    stop = threading.Event()

    def ask(line: socket.socket) -> None:
        try:
            while not stop.is_set():
                line.sendall(b'{"op": "stats"}\n' * 1000)
        except OSError:
            pass

    def read(line: socket.socket) -> None:
        replies = line.makefile("rb")
        try:
            while replies.readline():
                pass
        except OSError:
            pass

    threads = [threading.Thread(target=job, args=(line,), daemon=True) for line in busy for job in (ask, read)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for line in busy:
            line.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(20)
        for line in busy:
            line.close()


def test_an_import_that_ends_its_process_while_the_fork_server_is_busy_is_told_as_such(server):
    """The end of a next zygote whose import ended it at once, read with the answer that forked
    it, was the end of no zygote the fork-server knew yet: dropped, it left the app "still
    loading" for ever (seen in CI on a slow machine)."""
    files = {"quits.py": "import os\nos._exit(3)\n"}
    source = server_source("WebServerWS", spare_processes=1) + 'app.add_app("/quits", "quits:App")\n'
    srv = server(source, files=files)
    ended = r"ERROR.*cannot load htag app quits:App: its zygote ended while importing it \(exit code 3\)"
    srv.wait_log(ended)  # its first import, as the server started
    time.sleep(RETRY_AFTER)  # then the next visit imports it again

    async def scenario():
        async with User(srv.url) as visitor:
            return await visitor.page("/quits")

    with busy_fork_server(srv):
        answer = run(scenario())
    assert answer.status_code == 500 and "could not be loaded" in answer.text
    assert len(re.findall(ended, srv.log)) == 2


def test_a_user_process_that_ends_at_once_while_the_fork_server_is_busy_is_told_and_forgotten(server):
    """A development folder's app is imported in its user process: one whose import ends that
    process ends it right after its fork. Its end, read with the answer that forked it, was
    dropped: the fork-server counted a process that was gone, for ever."""
    crashes = "import os\nos._exit(3)\nfrom htag import Tag\n\n\nclass App(Tag.App):\n    pass\n"
    srv = server("", files={"quits.py": crashes}, command=["."])

    async def scenario():
        async with User(srv.url) as visitor:
            return [await visitor.page("/quits") for _ in range(3)]

    with busy_fork_server(srv):
        answers = run(scenario())
    assert [answer.status_code for answer in answers] == [502] * 3
    assert all("The application stopped unexpectedly" in answer.text for answer in answers)
    assert manage.users(srv.runtime_dir) == []
    assert len(re.findall(r"user process crashed: .*app folder:file:quits, crashed \(exit code 3\)", srv.log)) == 3


def test_a_signal_during_an_import_writes_into_none_of_its_files(server):
    """The zygote wakes on SIGCHLD through a pipe; a next zygote closes that pipe before the
    import. An import that opens files and runs a subprocess (SIGCHLD) must find in them
    only what it wrote: a signal's byte in a file the import opened is data corrupted."""
    module = (
        "import os, subprocess\n"
        "files = [open(os.path.join(os.path.dirname(__file__), f'out{i}.bin'), 'wb') for i in range(4)]\n"
        "subprocess.run(['true'], check=True)\n"
        "for f in files:\n"
        "    f.write(b'mine')\n"
        "    f.close()\n"
        "from htag import Tag\n\n\nclass App(Tag.App):\n    def init(self):\n        Tag.p('imported')\n"
    )
    srv = server(server_source("WebServerWS", spare_processes=1) + 'app.add_app("/opens", "opens:App")\n', files={"opens.py": module})

    async def scenario():
        async with User(srv.url) as visitor:
            assert "imported" in (await visitor.page("/opens")).text

    run(scenario())
    assert [(srv.workdir / f"out{i}.bin").read_bytes() for i in range(4)] == [b"mine"] * 4


def test_a_process_that_dies_before_its_websocket_opens_is_told_not_a_bare_403(server):
    """The front reached the process (its socket accepted the connection) and the process died
    before it answered the WebSocket's opening: made room for another user, crashed, killed.
    The browser is told why with the status of that end, before the WebSocket opens; a close
    before the accept reaches it as a bare 403, read as a refusal of its session."""
    srv = server(server_source("WebServerWS"))

    async def scenario():
        async with User(srv.url) as user:
            process = psutil.Process(pid((await user.page()).text))
            process.suspend()  # its listening socket still takes the front's connection
            opening = asyncio.create_task(user.ws().__aenter__())
            await asyncio.sleep(0.5)
            process.kill()
            with pytest.raises(websockets.InvalidStatus) as refused:
                await asyncio.wait_for(opening, 60)
            answer = refused.value.response
            assert answer.status_code == 502 and b"stopped unexpectedly" in answer.body and b"Reload" in answer.body

    run(scenario())


#: a page that takes a moment to render and is larger than a socket's buffer: its process is
#: still writing it when the test acts
SLOW_BIG_PAGE = """
import os, time
from pathlib import Path
from htag import Tag
from htagweb import WebServerWS

class App(Tag.App):
    def init(self):
        Path(__file__).with_name("rendering").write_text(str(os.getpid()))
        time.sleep(1)
        Tag.pre("x" * 4_000_000)

app = WebServerWS(App, runtime_dir=RUNTIME_DIR, spare_processes=0)
"""


def test_a_process_that_dies_while_it_sends_a_page_is_told_not_a_cut_page(server):
    """The process answered the page's start and died while it wrote the body (made room for
    another user, crashed, killed). The browser gets a page that says why, not the start of a
    200 cut short, and the front's log no traceback: the start goes out with the body."""
    srv = server(SLOW_BIG_PAGE)
    front = psutil.Process(srv.proc.pid)
    rendering = srv.workdir / "rendering"

    async def scenario():
        async with httpx.AsyncClient(base_url=srv.url, verify=TLS, timeout=60) as http:
            loading = asyncio.create_task(http.get("/"))
            await asyncio.to_thread(wait_for, rendering.exists, "the page's process never rendered it")
            front.suspend()  # it reads the page no more: the process blocks in the middle of its body
            try:
                process = psutil.Process(int(rendering.read_text()))
                await asyncio.to_thread(wait_for, lambda: _back_in_its_loop(process), "the process never sent its page")
                process.kill()
            finally:
                front.resume()
            return await loading

    page = run(scenario())
    assert page.status_code == 502 and "stopped unexpectedly" in page.text and "Reload" in page.text, page.text[:300]
    assert "Traceback" not in srv.log


#: where an event loop waits (/proc/PID/wchan; the second on older kernels)
EPOLL_WAITS = {"do_epoll_wait", "ep_poll"}


def _back_in_its_loop(process: psutil.Process) -> bool:
    """Whether ``process`` waits in its event loop: its page rendered and sent, all but what the
    socket took kept in its transport for a front that reads no more."""
    try:
        return process.status() == psutil.STATUS_SLEEPING and Path(f"/proc/{process.pid}/wchan").read_text() in EPOLL_WAITS
    except (psutil.Error, OSError):
        return False


def test_a_stopped_process_ends_with_its_killed_zygote(server):
    """A user process stopped (a debugger attached) when its zygote is
    killed keeps the SIGTERM of its death signal pending: stopped, it would never end, nor
    leave the fork-server's count. The fork-server, its subreaper, continues it: it ends."""
    srv = server(server_source("WebServerWS", timeout_inactivity=0, spare_processes=1))

    async def scenario():
        async with User(srv.url) as user:
            first, _, zygote = await page_and_zygote(srv, user, 2)  # the user's and one spare
            psutil.Process(first).suspend()
            zygote.kill()
            await asyncio.to_thread(wait_for, lambda: not alive([first]), "a stopped process outlived its zygote")

    try:
        run(scenario())
    finally:
        for process in srv.processes():  # the stopped one resumed, so that the fixture's stop can end it
            try:
                if process.status() == psutil.STATUS_STOPPED:
                    process.resume()
            except psutil.Error:  # ended meanwhile
                pass
