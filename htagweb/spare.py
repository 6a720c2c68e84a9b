"""A spare user process: forked ahead of need, it waits for the fork-server to
name its session and app (or to go away).

It sleeps, before even an event loop exists: the fewer pages a spare writes to,
the fewer it copies (about 1.1 MB, against 4.4 once rehearsed). Woken by
``REHEARSE``, it rehearses a first page load (see :mod:`htagweb.rehearsal`),
its slot saying REHEARSING (written by the fork-server) until it is over.
"""

from __future__ import annotations

import json
import logging
import mmap
import select
import socket

from .config import Config
from .ends import Exit
from .process import UserProcess, new_loop
from .rehearsal import rehearse
from .slot import REHEARSING, Watchdog

logger = logging.getLogger("htagweb")

#: what the fork-server sends a sleeping spare to wake it to rehearse (an assignment is JSON: it starts with "{")
REHEARSE = b"R"


def run_spare(control: socket.socket, listener: socket.socket, classes: dict[str, type], config: Config, slot: mmap.mmap) -> Exit:
    """Serve as the user process the fork-server names on ``control``; afterwards
    ``control`` tells the fork-server when this user's arrival is over. Returns why it ends."""
    watchdog = Watchdog(slot)
    select.select([control], [], [])
    loop = new_loop()
    if control.recv(1, socket.MSG_PEEK) == REHEARSE:
        control.recv(1)
        try:
            rehearsing = UserProcess(config, Watchdog(slot, REHEARSING))
            loop.run_until_complete(rehearse(rehearsing, lambda: bool(select.select([control], [], [], 0)[0])))
        except Exception:
            logger.warning("spare user process: the rehearsal of a first page load failed", exc_info=True)
        watchdog.touch()
        watchdog.publish()  # the slot says RUNNING again: the fork-server gives this spare first
    process = UserProcess(config, watchdog, control)

    async def assignment() -> None:
        message = await loop.sock_recv(control, 4096)
        if not message:  # the fork-server dropped this spare, or is gone
            process.stopping.set()
            return
        request = json.loads(message)
        process.assign(lambda: classes[request["app"]], request["label"], request["app"])

    control.setblocking(False)
    return loop.run_until_complete(process.serve(listener, assignment()))
