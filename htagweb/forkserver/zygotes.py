"""The fork-server's zygotes: the current one, which forks, and the older ones, which keep
their children until they end.

An app named by a string is imported in a next zygote (:mod:`.imports`), forked from the
current one: once its import is over it becomes the current one. A zygote that dies takes
its children with it, and the zygotes forked from it; the fork-server, their subreaper,
reaps them all. When the current one dies, a new one is forked from the fork-server at once,
with the apps given as classes; those named by strings are imported again. So is one when
the current one stops answering (:class:`.zygote.ZygoteStuck`): that one is kept with the
older ones, and its processes with it.
"""

from __future__ import annotations

import logging
import os
import resource
import selectors
import socket
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from ..config import Config
from ..ends import describe
from ..runtime import Runtime
from . import zygote
from .children import ended_children, readable
from .imports import Imports
from .loader import AppLoader
from .messages import Source
from .zygote import Zygote, ZygoteGone, ZygoteStuck

logger = logging.getLogger("htagweb")

T = TypeVar("T")


class Zygotes:
    def __init__(
        self,
        runtime: Runtime,
        config: Config,
        loader: AppLoader,
        selector: selectors.BaseSelector,
        open_files_limit: tuple[int, int],
        inherited: Callable[[], list[int]],
        stopping: Callable[[], bool],
        on_current_gone: Callable[[], None],
        on_gone: Callable[[], None],
    ) -> None:
        self.runtime = runtime
        self.config = config
        self.loader = loader
        self.selector = selector
        #: the limit of open files the fork-server was started with: its processes keep it
        self.open_files_limit = open_files_limit
        #: the fork-server's own descriptors, which a zygote closes at once
        self.inherited = inherited
        self.stopping = stopping
        #: called when the current zygote died (its spares went with it)
        self.on_current_gone = on_current_gone
        #: called when any zygote died (its processes, reparented to the fork-server, end)
        self.on_gone = on_gone
        self.current: Zygote | None = None
        self.older: list[Zygote] = []
        #: the apps imported in the current zygote: what its spares can serve
        self.apps: set[str] = set()
        self.imports = Imports(config, runtime.users_dir, selector)
        #: ends told by a zygote that died before they were taken
        self.pending_ends: list[tuple[int, int]] = []

    def start(self) -> None:
        """Fork the zygote: a copy of the fork-server as it is now, warm, that will only fork."""
        parent, title = os.getpid(), f"htagweb zygote {self.runtime.path}"

        def serve(line: socket.socket) -> NoReturn:
            resource.setrlimit(resource.RLIMIT_NOFILE, self.open_files_limit)
            zygote.serve(line, self.loader, self.config, self.runtime.users_dir, parent, title)

        next_one = [self.imports.next] if self.imports.next is not None else []
        closed = self.inherited() + [other.line.fileno() for other in [*self.all(), *next_one]]
        self.current = Zygote.start(serve, closed)
        self.apps = set(self.loader.classes)
        self.selector.register(self.current.line, selectors.EVENT_READ, lambda mask: None)  # a child's end wakes the loop
        for app in self.loader.named():  # imported in next zygotes, one after the other (see take_import)
            self.imports.queue.setdefault(app, None)

    def fork(self, request: bytes, fds: list[int]) -> tuple[int, int]:
        """A child forked by the current zygote: (pid, pidfd)."""
        return self._ask(lambda current: current.fork(request, fds))

    def refusal(self, app: str, source: Source | None) -> dict[str, Any]:
        """The answer to a visitor of ``app``, not imported yet: see :mod:`.imports`."""
        return self.imports.refusal(app, source, self._next)

    def take_import(self) -> str | None:
        """The app a next zygote imported, if one did: that zygote forks from now on. The next
        import of the queue starts."""
        ready = self.imports.done()
        if ready is not None:
            assert ready.app is not None
            if self.current is not None:
                self.older.append(self.current)
            self.current = ready
            self.apps.add(ready.app)
        if not self.stopping():
            self.imports.start_next(self._next)
        return ready.app if ready is not None else None

    def ends(self) -> list[tuple[int, int]]:
        """The children that ended, (pid, waitpid status): those the zygotes told of, and the
        fork-server's own; the ends of zygotes and imports are taken here."""
        ended = []
        found = self.pending_ends + [end for forking in self.all() for end in forking.exits()] + ended_children()
        while found:
            self.pending_ends = []
            for pid, status in found:
                gone = next((forking for forking in self.all() if forking.pid == pid), None)
                if gone is not None:
                    self._gone(gone, describe(status), reaped=True)  # its children's ends told: pending
                elif not self.imports.ended(pid, status):
                    ended.append((pid, status))
            found = self.pending_ends
        return ended

    def wait(self, timeout: float) -> None:
        """Until a zygote says something, for ``timeout`` seconds at most."""
        if self.all():
            readable([forking.line.fileno() for forking in self.all()], timeout)

    def all(self) -> list[Zygote]:
        """Every zygote with children of its own: the current one last."""
        return [*self.older, *([self.current] if self.current is not None else [])]

    def stop(self) -> None:
        """End them all, each before the zygotes it forked: those are this process' to reap then."""
        for forking in self.all():
            forking.stop()
        self.imports.stop()

    def _next(self, app: str, source: Source | None) -> Zygote:
        return self._ask(lambda current: current.next(app, source))

    def _ask(self, ask: Callable[[Zygote], T]) -> T:
        """``ask`` the current zygote; one that died is replaced and asked again; one that
        does not answer is replaced, and the caller asks again (:class:`.zygote.ZygoteStuck`)."""
        for attempt in range(2):
            if self.current is None:
                self.start()
            assert self.current is not None
            try:
                return ask(self.current)
            except ZygoteStuck as exc:
                self._stuck(self.current, str(exc))
                raise
            except ZygoteGone as exc:
                if attempt:
                    raise
                self._gone(self.current, str(exc))
        raise AssertionError("unreachable")

    def _stuck(self, stuck: Zygote, why: str) -> None:
        """The current zygote does not answer: a new one forks from now on. The stuck one is not
        killed, which would end its processes: it is kept with the older ones, its spares too."""
        logger.error("fork-server: its zygote is stuck (%s): it keeps its processes, a new one forks from now on", why)
        self.older.append(stuck)
        self._start_again()

    def _gone(self, gone: Zygote, why: str, reaped: bool = False) -> None:
        """A zygote died: its children end with it (their death signal), the zygotes forked
        from it too, and are reaped by the fork-server, as they are now its own
        (``PR_SET_CHILD_SUBREAPER``). A new current one starts at once, ready for the next user."""
        level = logging.INFO if self.stopping() else logging.ERROR  # at a stop, systemd signals every process
        if gone is self.current:
            logger.log(level, "fork-server: its zygote ended (%s): its processes end with it, a new one is started", why)
        else:
            logger.log(level, "fork-server: an older zygote ended (%s): its processes end with it, and the zygotes forked from it", why)
        self.selector.unregister(gone.line)
        self.pending_ends += gone.exits()
        if reaped:
            gone.close()
        else:
            gone.stop()
        self.on_gone()
        if gone is not self.current:
            self.older.remove(gone)
            return
        self.on_current_gone()
        self._start_again()

    def _start_again(self) -> None:
        """A new current zygote, at once: ready for the next user."""
        self.current = None
        if not self.stopping():
            try:
                self.start()
            except OSError:  # no process to be had now: the next fork asks again
                logger.exception("fork-server: a new zygote could not be started")
