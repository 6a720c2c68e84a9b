"""The fork-server's watch over its user processes: handlers that hang, memory and
open files over their limits.

Read without asking the processes anything: a hang from each process' slot
(:mod:`htagweb.slot`), memory and files from ``/proc``. A hung process is aborted
(SIGABRT: faulthandler writes its Python stack, which the fork-server logs when
it reaps it) and killed if it persists, as gunicorn's arbiter murders workers.
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
#: the reads of one second are spread in that many slices (a thousand processes read
#: at once held the loop for some 60 ms, and every new user with it)
RESOURCE_SLICES = 10


class Watchdogs:
    """Scans the user processes only when something can be due, not at each turn of
    the loop (which turns for every request: with a thousand users, a scan per turn
    was a thousand slot reads per new user). A scan knows the earliest deadline of
    the interactions running, and one starting after it cannot run out before the
    scan plus ``timeout_interaction``; memory and open files are read once a second,
    a slice of the processes at a time."""

    def __init__(self, config: Config) -> None:
        self.config = config
        #: monotonic times of the next scan of the slots, of the next slice of /proc reads
        self.due = 0.0
        self.resources_due = 0.0
        self.cursor = 0

    def check(self, users: Iterable[UserChild]) -> None:
        now = time.monotonic()
        if now < self.due and now < self.resources_due:
            return
        users = list(users)
        if now >= self.due:
            self._scan(users, now)
        if now >= self.resources_due:
            self.resources_due = now + RESOURCES_EVERY / RESOURCE_SLICES
            self._resources(self._next_slice(users))

    def next_check(self) -> float:
        """Seconds until :meth:`check` has something to do."""
        return max(0.0, min(self.due, self.resources_due) - time.monotonic())

    def _scan(self, users: list[UserChild], now: float) -> None:
        due = now + (self.config.timeout_interaction or RESOURCES_EVERY)
        for child in users:
            child.escalate(now)
            if child.aborted is not None:
                due = min(due, child.aborted + ABORT_GRACE)
        if self.config.timeout_interaction:
            due = min(due, self._interactions(users, now))
        self.due = due

    def _next_slice(self, users: list[UserChild]) -> list[UserChild]:
        """The next of RESOURCE_SLICES slices of ``users``, round the list."""
        if not users:
            return []
        size = -(-len(users) // RESOURCE_SLICES)
        start = self.cursor % len(users)
        self.cursor = start + size
        return (users[start:] + users[:start])[:size]

    def _interactions(self, users: list[UserChild], now: float) -> float:
        """Abort the processes whose handler ran too long; when the next one could be due."""
        limit = self.config.timeout_interaction
        due = now + limit
        for child in users:
            busy_since = read_slot(child.slot).busy_since
            if not busy_since or child.end is not None:
                continue
            if now - busy_since >= limit:
                logger.warning("user process killed: %s (interaction timeout: a handler ran more than %gs)", child, limit)
                child.abort(End.INTERACTION_TIMEOUT)
                due = min(due, now + ABORT_GRACE)
            else:
                due = min(due, busy_since + limit)
        return due

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
