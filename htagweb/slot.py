"""The slot: a few bytes of memory shared by one user process and its fork-server.

The user process writes, the fork-server reads, neither waits for the other: no
message, no lock, no system call. The fork-server learns from it whether a
handler hangs (``busy_since``), how long the process has been idle (``active``,
for ``ps`` and evictions), whether it is on its way out (``state``) and how far its
user got (``stage``: a process that has not answered its user yet is not evicted, one whose
page never went live is evicted first). Each slot is a
shared mapping of a memory file the fork-server makes and hands to the zygote, which maps
it for the one process it forks; no other process inherits it.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from types import TracebackType
from typing import NamedTuple

#: (monotonic start of the oldest running interaction or 0, monotonic time of the last exchange, state, stage)
SLOT = struct.Struct("<ddii")
#: one field of it, written alone by the user process when only it changes, and where each is
FLOAT, INT = struct.Struct("<d"), struct.Struct("<i")
BUSY_SINCE_AT, ACTIVE_AT, STAGE_AT = 0, 8, 20
#: a spare rehearsing (see rehearsal.py) is REHEARSING until its rehearsal is over
RUNNING, EXITING, REHEARSING = 0, 1, 2
#: how far its user got: nothing answered yet, a page answered (provisional), live (the page
#: opened a WebSocket or SSE stream, or sent an event)
ARRIVING, ANSWERED, LIVE = 0, 1, 2
#: the name of a slot's memory file (``/memfd:htagweb-slot`` in /proc)
SLOT_FILE = "htagweb-slot"
#: seconds after which a new user's arrival counts as over even if no answer followed its page
SETTLE_LIMIT = 1.0
#: from the first answer after the page to the arrival being over: time for the front and the browser to take it
SETTLE_DELAY = 0.01


class Reading(NamedTuple):
    busy_since: float
    active: float
    state: int
    stage: int

    @property
    def live(self) -> bool:
        """Its page went live; one that never did is provisional: the first to make room at max_processes."""
        return self.stage == LIVE


def new_slot(state: int = RUNNING) -> mmap.mmap:
    """A slot for this process alone (the rehearsals in the fork-server)."""
    slot = mmap.mmap(-1, SLOT.size)
    reset_slot(slot, state)
    return slot


def shared_slot(state: int = RUNNING) -> tuple[mmap.mmap, int]:
    """A slot for a process to be forked, and its file, to hand over (the caller closes it).
    No child of the fork-server's own inherits the mapping (``MADV_DONTFORK``)."""
    fd = os.memfd_create(SLOT_FILE, os.MFD_CLOEXEC)
    os.ftruncate(fd, SLOT.size)
    slot = mmap.mmap(fd, SLOT.size)
    slot.madvise(mmap.MADV_DONTFORK)
    reset_slot(slot, state)
    return slot, fd


def open_slot(fd: int) -> mmap.mmap:
    """The slot handed over as ``fd`` (closed here), mapped."""
    try:
        return mmap.mmap(fd, SLOT.size)
    finally:
        os.close(fd)


def reset_slot(slot: mmap.mmap, state: int) -> None:
    """Written by the fork-server before the fork, and to a sleeping spare it wakes to rehearse
    (whose process has written nothing yet)."""
    SLOT.pack_into(slot, 0, 0.0, time.monotonic(), state, ARRIVING)


def read_slot(slot: mmap.mmap) -> Reading:
    return Reading(*SLOT.unpack_from(slot))


class Watchdog:
    """The user process' side of its slot: when the oldest running interaction
    started, when the last exchange happened, whether it is exiting.

    A click touches it twice and runs one interaction: each writes the one field it
    changes, not the whole slot (a few microseconds a click otherwise)."""

    def __init__(self, slot: mmap.mmap, state: int = RUNNING) -> None:
        self.slot = slot
        self._started: dict[int, float] = {}
        self._next = 0
        self.state = state
        self.last_activity = time.monotonic()
        self.stage = ARRIVING

    @property
    def busy(self) -> bool:
        return bool(self._started)

    @property
    def live(self) -> bool:
        return self.stage == LIVE

    def answered(self) -> None:
        """Its user's first answer is sent whole: it may make room for another user from now on."""
        self.stage = ANSWERED
        INT.pack_into(self.slot, STAGE_AT, ANSWERED)

    def touch(self) -> None:
        """An exchange happened now (the inactivity timeout starts again)."""
        self.last_activity = now = time.monotonic()
        FLOAT.pack_into(self.slot, ACTIVE_AT, now)

    def interaction(self) -> _Interaction:
        """``with watchdog.interaction():`` a handler runs, which the fork-server may abort."""
        return _Interaction(self)

    def went_live(self) -> None:
        """The page opened a WebSocket or SSE stream, or sent an event: no longer provisional."""
        self.stage = LIVE
        self.touch()
        self.publish()

    def exiting(self) -> None:
        self.state = EXITING
        self.publish()

    def publish(self) -> None:
        """Write the whole slot (a spare's after its rehearsal: RUNNING again)."""
        SLOT.pack_into(self.slot, 0, min(self._started.values(), default=0.0), self.last_activity, self.state, self.stage)

    def _begin(self) -> int:
        token, self._next = self._next, self._next + 1
        self._started[token] = now = time.monotonic()
        if len(self._started) == 1:  # the only one running: the fork-server's clock starts (else an older one's runs)
            FLOAT.pack_into(self.slot, BUSY_SINCE_AT, now)
        return token

    def _end(self, token: int) -> None:
        del self._started[token]
        FLOAT.pack_into(self.slot, BUSY_SINCE_AT, min(self._started.values(), default=0.0))


class _Interaction:
    """One running interaction: a class, not a ``@contextmanager`` generator (one per click)."""

    __slots__ = ("watchdog", "token")

    def __init__(self, watchdog: Watchdog) -> None:
        self.watchdog = watchdog
        self.token = 0

    def __enter__(self) -> None:
        self.token = self.watchdog._begin()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.watchdog._end(self.token)
