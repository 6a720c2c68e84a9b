"""The spare user process: it rehearses a first page load, then takes the next user."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import psutil
from helpers import User, pid, server_source

from htagweb import bridge
from htagweb.config import Config
from htagweb.process import UserProcess, Watchdog, new_page
from htagweb.rehearsal import rehearse


def frames_of(http_only: bool) -> list[tuple[int, bytes]]:
    return asyncio.run(rehearse(UserProcess(Config(http_only=http_only), Watchdog(new_page()))))


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
    assert b"window.WebSocket=window.EventSource=" in frames[1][1]


def test_next_user_gets_the_spare_forked_after_the_first_arrival(server):
    srv = server(server_source("WebServerWS"))
    forkserver = psutil.Process(int(srv.wait_log(r"fork-server (\d+) serving").group(1)))

    async def arrive() -> int:
        async with User(srv.url) as user:
            process = pid((await user.page()).text)
            async with user.ws() as ws:
                await ws.recv()  # the initial payload: this arrival is over
            return process

    first = asyncio.run(arrive())
    deadline = time.monotonic() + 20
    while not (spares := [p.pid for p in forkserver.children() if p.pid != first]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spares, "no spare user process was forked after the first arrival"
    second = asyncio.run(arrive())
    assert second in spares  # the second user took the spare: no fork on its way
    assert not re.search(r"rehearsal .* failed", srv.log)


def test_rehearsal_gives_way_to_a_waiting_user():
    process = UserProcess(Config(), Watchdog(new_page()))
    asked = []

    def user_waiting() -> bool:
        asked.append(True)
        return len(asked) > 1  # a user arrives after the page was rehearsed

    frames = asyncio.run(rehearse(process, user_waiting))
    assert [kind for kind, _ in frames] == [bridge.RESPONSE_START, bridge.RESPONSE_BODY]
