"""The fork-server's user processes: by pid (how the zygote tells of an end) and by key (a
session's id and an app: what a front asks for), and why recent ones ended, for fronts
that ask once a process is gone.

Two processes of one key may be listed for a moment: one that ended before its end was
told (its zygote is slow or stuck), and the one that replaced it. The key's is the newest.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from ..admission import ARRIVAL_GRACE, Candidate
from ..ends import End, describe, from_status
from ..metrics import BY_END, KILLS
from ..runtime import Runtime
from ..slot import ARRIVING, EXITING, REHEARSING, read_slot
from .children import UserChild, resident_memory
from .loader import AppLoader

logger = logging.getLogger("htagweb")

#: why-gone reasons remembered, for fronts that ask late
DEATHS_KEPT = 10000


class UserProcesses:
    def __init__(self, runtime: Runtime, loader: AppLoader, counters: dict[str, int]) -> None:
        self.runtime = runtime
        self.loader = loader
        self.counters = counters
        self.by_pid: dict[int, UserChild] = {}
        self.by_key: dict[str, UserChild] = {}
        self.deaths: dict[str, End] = {}

    def __len__(self) -> int:
        return len(self.by_pid)

    def __iter__(self) -> Iterator[UserChild]:
        return iter(self.by_pid.values())

    def live(self, key: str) -> UserChild | None:
        """The process of ``key``, unless it is ending or ended (told or not)."""
        child = self.by_key.get(key)
        if child is None or child.end is not None or read_slot(child.slot).state == EXITING or child.exited():
            return None
        return child

    def add(self, child: UserChild) -> None:
        self.by_key[child.key] = child
        self.by_pid[child.pid] = child
        self.deaths.pop(child.key, None)
        self.counters["spawns"] += 1

    def replacing(self, key: str) -> None:
        """A new process is asked for ``key``: one ending or ended, not reaped yet, no longer
        answers to it (its end would remove the new one's socket)."""
        self.by_key.pop(key, None)

    def why_gone(self, key: str) -> End:
        return self.deaths.get(key, End.LOST)

    def reaped(self, pid: int, status: int, stopping: bool) -> bool:
        """Whether ``pid`` was a user process: its end is taken."""
        child = self.by_pid.pop(pid, None)
        if child is None:
            return False
        child.reaped(status)
        self._ended(child, stopping)
        return True

    def candidates(self) -> list[Candidate]:
        """The user processes that count towards max_processes (not those already ending)."""
        candidates, now = [], time.monotonic()
        for child in self.by_pid.values():
            if child.end is None and self.by_key.get(child.key) is child:
                reading = read_slot(child.slot)
                # a spare given while it rehearsed says how far its rehearsal got until it is over
                unanswered = reading.stage == ARRIVING or reading.state == REHEARSING
                arriving = unanswered and now - child.started < ARRIVAL_GRACE
                candidates.append(Candidate(child.key, reading.live, reading.busy_since != 0, arriving, reading.active, child.address))
        return candidates

    def of_address(self, address: str) -> int:
        """How many live processes the client ``address`` holds (those ending not counted)."""
        return sum(child.end is None and child.address == address for child in self.by_key.values())

    def chosen(self, prefix: str, app: str | None) -> list[UserChild]:
        """The live processes of the sessions whose id starts with ``prefix`` (of ``app`` only, if given)."""
        return [child for child in self if child.end is None and child.label.startswith(prefix) and app in (None, child.app)]

    def rotate(self, old: str, new: str) -> int:
        """A session's id changed: its user processes move to the new id (their sockets
        renamed), so that the old id reaches none of them. How many moved."""
        moved = 0
        for child in list(self.by_key.values()):
            if child.key != self.runtime.process_key(old, child.app):
                continue
            key = self.runtime.process_key(new, child.app)
            try:
                os.rename(self.runtime.user_socket_path(child.key), self.runtime.user_socket_path(key))
            except FileNotFoundError:  # ending already (its socket removed): the old id reaches it no more
                continue
            deps = self.loader.deps_file(child.key)
            if deps.exists():
                deps.rename(self.loader.deps_file(key))
            del self.by_key[child.key]
            child.key, child.socket = key, self.runtime.user_socket_path(key)
            self.by_key[key] = child
            moved += 1
        return moved

    def _ended(self, child: UserChild, stopping: bool) -> None:
        assert child.status is not None
        end = child.end or from_status(child.status)
        stack = child.take_stack()
        if child.end is None and end is End.CRASHED:
            logger.warning("user process crashed: %s, crashed (%s)", child, describe(child.status))
        elif child.end is None:
            logger.info("user process ended: %s (%s)", child, end.value)
        if stack and end is End.INTERACTION_TIMEOUT:
            logger.warning("user process hung in a handler: %s; its Python stack when it was stopped:\n%s", child, stack)
        elif stack and end is End.CRASHED:
            logger.warning("user process crashed: %s; its Python stack:\n%s", child, stack)
        if end in BY_END and not (end is End.EXPIRED and stopping):
            self.counters[BY_END[end]] += 1
        if end in KILLS:
            self.counters["kills"] += 1
        self.deaths[child.key] = end
        if len(self.deaths) > DEATHS_KEPT:
            self.deaths.pop(next(iter(self.deaths)))
        if self.by_key.get(child.key) is child:
            del self.by_key[child.key]
            self.runtime.user_socket_path(child.key).unlink(missing_ok=True)
            self.loader.forget(child.key)
        child.slot.close()


def listed(child: UserChild) -> dict[str, Any]:
    """What ``htagweb ps`` shows of a process."""
    now = time.monotonic()
    reading = read_slot(child.slot)
    try:
        rss: int | None = resident_memory(child.pid)
    except (OSError, ValueError, IndexError):
        rss = None
    state = "ending" if child.end or reading.state == EXITING or child.exited() else "busy" if reading.busy_since else "idle"
    return {
        "pid": child.pid,
        "session": child.label,
        "app": child.app,
        "age": round(now - child.started, 3),
        "idle": round(max(0.0, now - reading.active), 3),
        "rss": rss,
        "state": state,
    }
