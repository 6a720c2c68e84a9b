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


class Watchdogs:
    """Scans the user processes only when something can be due, not at each turn of
    the loop (which turns for every request: with a thousand users, a scan per turn
    was a thousand slot reads per new user). A scan knows the earliest deadline of
    the interactions running, and one starting after it cannot run out before the
    scan plus ``timeout_interaction``; memory and open files are read once a second."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.resources_checked = 0.0
        #: monotonic time of the next scan
        self.due = 0.0

    def check(self, users: Iterable[UserChild]) -> None:
        now = time.monotonic()
        if now < self.due:
            return
        users = list(users)
        due = now + (self.config.timeout_interaction or RESOURCES_EVERY)
        for child in users:
            child.escalate(now)
            if child.aborted is not None:
                due = min(due, child.aborted + ABORT_GRACE)
        if self.config.timeout_interaction:
            due = min(due, self._interactions(users, now))
        if now - self.resources_checked >= RESOURCES_EVERY:
            self.resources_checked = now
            self._resources(users)
        self.due = min(due, self.resources_checked + RESOURCES_EVERY)

    def next_check(self) -> float:
        """Seconds until :meth:`check` has something to do."""
        return max(0.0, self.due - time.monotonic())

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
