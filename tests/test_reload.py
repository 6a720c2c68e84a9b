"""Deploying new code without downtime: gunicorn's HUP, or uvicorn's with ``--workers``
(new workers, old ones retired gracefully), serves new users the new code, while users
already in keep their process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import psutil
import pytest
from helpers import User, alive, click, count, pid

from htagweb import manage

APP_MODULE = """
import os
from htag import Tag, State


class App(Tag.App):
    def init(self):
        self.count = State(0)
        Tag.p("{version}", _id="version")
        Tag.p(f"pid={{os.getpid()}}", _id="pid")
        Tag.p(lambda: f"Count: {{self.count.value}}", _id="count")
        Tag.button("+1", _id="inc", _onclick=self.inc)

    def inc(self, event):
        self.count.value += 1
"""

SERVER = """
from starlette.responses import PlainTextResponse
from htagweb import WebServerWS


async def login(request):
    request.session.rotate()
    return PlainTextResponse("signed in")


app = WebServerWS("appmod:App", runtime_dir=RUNTIME_DIR)
app.add_route("/login", login)
"""


def run(coro):
    return asyncio.run(coro)


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(what)


def workers(master: psutil.Process) -> set[int]:
    """The master's worker processes (not multiprocessing's resource tracker, which uvicorn's spawning starts)."""
    found = set()
    for child in master.children():
        try:
            if child.is_running() and "resource_tracker" not in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def deploy(srv, master: psutil.Process, version: str) -> None:
    """New code, then HUP: once the master's workers are all new ones."""
    old_workers = workers(master)
    module = srv.workdir / "appmod.py"
    module.write_text(APP_MODULE.format(version=version))
    stamp = time.time() + 2
    os.utime(module, (stamp, stamp))  # a new modification time, whatever the clock's resolution
    master.send_signal(signal.SIGHUP)
    wait_for(lambda: not old_workers & workers(master) and len(workers(master)) == len(old_workers), "the workers were not replaced")


@pytest.mark.parametrize("runner", ["gunicorn", "uvicorn"])
def test_hup_serves_new_users_the_new_code_and_keeps_users_in(server, runner):
    files = {"appmod.py": APP_MODULE.format(version="version one")}
    if runner == "gunicorn":
        srv = server(SERVER, "-w", "2", gunicorn=True, files=files)
    else:
        srv = server(SERVER, "--workers", "2", files=files)
    master = psutil.Process(srv.proc.pid)

    async def before():
        async with User(srv.url) as user:
            page = await user.page()
            assert "version one" in page.text
            async with user.ws() as ws:
                await ws.recv()
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
            return dict(user.http.cookies), pid(page.text)

    async def after(cookies: dict, old_pid: int):
        old_user = User(srv.url)
        old_user.http.cookies.update(cookies)
        async with User(srv.url) as newcomer:
            page = await newcomer.page()
            assert "version two" in page.text, "a new user after the reload got the old code"
            assert pid(page.text) != old_pid
        page = await old_user.page()
        assert "version one" in page.text and pid(page.text) == old_pid and count(page.text) == 1  # kept its process
        async with old_user.ws() as ws:
            await ws.recv()
            assert count((await click(ws, "inc"))["updates"]["count"]) == 2
            assert {user.pid for user in manage.users(srv.runtime_dir)} >= {old_pid}  # ps sees every generation
            label = old_user.http.cookies["htagweb_session"][:8]
            assert [user.pid for user in manage.kill(label, runtime_dir=srv.runtime_dir)] == [old_pid]
            message = json.loads(await ws.recv())  # why it ended, asked of the old generation's fork-server
            assert message["action"] == "error" and "ended by the server's administrator" in message["traceback"]
        await old_user.http.aclose()

    cookies, old_pid = run(before())
    assert len(workers(master)) == 2
    deploy(srv, master, "version two")
    run(after(cookies, old_pid))
    assert len(re.findall(r"fork-server \d+ serving", srv.log)) == 2


def test_a_user_of_the_old_code_who_signs_in_after_a_reload_keeps_its_process(server):
    """A session id that changes (a login route calls ``rotate()``) moves the session's
    processes to the new id, those of older code generations' fork-servers too: a user
    already in before the reload keeps its page's state, not a fresh process of the new code."""
    srv = server(SERVER, "-w", "2", gunicorn=True, files={"appmod.py": APP_MODULE.format(version="version one")})
    master = psutil.Process(srv.proc.pid)

    async def before():
        async with User(srv.url) as user:
            page = await user.page()
            async with user.ws() as ws:
                await ws.recv()
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
            return dict(user.http.cookies), pid(page.text)

    async def after(cookies: dict, old_pid: int):
        async with User(srv.url) as user:
            user.http.cookies.update(cookies)
            login = await user.http.get("/login")
            assert login.text == "signed in" and login.cookies["htagweb_session"] != cookies["htagweb_session"]
            user.http.cookies.clear()
            user.http.cookies.update({"htagweb_session": login.cookies["htagweb_session"]})
            page = await user.page()
            assert "version one" in page.text and pid(page.text) == old_pid and count(page.text) == 1

    cookies, old_pid = run(before())
    deploy(srv, master, "version two")
    run(after(cookies, old_pid))


