"""Production set-ups, with the real server commands: several workers under
uvicorn and gunicorn, a worker killed under load, a stop and a restart."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time

import psutil
import pytest
from helpers import User, click, count, new_users_pids, pid, server_source

WORKER_ROUTE = """
import os as _os
from starlette.responses import PlainTextResponse as _Text
async def _worker(request):
    return _Text(str(_os.getpid()))
app.add_route("/worker", _worker)
"""


def run(coro):
    return asyncio.run(coro)


SETUPS = {
    "uvicorn-4-uvloop": (False, ["--workers", "4", "--loop", "uvloop"]),
    "uvicorn-4-asyncio": (False, ["--workers", "4", "--loop", "asyncio"]),
    "gunicorn-4": (True, ["-w", "4"]),
    "gunicorn-4-preload": (True, ["-w", "4", "--preload"]),
}


@pytest.mark.parametrize("setup", SETUPS)
def test_every_worker_reaches_the_same_process_and_session(server, setup):
    gunicorn, args = SETUPS[setup]
    srv = server(server_source("WebServerWS") + WORKER_ROUTE, *args, gunicorn=gunicorn)

    async def scenario():
        async with User(srv.url) as user:
            await user.http.get("/set", params={"v": "kept"})
            workers = await workers_reached(srv.url)
            assert len(workers) >= 2, "the test must spread connections over several workers"
            pages = await asyncio.gather(*(user.page() for _ in range(40)))
            assert len({pid(p.text) for p in pages}) == 1
            expected = 0
            for n in range(12):  # WebSockets and POSTs, each on a new connection: any worker may take it
                expected += 1
                if n % 2:
                    async with user.ws() as ws:
                        await ws.recv()
                        assert count((await click(ws, "inc"))["updates"]["count"]) == expected
                else:
                    response = await User(srv.url).http.post(
                        "/event",
                        content=json.dumps({"id": "inc", "event": "click", "data": {"callback_id": f"c{n}"}, "fallback": True}),
                        headers={"X-HTAG-TOKEN": user.csrf, "Cookie": user.cookie_header},
                    )
                    assert count(json.loads(response.json()["payloads"][-1])["updates"]["count"]) == expected
            assert (await user.http.get("/get")).json() == {"from_route": "kept"}

    run(scenario())
    assert len(re.findall(r"user process spawned", srv.log)) == 1
    assert len(re.findall(r"fork-server \d+ serving", srv.log)) == 1


async def workers_reached(url: str) -> set[int]:
    """The workers that took new connections: rounds of 20 at once until two differ (on a
    loaded machine one worker may accept a whole round before the others wake up)."""
    workers: set[int] = set()

    async def worker() -> int:
        async with User(url) as client:
            return int((await client.http.get("/worker")).text)

    for _ in range(50):
        workers |= set(await asyncio.gather(*(worker() for _ in range(20))))
        if len(workers) >= 2:
            break
    return workers


def holder_of(srv, ws) -> int | None:
    """The worker that holds the server's end of a client's WebSocket."""
    port = ws.transport.get_extra_info("sockname")[1]
    for worker in gunicorn_workers(srv):
        if any(c.raddr and c.raddr.port == port for c in worker.net_connections(kind="tcp")):
            return worker.pid
    return None


def gunicorn_workers(srv) -> list[psutil.Process]:
    return [p for p in psutil.Process(srv.proc.pid).children() if p.is_running()]


def test_sigkill_of_a_worker_under_load(server):
    srv = server(server_source("WebServerWS"), "-w", "2", gunicorn=True)

    async def scenario():
        users = [User(srv.url) for _ in range(6)]
        pids, sockets = [], []
        for n, user in enumerate(users):
            pids.append(pid((await user.page()).text))
            await user.http.get("/set", params={"v": f"user{n}"})
            ws = await user.ws().__aenter__()
            await ws.recv()
            await click(ws, "inc")
            sockets.append(ws)
        for _ in range(30):  # WebSockets on both workers: one loaded worker may have taken them all
            holders = [holder_of(srv, ws) for ws in sockets]
            if None not in holders and len(set(holders)) >= 2:
                break
            await sockets[-1].close()
            sockets[-1] = await users[-1].ws().__aenter__()
            await sockets[-1].recv()
        assert None not in holders and len(set(holders)) >= 2, "the test must spread WebSockets over both workers"
        victim = psutil.Process(holders[0])
        load = [asyncio.create_task(click(ws, "inc", callback_id="load")) for ws in sockets]
        victim.kill()
        await asyncio.gather(*load, return_exceptions=True)
        srv.wait_log(r"Booting worker with pid: \d+[\s\S]*Booting worker with pid: \d+[\s\S]*Booting worker with pid: \d+")
        survivors = 0
        for n, (user, ws) in enumerate(zip(users, sockets, strict=True)):
            try:  # a user whose WebSocket was on a surviving worker notices nothing
                reply = await click(ws, "inc", callback_id="after")
                survivors += 1
                assert count(reply["updates"]["count"]) == 3
            except Exception:  # a user of the killed worker reconnects to the same state
                page = await user.page()
                assert pid(page.text) == pids[n]
                assert count(page.text) in (1, 2)  # 2 if its load click got through before the kill
            assert (await user.http.get("/get")).json() == {"from_route": f"user{n}"}
            assert pid((await user.page()).text) == pids[n]
            await ws.close()
            await user.http.aclose()
        assert survivors >= 1

    run(scenario())
    assert len(re.findall(r"user process spawned", srv.log)) == 6  # no process lost, none re-created


def test_sigterm_ends_everything_and_restart_keeps_sessions(server):
    srv = server(server_source("WebServerWS"), "-w", "2", gunicorn=True)

    async def first_life():
        cookies, pids = [], []
        for n in range(3):
            async with User(srv.url) as user:
                await user.http.get("/set", params={"v": f"user{n}"})
                pids.append(pid((await user.page()).text))
                cookies.append(dict(user.http.cookies))
        return cookies, pids

    cookies, pids = run(first_life())
    srv.halt(signal.SIGTERM, group=False)  # to the master, as a service manager does; no process or socket may be left
    destroyed = sorted(map(int, (srv.workdir / "destroyed.log").read_text().split()))
    assert destroyed == sorted(pids)  # on_destroy ran in every user process
    srv.restart()

    async def second_life():
        for n, jar in enumerate(cookies):
            async with User(srv.url) as user:
                user.http.cookies.update(jar)
                assert (await user.http.get("/get")).json() == {"from_route": f"user{n}"}  # session kept (SQLite)
                page = await user.page()
                assert count(page.text) == 0 and pid(page.text) not in pids  # app state is new

    run(second_life())


@pytest.mark.parametrize("button, limit", [("hog", "memory limit"), ("files", "open files limit")])
def test_resource_limits_kill_only_the_offender(server, button, limit):
    srv = server(server_source("WebServerWS", memory_limit=150 * 2**20, max_open_files=64, metrics=True))

    async def scenario():
        async with User(srv.url) as offender, User(srv.url) as other:
            first = pid((await offender.page()).text)
            await other.page()
            async with offender.ws() as ws, other.ws() as other_ws:
                await ws.recv(), await other_ws.recv()
                await ws.send(json.dumps({"id": button, "event": "click", "data": {"callback_id": "x"}}))
                while (message := json.loads(await ws.recv())).get("action") != "error":
                    pass
                assert f"went over its {limit}" in message["traceback"]
                assert count((await click(other_ws, "inc"))["updates"]["count"]) == 1  # the other user noticed nothing
            again = await offender.page()
            assert pid(again.text) != first and count(again.text) == 0
            assert "htagweb_resource_kills_total 1" in (await other.http.get("/_htagweb/metrics")).text

    run(scenario())
    srv.wait_log(rf"user process killed: .*\({limit}: ")


def test_a_burst_of_200_new_users_all_get_their_page(server):
    """200 first requests at once: more than a listening socket's backlog of
    connections to the fork-server, were each request to open its own."""
    srv = server(server_source("WebServerWS", max_processes=1000, new_processes_per_minute=0))  # all from 127.0.0.1

    async def arrive() -> tuple[int, int]:
        async with User(srv.url) as user:
            page = await user.page()
            return count(page.text), pid(page.text)

    async def burst() -> list[tuple[int, int]]:
        return await asyncio.gather(*(arrive() for _ in range(200)))

    pages = asyncio.run(burst())
    assert all(shown == 0 for shown, _ in pages)
    assert len({process for _, process in pages}) == 200  # one process each
    assert "Traceback" not in srv.log


def test_sigterm_to_every_process_as_systemd_stops_a_service(server):
    """systemd's default stop signals every process of the service at once: user
    processes run on_destroy, sleeping spares simply die, and that is no warning."""
    srv = server(server_source("WebServerWS", spare_processes=3))
    [user_pid] = run(new_users_pids(srv.url, 1))
    deadline = time.monotonic() + 20
    while len(srv.processes()) < 7 and time.monotonic() < deadline:  # worker, fork-server, zygote, user, 3 spares
        time.sleep(0.05)
    processes = srv.processes()
    assert len(processes) == 7
    for process in processes:
        process.send_signal(signal.SIGTERM)
    psutil.wait_procs(processes, timeout=20)
    assert not srv.processes()
    assert (srv.workdir / "destroyed.log").read_text().split() == [str(user_pid)]
    assert "spare user process" not in srv.log and "WARNING" not in srv.log
    assert not list((srv.runtime_dir / "u").iterdir())  # no socket left


def test_a_limit_of_open_files_too_low_for_max_processes_is_said_at_start(server):
    """The fork-server holds a pidfd and a slot per process: under a hard limit of 256 open
    files, max_processes=500 cannot be reached, and the log says so (and what to do) at start.
    Its processes start all the same: their own limit of open files (max_open_files + 16) is
    kept under the hard limit (every user process crashed at start when it was above)."""
    limited = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
        "from srv import app\n"
        "app.run(port=0)\n"
    )
    srv = server(server_source("WebServerWS", max_processes=500), files={"limited.py": limited}, script="limited.py")
    srv.wait_log(r"WARNING.*at most 256 open files \(RLIMIT_NOFILE\), and max_processes=500 needs some 1164 .*raise the limit")
    assert count(run(_page(srv.url))) == 0  # it serves all the same


async def _page(url: str) -> str:
    async with User(url) as user:
        return (await user.page()).text
