"""Spare user processes: the rehearsed one takes the next user, the sleeping ones
take a crowd of new users arriving at once, and the pool keeps within its bounds."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
from collections.abc import Callable

import psutil
from helpers import User, forked_by, pid, server_source
from htag import Tag

from htagweb import WebServerWS, bridge
from htagweb.config import Config
from htagweb.process import UserProcess
from htagweb.rehearsal import rehearse
from htagweb.slot import Watchdog, new_slot


def frames_of(http_only: bool) -> list[tuple[int, bytes]]:
    return asyncio.run(rehearse(UserProcess(Config(http_only=http_only), Watchdog(new_slot()))))


def test_rehearsal_serves_a_page_a_websocket_and_a_click(caplog):
    caplog.set_level(logging.INFO)
    frames = frames_of(http_only=False)
    assert not [r for r in caplog.records if r.name == "htag"]  # no log line of a visit nobody made
    assert logging.getLogger("htag").level == logging.NOTSET
    kinds = [kind for kind, _ in frames]
    assert kinds[:2] == [bridge.RESPONSE_START, bridge.RESPONSE_BODY]
    assert b'<p id="count">Count: 0</p>' in frames[1][1]
    assert bridge.WS_ACCEPT in kinds
    answers = [json.loads(body) for kind, body in frames if kind == bridge.WS_TEXT_OUT]
    assert answers[-1]["callback_id"] == "1"
    assert answers[-1]["updates"]["count"] == '<p id="count">Count: 1</p>'


def test_rehearsal_over_plain_http_loads_the_page_only():
    frames = frames_of(http_only=True)
    assert [kind for kind, _ in frames] == [bridge.RESPONSE_START, bridge.RESPONSE_BODY]
    assert b"window.use_pure_http=window.use_fallback=true" in frames[1][1]


async def arrive(url: str) -> int:
    """A new user: the page, then the WebSocket's initial payload (the arrival is over)."""
    async with User(url) as user:
        process = pid((await user.page()).text)
        async with user.ws() as ws:
            await ws.recv()
        return process


def forkserver_of(srv) -> psutil.Process:
    return psutil.Process(int(srv.wait_log(r"fork-server (\d+) serving").group(1)))


