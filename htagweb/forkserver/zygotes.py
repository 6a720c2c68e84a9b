"""The fork-server's zygotes: the current one, which forks, and the older ones, which keep
their children until they end.

An app named by a string is imported in a next zygote (:mod:`.imports`), forked from the
current one: once its import is over it becomes the current one. A zygote that dies takes
its children with it, and the zygotes forked from it; the fork-server, their subreaper,
reaps them all. When the current one dies, a new one is forked from the fork-server at once,
with the apps given as classes; those named by strings are imported again. So is one when
the current one stops answering (:class:`.zygote.ZygoteStuck`): that one is kept with the
older ones, and its processes with it.

Nothing waits for a zygote: what is asked of it is told to the asker in a later turn of the
fork-server's loop (:meth:`Zygotes.tell`), its answer or why there is none; or before the
ends of children are taken (:meth:`Zygotes.ends`), as a process' end may be read in the
same go as the answer that forked it.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import resource
import selectors
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ..config import Config
from ..ends import describe
from ..runtime import Runtime
from ..slot import shared_slot
from . import zygote
from .children import Listening, ended_children, listen, readable
from .imports import Imports
from .loader import AppLoader
from .messages import Source
from .zygote import ForkRefused, Told, Zygote, ZygoteGone, ZygoteStuck

logger = logging.getLogger("htagweb")

#: processes asked of a zygote at most before it answers one (its line holds some 270 requests:
#: a full one would read as a zygote that does not read it); the others wait their turn here
IN_FLIGHT = 32


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
        #: what tells askers that their request was given up on (see :meth:`tell`)
        self.given_up: list[Callable[[], None]] = []
        #: the fork-server's ends of the control lines of processes asked for: a zygote started meanwhile closes them
        self.kept: set[socket.socket] = set()
        #: processes to ask for once the current zygote has fewer than IN_FLIGHT under way
        self.waiting_room: collections.deque[Callable[[], None]] = collections.deque()

    def start(self) -> None:
        """Fork the zygote: a copy of the fork-server as it is now, warm, that will only fork."""
        parent, title = os.getpid(), f"htagweb zygote {self.runtime.path}"

        def serve(line: socket.socket) -> NoReturn:
            resource.setrlimit(resource.RLIMIT_NOFILE, self.open_files_limit)
            zygote.serve(line, self.loader, self.config, self.runtime.users_dir, parent, title)

        next_one = [self.imports.next] if self.imports.next is not None else []
        closed = self.inherited() + [other.line.fileno() for other in [*self.all(), *next_one]] + [kept.fileno() for kept in self.kept]
        self.current = Zygote.start(serve, closed)
        self.apps = set(self.loader.classes)
        self.selector.register(self.current.line, selectors.EVENT_READ, lambda mask: None)  # a child's end wakes the loop
        for app in self.loader.named():  # imported in next zygotes, one after the other (see take_import)
            self.imports.queue.setdefault(app, None)

    def fork_listening(self, request: bytes, path: Path, told: Told[Listening]) -> None:
        """Ask the current zygote for a process on ``request``, listening at ``path``: ``told``
        gets it, or the refusal (then all that was made for it goes). Asked in turn if
        :data:`IN_FLIGHT` are under way."""
        self.waiting_room.append(functools.partial(self._fork_listening, request, path, told))
        self._let_in()

    def _let_in(self) -> None:
        while self.waiting_room and (self.current is None or len(self.current.asked) < IN_FLIGHT):
            self.waiting_room.popleft()()

    def _fork_listening(self, request: bytes, path: Path, told: Told[Listening], again: bool = True) -> None:
        """See :meth:`fork_listening`. What the process takes (its end of its control line, its
        listening socket, its slot's file) is closed here once handed over. A zygote stuck or
        gone may still hold those: the next one is asked once more with new ones."""
        made: list[Callable[[], None]] = []
        try:
            listener = listen(path)
            made.append(listener.close)
            slot, slot_fd = shared_slot()
            made += [slot.close, functools.partial(os.close, slot_fd)]
            ours, theirs = socket.socketpair()
        except OSError as exc:  # no descriptor left
            for undo in made:
                undo()
            path.unlink(missing_ok=True)
            self.given_up.append(functools.partial(told, ForkRefused(f"cannot make its sockets: {exc}")))
            return
        self.kept.add(ours)

        def forked(outcome: tuple[int, int] | ForkRefused) -> None:
            self.kept.discard(ours)
            if not isinstance(outcome, ForkRefused):
                told((*outcome, slot, ours))
                return
            ours.close()
            slot.close()
            path.unlink(missing_ok=True)
            if again and isinstance(outcome, (ZygoteStuck, ZygoteGone)):  # first in the waiting room
                self.waiting_room.appendleft(functools.partial(self._fork_listening, request, path, told, again=False))
            else:
                told(outcome)

        try:
            self._ask(lambda current: current.fork(request, [theirs.fileno(), listener.fileno(), slot_fd], forked), forked)
        finally:
            theirs.close()
            listener.close()
            os.close(slot_fd)

    def tell(self) -> None:
        """Tell the askers what came of their requests, and let in those waiting their turn."""
        self._tell_answers()
        self._let_in()

    def _tell_answers(self) -> None:
        """Tell the askers what came of their requests: the answers read, the requests given up on."""
        told = self.given_up + [answer for forking in self.all() for answer in forking.told()]
        self.given_up = []
        for tell in told:
            tell()

    def check(self) -> None:
        """Give up on a current zygote that does not answer (see :meth:`.zygote.Zygote.overdue`)."""
        if self.current is not None and (why := self.current.overdue()) is not None:
            self._stuck(self.current, why)

    def timeout(self) -> float:
        """Seconds until there is something to tell, or a current zygote to look at again."""
        if self.given_up or any(forking.answered for forking in self.all()):
            return 0.0
        return self.current.next_look() if self.current is not None else float("inf")

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
            others = []
            for pid, status in found:
                gone = next((forking for forking in self.all() if forking.pid == pid), None)
                if gone is not None:
                    self._gone(gone, describe(status), reaped=True)  # its children's ends told: pending
                else:
                    others.append((pid, status))
            # a process may end right after its fork: the answer that tells of it, read in the
            # same go, is told first, so that its end is taken as that process'
            self._tell_answers()
            ended += [(pid, status) for pid, status in others if not self.imports.ended(pid, status)]
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

    def _next(self, app: str, source: Source | None, told: Told[Zygote]) -> None:
        self._ask(lambda current: current.next(app, source, told), told)

    def _ask(self, ask: Callable[[Zygote], None], told: Told[Any]) -> None:
        """``ask`` the current zygote, started if there is none. One that cannot be asked (its
        line broke, or is full) is replaced, and the asker told (see :meth:`tell`)."""
        try:
            if self.current is None:
                self.start()
        except OSError as exc:  # no zygote could be started: no process to be had now
            self.given_up.append(functools.partial(told, ForkRefused(f"no zygote could be started: {exc}")))
            return
        current = self.current
        assert current is not None
        try:
            ask(current)
        except ZygoteStuck as exc:
            self.given_up.append(functools.partial(told, exc))
            self._stuck(current, str(exc))
        except ZygoteGone as exc:
            self.given_up.append(functools.partial(told, exc))
            self._gone(current, str(exc))

    def _stuck(self, stuck: Zygote, why: str) -> None:
        """The current zygote does not answer: a new one forks from now on. The stuck one is not
        killed, which would end its processes: it is kept with the older ones, its spares too."""
        logger.error("fork-server: its zygote is stuck (%s): it keeps its processes, a new one forks from now on", why)
        self.given_up += stuck.told() + stuck.abandon(ZygoteStuck(why))
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
        self.given_up += gone.told() + gone.abandon(ZygoteGone(why))
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
