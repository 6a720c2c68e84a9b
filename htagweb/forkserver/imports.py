"""The import of an app named by a string ("module:Class"), in a next zygote.

The apps a server names by strings are imported once its fork-server is up, one
after the other, and a development folder's index at its first visit. Each import
runs in a zygote of its own (:meth:`.zygote.Zygote.next`), so that an import that
takes long, or never ends, holds back no other app: the fork-server answers its
visitors "still loading" meanwhile (their front asks again for a while), and goes
on serving everyone else. One import runs at a time: a next zygote carries every
app of the one it was forked from. An import that takes longer than
``timeout_interaction`` is aborted (SIGABRT: its Python stack, where it hung, is
logged); a failed import is told as it is for :data:`RETRY_AFTER` seconds, then
tried again at the next visit.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..ends import describe
from . import messages
from .children import take_stack
from .messages import Source
from .zygote import ForkRefused, Told, Zygote, ZygoteStuck

logger = logging.getLogger("htagweb")

#: asks the current zygote for a next one, forked to import an app
ForkNext = Callable[[str, Source | None, Told[Zygote]], None]

#: seconds a failed import is told as it is before the next visit tries it again
RETRY_AFTER = 5.0
#: seconds an import may hold back the pool of spares (each import replaces them: see Spares.drop_without)
SPARES_HELD = 1.0


@dataclass
class Failure:
    traceback: str
    at: float


class Imports:
    def __init__(self, config: Config, stacks: Path, selector: selectors.BaseSelector) -> None:
        self.config = config
        self.stacks = stacks
        self.selector = selector
        #: the zygote importing an app, until it says it did
        self.next: Zygote | None = None
        #: the app whose zygote is asked for, until it is forked
        self.asking: str | None = None
        self.started = 0.0
        self.aborted = False
        #: the apps to import next, in order
        self.queue: dict[str, Source | None] = {}
        self.failures: dict[str, Failure] = {}

    def refusal(self, app: str, source: Source | None, fork_next: ForkNext) -> dict[str, Any]:
        """The answer to a visitor of ``app``, not imported yet; its import is started or queued."""
        failure = self.failures.get(app)
        if failure is not None and time.monotonic() - failure.at < RETRY_AFTER:
            return messages.error(500, f"The application {app} could not be loaded.", traceback=failure.traceback)
        if self.asking != app and (self.next is None or self.next.app != app):
            self.queue.setdefault(app, source)
            self.start_next(fork_next)
        return messages.error(503, f"The application {app} is still loading: try again in a moment.", loading=True)

    def start_next(self, fork_next: ForkNext) -> None:
        """The next import of the queue starts, unless one runs."""
        if self.next is not None or self.asking is not None or not self.queue:
            return
        app = next(iter(self.queue))
        source = self.queue.pop(app)
        self.failures.pop(app, None)
        self.asking = app
        fork_next(app, source, lambda outcome: self._forked(app, source, outcome))

    def _forked(self, app: str, source: Source | None, outcome: Zygote | ForkRefused) -> None:
        self.asking = None
        if isinstance(outcome, ZygoteStuck):  # a new zygote was started: it is asked at the next turn
            self.queue.setdefault(app, source)
            return
        if isinstance(outcome, ForkRefused):  # no process to be had now: told, tried again later
            logger.error("cannot start the import of %s: %s", app, outcome)
            self.failures[app] = Failure(f"Its import could not start: {outcome}", time.monotonic())
            return
        self.next = outcome
        self.started, self.aborted = time.monotonic(), False
        self.selector.register(outcome.line, selectors.EVENT_READ, lambda mask: None)  # its word wakes the loop
        logger.info("importing %s in a new zygote (pid %d)", app, outcome.pid)

    def holds_spares(self) -> bool:
        """Whether the pool of spares waits: an import that began less than :data:`SPARES_HELD`
        seconds ago, or one queued, would replace the spares forked now."""
        return bool(self.queue) or self.asking is not None or (self.next is not None and time.monotonic() - self.started < SPARES_HELD)

    def done(self) -> Zygote | None:
        """The next zygote, once it imported its app and serves (its line stays registered);
        None until then, or if the import failed (logged, told to the app's visitors)."""
        ready = self.next
        if ready is None:
            return None
        ready.exits()  # none: it has no children yet; its word on the import is read on the way
        if ready.importing is not None:
            self._abort_if_late(ready)
            return None
        self.next = None
        if ready.imported is None:
            logger.info("imported %s: its zygote (pid %d) forks from now on", ready.app, ready.pid)
            return ready
        logger.error("cannot load htag app %s: %s", ready.app, ready.imported["error"])
        self._failed(ready, ready.imported["traceback"])
        return None

    def ended(self, pid: int, status: int) -> bool:
        """Whether ``pid`` was the next zygote, ended before its word on the import was taken.
        Its end comes on its parent's line, its word on its own: the word, if it said it, first."""
        gone = self.next
        if gone is None or pid != gone.pid:
            return False
        gone.exits()
        if gone.imported is not None:
            self.done()  # told as a failed import, with its traceback
            return True
        self.next = None
        if gone.importing is None:  # imported, then ended before it forked: no fault of the app
            logger.warning("the zygote that imported %s ended (%s): the next visit imports it again", gone.app, describe(status))
            self._let_go(gone)
            return True
        stack = take_stack(self.stacks, pid)
        if not self.aborted and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM:
            # the zygote it was forked from died (its death signal), or a stop: no fault of the app
            logger.info("the import of %s was cut short (its zygote ended): the next visit tries again", gone.app)
            self._let_go(gone)
            return True
        if self.aborted:
            limit = self.config.timeout_interaction
            logger.warning(
                "cannot load htag app %s: its import has taken over %gs; its Python stack when it was stopped:\n%s", gone.app, limit, stack
            )
            self._failed(gone, f"Its import took longer than {limit:g} s.\n{stack}")
        else:
            logger.error("cannot load htag app %s: its zygote ended while importing it (%s)", gone.app, describe(status))
            self._failed(gone, f"Its import ended the process ({describe(status)}).\n{stack}")
        return True

    def timeout(self) -> float:
        """Seconds until the import under way stops holding the spares back, or must be over
        (1 while it is aborted); 0 if one waits to start; inf: none."""
        if self.next is None:
            return 0.0 if self.queue and self.asking is None else float("inf")
        now, limit = time.monotonic(), self.config.timeout_interaction
        waits = [self.started + SPARES_HELD - now] if now < self.started + SPARES_HELD else []
        if limit:
            waits.append(1.0 if self.aborted else self.started + limit - now)
        return max(0.0, min(waits, default=float("inf")))

    def stop(self) -> None:
        if self.next is not None:
            self.selector.unregister(self.next.line)
            self.next.stop()
            self.next = None

    def _abort_if_late(self, importing: Zygote) -> None:
        limit = self.config.timeout_interaction
        if limit and not self.aborted and time.monotonic() - self.started > limit:
            self.aborted = True
            importing.signal(signal.SIGABRT)  # faulthandler writes its stack, then it dies: see ended()

    def _failed(self, gone: Zygote, traceback: str) -> None:
        assert gone.app is not None
        self.failures[gone.app] = Failure(traceback, time.monotonic())
        self._let_go(gone)

    def _let_go(self, gone: Zygote) -> None:
        self.selector.unregister(gone.line)
        gone.close()
