"""A spare user process: forked ahead of need, it waits for the fork-server to
name its session and app (or to go away).

The ``rehearsed`` spare rehearses a first page load and serves meanwhile (see
:mod:`htagweb.rehearsal`). The others sleep, before even an event loop exists:
the fewer pages a spare writes to, the fewer it copies (about 1.6 MB, against 5
once rehearsed).
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


def run_spare(
    control: socket.socket, listener: socket.socket, classes: dict[str, type], config: Config, slot: mmap.mmap, rehearsed: bool
) -> Exit:
    """Serve as the user process the fork-server names on ``control``; afterwards
    ``control`` tells the fork-server when this user's arrival is over. Returns why it ends."""
    watchdog = Watchdog(slot)
    if rehearsed:
        loop = new_loop()
        try:
            rehearsing = UserProcess(config, Watchdog(slot, REHEARSING))
            loop.run_until_complete(rehearse(rehearsing, lambda: bool(select.select([control], [], [], 0)[0])))
        except Exception:
            logger.warning("spare user process: the rehearsal of a first page load failed", exc_info=True)
        watchdog.touch()  # the slot says RUNNING again: the fork-server gives this spare first
    else:
        select.select([control], [], [])
        loop = new_loop()
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