def test_a_stopped_process_of_the_old_code_is_ended_when_a_click_waits_for_it(server):
    """A user already in before a reload keeps its process, which the retired fork-server
    holds. Stopped there (SIGSTOP, a debugger) with a click waiting, it is
    ended after ``timeout_interaction`` and its user told, as before the reload: the front asks
    the older code generations' fork-servers too, not only its own, which never knew it."""
    source = SERVER.replace("runtime_dir=RUNTIME_DIR", "runtime_dir=RUNTIME_DIR, timeout_interaction=1")
    srv = server(source, "-w", "2", gunicorn=True, files={"appmod.py": APP_MODULE.format(version="version one")})
    master = psutil.Process(srv.proc.pid)

    async def before():
        async with User(srv.url) as user:
            page = await user.page()
            return dict(user.http.cookies), pid(page.text)

    async def after(cookies: dict, old_pid: int):
        async with User(srv.url) as user:
            user.http.cookies.update(cookies)
            page = await user.page()
            assert "version one" in page.text and pid(page.text) == old_pid
            process = psutil.Process(old_pid)
            async with user.ws() as ws:
                await ws.recv()
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
                await asyncio.sleep(0.3)  # its slot says idle again just after its answer: stopped between clicks
                process.suspend()
                try:
                    answer = await asyncio.wait_for(click(ws, "inc"), 60)  # the bound ends a stuck test
                finally:
                    if process.is_running():
                        process.resume()
            assert answer["action"] == "error" and "took longer than 1s to answer" in answer["traceback"]
            wait_for(lambda: not process.is_running() or process.status() == psutil.STATUS_ZOMBIE, "the stopped process lives on")

    cookies, old_pid = run(before())
    deploy(srv, master, "version two")
    run(after(cookies, old_pid))
    srv.wait_log(rf"WARNING.*user process killed: pid {old_pid}, .*\(stopped, by a signal or a debugger")


def test_a_stop_after_a_retired_fork_server_was_killed_leaves_nothing_behind(server):
    """A retired fork-server (a reload's) killed (the OOM killer) leaves its socket, and those
    of its users' processes, which ended with it. The stop of the current one must not wait
    for that socket to go, and must take it, and its users' sockets, with the rest."""
    srv = server(SERVER, "-w", "2", gunicorn=True, files={"appmod.py": APP_MODULE.format(version="version one")})
    master = psutil.Process(srv.proc.pid)

    async def arrive() -> int:
        async with User(srv.url) as user:
            return pid((await user.page()).text)

    old_pid = run(arrive())
    old_forkserver = next(p for p in psutil.Process(old_pid).parents() if "htagweb fork-server" in " ".join(p.cmdline()))
    deploy(srv, master, "version two")
    srv.wait_log(rf"fork-server {old_forkserver.pid} \(code generation \w+\) retired by newer code")
    old_sockets = set(srv.runtime_dir.rglob("*.sock"))
    old_forkserver.kill()
    wait_for(lambda: not psutil.pid_exists(old_pid), "the old user process outlived its fork-server")
    assert {path for path in old_sockets if path.exists()} == old_sockets  # left behind by the kill
    srv.halt()  # fails on a process or a socket left


def test_after_a_reload_metrics_count_the_users_of_every_code_generation(server):
    """A user in before a reload keeps its process, held by the retired fork-server: the
    server's figures (health, metrics) count it, beside the new code's users."""
    source = SERVER.replace("runtime_dir=RUNTIME_DIR", "runtime_dir=RUNTIME_DIR, metrics=True, spare_processes=0")
    srv = server(source, "-w", "2", gunicorn=True, files={"appmod.py": APP_MODULE.format(version="version one")})
    master = psutil.Process(srv.proc.pid)

    async def scenario():
        async with User(srv.url) as old_user, User(srv.url) as new_user, User(srv.url) as observer:
            assert "version one" in (await old_user.page()).text
            deploy(srv, master, "version two")  # blocks this loop a moment: nothing else runs on it
            assert "version two" in (await new_user.page()).text
            health = (await observer.http.get("/_htagweb/health")).json()
            metrics = (await observer.http.get("/_htagweb/metrics")).text
        assert health["user_processes"] == 2 and "htagweb_user_processes 2\n" in metrics
        assert "htagweb_spawns_total 2\n" in metrics  # one spawned by each generation's fork-server

    run(scenario())


def test_max_processes_holds_across_code_generations(server):
    """After a reload the retired fork-server keeps its users' processes; they count towards
    ``max_processes`` with the new code's. At the cap, a new user's room is made in the older
    generation first (its least recently active idle process ends, on_destroy runs), not on
    top of it: before, the server held twice the cap after a reload."""
    options = "max_processes=2, spare_processes=0, max_processes_per_address=0"  # every client from 127.0.0.1
    source = SERVER.replace("runtime_dir=RUNTIME_DIR", f"runtime_dir=RUNTIME_DIR, {options}")
    srv = server(source, "-w", "2", gunicorn=True, files={"appmod.py": APP_MODULE.format(version="version one")})
    master = psutil.Process(srv.proc.pid)

    async def scenario():
        async with User(srv.url) as first, User(srv.url) as second, User(srv.url) as third, User(srv.url) as fourth:
            old_pids = [pid((await user.page()).text) for user in (first, second)]
            deploy(srv, master, "version two")
            for user in (third, fourth):
                page = await user.page()
                assert page.status_code == 200 and "version two" in page.text
            wait_for(
                lambda: not alive(old_pids),
                "the old code's processes were not ended to make room",
            )
            assert (await first.http.get("/_htagweb/health")).json()["user_processes"] == 2
            assert sorted(user.pid for user in manage.users(srv.runtime_dir)) == sorted(
                [pid((await third.page()).text), pid((await fourth.page()).text)]
            )

    run(scenario())
    assert len(re.findall(r"user process evicted: .*room for a user of newer code", srv.log)) == 2
