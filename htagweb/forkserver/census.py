"""The user processes of older code generations, counted towards ``max_processes``.

After a reload (gunicorn's HUP) a retired fork-server keeps its users' processes and forks
no more; the new one forks for every new user. ``max_processes`` holds for the server, not
for each generation: a retired fork-server writes how many live processes it holds in a
file beside its socket, which the new one reads when it is near the cap. At the cap, the
new one asks the retired ones for room with a signal (nothing waits on it), and tells the
front to ask again in a moment; a retired one ends its least recently active idle process,
as the new one would end one of its own. Older generations that give no room within
:data:`ROOM_WAIT` (all their processes busy) are not asked again for :data:`NOT_AGAIN`
seconds: the new one makes room among its own processes, or refuses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from .children import readable

logger = logging.getLogger("htagweb")

#: how a retired fork-server is asked for room
ROOM_SIGNAL = signal.SIGUSR1
COUNT = struct.Struct("<q")
#: seconds the older generations have to make room once asked
ROOM_WAIT = 0.5
#: seconds they are not asked again once they gave none
NOT_AGAIN = 5.0


def count_path(socket_path: Path) -> Path:
    """Where the fork-server listening at ``socket_path`` writes its count once retired."""
    return socket_path.with_suffix(".count")


def publish(socket_path: Path, count: int) -> None:
    """A retired fork-server's count of live processes (those ending left out), replaced at once."""
    path = count_path(socket_path)
    written = path.with_name(path.name + ".new")
    written.write_bytes(COUNT.pack(count))
    os.replace(written, path)


@dataclass
class Older:
    socket: Path
    pidfd: int


class OlderGenerations:
    """The retired fork-servers this one took over from, as a new one sees them."""

    def __init__(self) -> None:
        self.older: list[Older] = []
        self.asked_at = 0.0
        #: their processes when they were last asked for room
        self.count_when_asked = 0
        self.not_until = 0.0

    def add(self, socket: Path, pid: int) -> None:
        try:
            self.older.append(Older(socket, os.pidfd_open(pid)))
        except (ProcessLookupError, ValueError, OSError):  # gone already: its processes with it
            pass

    def processes(self) -> int:
        """Their live processes; a fork-server that ended counts none (its processes end with it)."""
        total = 0
        for older in list(self.older):
            if readable(older.pidfd, 0):
                os.close(older.pidfd)
                self.older.remove(older)
                continue
            with contextlib.suppress(OSError, struct.error):  # not written yet
                total += COUNT.unpack(count_path(older.socket).read_bytes())[0]
        return total

    def make_room(self, count: int) -> bool:
        """Whether they are making room for a new user now (``count``: their processes); False:
        they cannot, the new one makes room itself."""
        now = time.monotonic()
        if not count or now < self.not_until:
            return False
        if self.asked_at and count >= self.count_when_asked:  # none given yet since the last ask
            if now - self.asked_at < ROOM_WAIT:
                return True
            logger.info("fork-server: older code generations give no room (all their %d processes busy)", count)
            self.asked_at, self.not_until = 0.0, now + NOT_AGAIN
            return False
        for older in self.older:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(older.pidfd, ROOM_SIGNAL)
        self.asked_at, self.count_when_asked = now, count
        return True
