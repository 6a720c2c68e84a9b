"""The fork-server's watch over its user processes: handlers that hang, memory and
open files over their limits.

Read without asking the processes anything: a hang from each process' slot
(:mod:`htagweb.slot`), memory and files from ``/proc``. A hung process is aborted
(SIGABRT: faulthandler writes its Python stack, which the fork-server logs when
it reaps it) and killed if it persists, as gunicorn's arbiter murders workers.

The processes are looked at when something may be due, at most a second apart,
not at each turn of the fork-server's loop: each look at a process object writes
to the page it is on (its reference count), and every process forked since the
previous write keeps the old copy of that page for itself (see bench/RESULTS.md,
"USS per idle user").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from ..config import Config
from ..ends import End
from ..slot import read_slot
from .children import ABORT_GRACE, UserChild, open_files, resident_memory

logger = logging.getLogger("htagweb")

#: seconds between two reads of /proc for every user process
RESOURCES_EVERY = 1.0


class Watchdogs:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.resources_checked = 0.0
        #: when :meth:`check` may have something to do
        self.due = 0.0

    def check(self, users: Iterable[UserChild]) -> None:
        now = time.monotonic()
        if now < self.due:
            return
        users = list(users)
        for child in users:
            child.escalate(now)
        if self.config.timeout_interaction:
            self._interactions(users, now)
        if now - self.resources_checked >= RESOURCES_EVERY:
            self.resources_checked = now
            self._resources(users)
        self.due = self._next_due(users, now)

    def next_check(self) -> float:
        """Seconds until :meth:`check` has something to do, at most RESOURCES_EVERY."""
        return max(0.0, self.due - time.monotonic())

    def _next_due(self, users: list[UserChild], now: float) -> float:
        """The next abort to escalate or handler to time out, a second from ``now`` at the latest
        (a handler that starts meanwhile is seen then)."""
        due = now + RESOURCES_EVERY
        limit = self.config.timeout_interaction
        for child in users:
            if child.aborted is not None:
                due = min(due, child.aborted + ABORT_GRACE)
            elif limit and child.end is None:
                busy_since = read_slot(child.slot).busy_since
                if busy_since:
                    due = min(due, busy_since + limit)
        return due

    def _interactions(self, users: list[UserChild], now: float) -> None:
        limit = self.config.timeout_interaction
        for child in users:
            busy_since = read_slot(child.slot).busy_since
            if busy_since and child.end is None and now - busy_since > limit:
                logger.warning("user process killed: %s (interaction timeout: a handler ran more than %gs)", child, limit)
                child.abort(End.INTERACTION_TIMEOUT)

    def _resources(self, users: list[UserChild]) -> None:
        """Kill a user process over its memory or open-files limit."""
        memory, files = self.config.memory_limit, self.config.max_open_files
        for child in users:
            if child.end is not None:
                continue
            try:
                rss = resident_memory(child.pid)
                opened = open_files(child.pid) if files else 0
            except (OSError, ValueError, IndexError):
                continue
            if memory and rss > memory:
                end, detail = End.MEMORY_LIMIT, f"memory limit: {rss // 2**20} MiB resident, over {memory // 2**20} MiB"
            elif files and opened > files:
                end, detail = End.OPEN_FILES_LIMIT, f"open files limit: {opened} open, over {files}"
            else:
                continue
            logger.warning("user process killed: %s (%s)", child, detail)
            child.ending(end)
            child.kill()