def wait_for(condition: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + 20
    while not (result := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert result, what
    return result


def spares(forkserver: psutil.Process, users: set[int]) -> set[int]:
    return {p.pid for p in forked_by(forkserver) if p.pid not in users and p.status() != psutil.STATUS_ZOMBIE}


def pool_of(forkserver: psutil.Process, users: set[int], size: int) -> Callable[[], set[int] | None]:
    """A condition for :func:`wait_for`: the spares, once there are ``size`` of them."""

    def condition() -> set[int] | None:
        found = spares(forkserver, users)
        return found if len(found) == size else None

    return condition


def test_next_user_gets_the_spare_forked_after_the_first_arrival(server):
    srv = server(server_source("WebServerWS"))
    forkserver = forkserver_of(srv)
    first = asyncio.run(arrive(srv.url))
    ready = wait_for(lambda: spares(forkserver, {first}), "no spare user process was forked after the first arrival")
    second = asyncio.run(arrive(srv.url))
    assert second in ready  # the second user took a spare: no fork on its way
    assert not re.search(r"rehearsal .* failed", srv.log)


def test_a_crowd_takes_the_sleeping_spares_and_the_pool_fills_again(server):
    srv = server(server_source("WebServerWS", spare_processes=6))
    forkserver = forkserver_of(srv)
    users = {asyncio.run(arrive(srv.url))}  # the app's class is loaded: spares can be forked for it
    pool = wait_for(pool_of(forkserver, users, 6), "the pool did not reach 6 spares")

    async def crowd() -> list[int]:
        return await asyncio.gather(*(arrive(srv.url) for _ in range(6)))

    arrived = set(asyncio.run(crowd()))
    assert arrived == pool  # six users at once, six spares given: not one fork on their way
    users |= arrived
    refilled = wait_for(pool_of(forkserver, users, 6), "the pool was not filled again")
    assert not refilled & pool


def test_the_pool_is_refilled_in_batches_once_a_quarter_is_gone(server):
    """Spares forked together share the pages the fork-server writes afterwards: one
    arrival leaves the pool one short, the next user is still served by a spare of the
    first batch, and only at the low-water mark (8 - 2) is the pool filled again."""
    srv = server(server_source("WebServerWS", spare_processes=8))
    forkserver = forkserver_of(srv)
    users = {asyncio.run(arrive(srv.url))}
    pool = wait_for(pool_of(forkserver, users, 8), "the pool did not reach 8 spares")
    users.add(asyncio.run(arrive(srv.url)))
    assert users - {min(users)} <= pool
    time.sleep(1)  # the fork-server had time to fork (it did, one spare after each arrival, before)
    assert spares(forkserver, users) == pool - users  # 7 of the first batch, none forked alone
    users.add(asyncio.run(arrive(srv.url)))
    assert users - {min(users)} <= pool
    refilled = wait_for(pool_of(forkserver, users, 8), "the pool was not filled again at its low-water mark")
    assert len(refilled - pool) == 2


def test_the_pool_keeps_within_max_processes_and_replaces_a_dead_spare(server):
    srv = server(server_source("WebServerWS", max_processes=3, spare_processes=6, max_processes_per_address=0))
    forkserver = forkserver_of(srv)
    users = {asyncio.run(arrive(srv.url))}
    pool = wait_for(pool_of(forkserver, users, 2), "no 2 spares (3 processes at most)")
    time.sleep(0.5)
    assert spares(forkserver, users) == pool  # never more than max_processes leaves room for
    victim = min(pool)
    psutil.Process(victim).send_signal(signal.SIGKILL)
    srv.wait_log(rf"spare user process {victim} died")
    replaced = wait_for(pool_of(forkserver, users, 2), "the dead spare was not replaced")
    assert victim not in replaced
    users.add(asyncio.run(arrive(srv.url)))
    assert len(users) == 2
    wait_for(lambda: len(spares(forkserver, users)) == 1, "not 1 spare beside 2 users")


def slot_mappings(process: int) -> int:
    """Slots are shared mappings of memory files (``/memfd:htagweb-slot (deleted)`` in /proc/PID/maps)."""
    with open(f"/proc/{process}/maps") as maps:
        return sum(1 for line in maps if line.split()[1].endswith("s") and "/memfd:htagweb-slot" in line)


def test_a_user_process_holds_its_own_slot_only(server):
    """Slots are not inherited by later processes (nor closed one by one in each of them):
    the fourth user's process, and its spares, map one slot each, not the others', and the
    zygote that forked them none."""
    srv = server(server_source("WebServerWS", spare_processes=2))
    forkserver = forkserver_of(srv)
    users = set()
    for _ in range(4):
        users.add(asyncio.run(arrive(srv.url)))
    pool = wait_for(pool_of(forkserver, users, 2), "no 2 spares")
    assert slot_mappings(forkserver.pid) >= 6
    assert [slot_mappings(process.pid) for process in forkserver.children()] == [0]
    assert [slot_mappings(process) for process in sorted(users | pool)] == [1] * 6


def test_rehearsal_gives_way_to_a_waiting_user():
    process = UserProcess(Config(), Watchdog(new_slot()))
    asked = []

    def user_waiting() -> bool:
        asked.append(True)
        return len(asked) > 1  # a user arrives after the page was rehearsed

    frames = asyncio.run(rehearse(process, user_waiting))
    assert [kind for kind, _ in frames] == [bridge.RESPONSE_START, bridge.RESPONSE_BODY]


def test_spare_processes_default_follows_max_processes(tmp_path):
    class App(Tag.App):
        pass

    def spares_of(**options: int) -> int:
        return WebServerWS(App, runtime_dir=str(tmp_path / str(len(options))), **options).config.spare_processes

    assert spares_of() == 50
    assert spares_of(max_processes=30) == 3
    assert spares_of(max_processes=30, spare_processes=7) == 7
