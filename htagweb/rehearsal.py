"""A spare user process rehearses a user's arrival before it has a user.

A process forked from the zygote shares its memory copy-on-write: the first
time it runs a piece of code, each memory page that code writes to (reference
counts, the interpreter's inline caches) is copied, one page fault each (about
6 µs each on the project's machine, some 480 of them in a first page load). A
spare pays for them while it waits: it serves a page, a WebSocket and a click of
an app of ours through its own bridge handler, over a socket pair, so that the
user's first page finds those pages copied already. Nothing of it is kept.

The fork-server runs the same rehearsal before it forks its zygote
(:func:`warm_up`): Python 3.11 rewrites a function's bytecode after its first
calls and keeps counters in it (PEP 659, the specializing interpreter), which
each process did again in its own copy of those pages; done once before the
zygote is forked, they stay shared (0.2 to 0.4 MB less per user process, see
bench/RESULTS.md, "USS per idle user").
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable

from htag import State, Tag

from . import bridge
from .config import Config
from .process import UserProcess, new_loop
from .slot import Watchdog, new_slot

logger = logging.getLogger("htagweb")

#: rehearsals the fork-server runs before its first fork (about 1 ms each): more changed nothing measurable
WARM_UP = 30
#: seconds after which the fork-server gives up a rehearsal (and starts serving), should one ever hang
WARM_UP_LIMIT = 5.0


class RehearsalApp(Tag.App):
    def init(self) -> None:
        self.count = State(0)
        Tag.p(lambda: f"Count: {self.count.value}", _id="count")
        Tag.button("+1", _id="inc", _onclick=self.inc)

    def inc(self, event: object) -> None:
        self.count.value += 1


def _scope(kind: str, path: str) -> dict:
    return {"type": kind, "path": path, "headers": [(b"host", b"rehearsal")], "client": ("127.0.0.1", 0), "server": ("rehearsal", 80)}


async def _exchange(
    process: UserProcess, scope: dict, endpoint: str, frames: list[bytes], last: Callable[[int, bytes], bool]
) -> list[tuple[int, bytes]]:
    """Send ``frames`` to the process' bridge handler as a front would; read its
    frames up to the ``last`` one (or the end)."""
    ours, theirs = socket.socketpair()
    served = asyncio.ensure_future(process.handle(await bridge.connect(sock=theirs)))
    link = await bridge.connect(sock=ours)
    link.write(bridge.encode_scope(scope, {"endpoint": endpoint, "session": {"version": 0, "items": {}}}) + b"".join(frames))
    received = []
    try:
        while True:
            kind, body = await link.read()
            received.append((kind, body))
            if last(kind, body):
                break
    except asyncio.IncompleteReadError:
        pass
    link.close()
    await served
    return received


def _answers_click(kind: int, body: bytes) -> bool:
    return kind == bridge.WS_TEXT_OUT and json.loads(body).get("callback_id") == "1"


async def rehearse(process: UserProcess, user_waiting: Callable[[], bool] = lambda: False) -> list[tuple[int, bytes]]:
    """A page load, a WebSocket and a click of :class:`RehearsalApp` through
    ``process``, a user process of its own; returns the frames it answered.
    Cut short when ``user_waiting()``: a user must never wait for a rehearsal."""
    htag_logger = logging.getLogger("htag")
    level = htag_logger.level
    htag_logger.setLevel(logging.WARNING)  # its INFO lines would tell of a visit and a click nobody made
    try:
        return await _rehearse(process, user_waiting)
    finally:
        htag_logger.setLevel(level)


async def _rehearse(process: UserProcess, user_waiting: Callable[[], bool]) -> list[tuple[int, bytes]]:
    config = process.config
    process.assign(lambda: RehearsalApp, "rehearsal", "rehearsal")
    received: list[tuple[int, bytes]] = []
    if not user_waiting():
        page_frames = [bridge.frame(bridge.HTTP_BODY, b"\x00")]
        received += await _exchange(process, _scope("http", "/"), "page", page_frames, lambda kind, body: kind == bridge.RESPONSE_BODY)
    if not config.http_only and not user_waiting():
        click = json.dumps({"id": "inc", "event": "click", "data": {"callback_id": "1"}}).encode()
        ws_frames = [bridge.frame(bridge.WS_CONNECT), bridge.frame(bridge.WS_TEXT_IN, click)]
        received += await _exchange(process, _scope("websocket", "/ws"), "ws", ws_frames, _answers_click)
    assert process.host is not None
    await process.host.destroy(config.shutdown_grace)
    return received


def warm_up(config: Config, times: int = WARM_UP) -> None:
    """Rehearse ``times`` in this process, the fork-server before its first fork, so
    that the code a user process runs is specialized once, in pages every process shares."""
    slot = new_slot()
    try:
        for _ in range(times):
            loop = new_loop()
            try:
                loop.run_until_complete(asyncio.wait_for(rehearse(UserProcess(config, Watchdog(slot))), WARM_UP_LIMIT))
            finally:
                loop.close()
    except Exception:
        logger.warning("fork-server: the rehearsal of a first page load failed", exc_info=True)
    finally:
        asyncio.set_event_loop(None)
        slot.close()
