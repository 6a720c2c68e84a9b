"""The pool of spare user processes, forked ahead of need.

A new user, even one of a crowd arriving at once, then costs renaming a socket
and a message rather than a fork. Spares are forked asleep, at about 1.1 MB
each; ``REHEARSED`` of them are woken to rehearse (see :mod:`htagweb.rehearsal`),
the fastest for the next users (new users often come in a row). No spare is
forked or woken while a user's arrival is under way (it would slow that very
page load): a process tells, on its control socket, when its user's arrival is
over. Nor while other processes wait for a CPU (see :mod:`.pressure`), unless
the pool has waited for ``REFILL_ANYWAY``.

The pool is refilled in batches, once a quarter of it is gone, not one spare
after each arrival: forking and rehearsing a spare takes a CPU, and a batch takes
it once, when the CPUs are calm. Spares are forked by the zygote (:mod:`.zygote`), one
asked at a time: a new user's fork is never queued behind a batch of them.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable, Collection
from pathlib import Path

from ..config import Config
from ..runtime import Runtime
from ..slot import REHEARSING, SETTLE_LIMIT, read_slot, reset_slot
from ..spare import REHEARSE
from .children import Listening, SpareChild
from .pressure import WINDOW, CpuPressure
from .zygote import SPARE, ForkRefused, Told

#: asks a zygote for a process listening at a path (see :meth:`.zygotes.Zygotes.fork_listening`)
ForkListening = Callable[[bytes, Path, Told[Listening]], None]

logger = logging.getLogger("htagweb")

#: seconds after which a short pool gets a spare (or a spare is woken) even on a machine that is never calm
REFILL_ANYWAY = 1.0
#: seconds before a spare is forked again after a fork was refused (no more processes, no memory)
RETRY_REFUSED = 1.0
#: spares woken to rehearse a first page load (about 4.4 MB each, against 1.1 asleep)
REHEARSED = 4


class Spares:
    def __init__(self, runtime: Runtime, config: Config, selector: selectors.BaseSelector, fork: ForkListening) -> None:
        self.runtime = runtime
        self.config = config
        self.selector = selector
        self._fork = fork
        self.spares: list[SpareChild] = []
        #: control sockets of processes whose user's arrival is not over, and since when
        self.settling: dict[socket.socket, float] = {}
        self.pressure = CpuPressure()
        self.forked_at = 0.0
        self.woken_at = 0.0
        #: when a spare's fork was last refused (0: the last one was not)
        self.refused_at = 0.0
        #: the spares woken to rehearse (counted without looking at every spare at each turn of the loop)
        self.rehearsed: set[SpareChild] = set()
        #: the pool fell to its low-water mark and is being filled again
        self.refilling = False
        #: a spare is asked of the zygote, not forked yet
        self.asked = False
        #: how many times the pool was emptied, or an app imported: a spare asked before is not for it
        self.renewed = 0

    def __len__(self) -> int:
        return len(self.spares)

    def wanted(self, apps: Collection[str], users: int) -> bool:
        """Whether to fork one more spare now: the pool is short, no arrival is under
        way, and the CPUs are calm (or have not been for long)."""
        return (
            not self.asked
            and self.short(apps, users)
            and self._calm_since(self.forked_at)
            and time.monotonic() - self.refused_at >= RETRY_REFUSED
        )

    def short(self, apps: Collection[str], users: int) -> bool:
        """Whether the pool lacks a spare that could be forked once the CPUs are calm: it fell
        to its low-water mark (a quarter below its size) and is not full again yet. A server near
        ``max_processes`` keeps no more spares than it may still give out."""
        if not apps or self.settling:
            return False
        size = min(self.config.spares, self.config.max_processes - users)
        pool = len(self.spares) + self.asked
        if pool >= size:
            self.refilling = False
        elif pool <= size - max(1, size // 4):
            self.refilling = True
        return self.refilling

    def rehearse(self) -> None:
        """Wake a sleeping spare to rehearse, if fewer than ``REHEARSED`` do, no arrival is
        under way and the CPUs are calm (or have not been for long)."""
        if len(self.rehearsed) >= REHEARSED or self.settling or not self._calm_since(self.woken_at):
            return
        spare = next((spare for spare in reversed(self.spares) if not spare.rehearsed), None)
        if spare is None or spare.control is None:
            return
        reset_slot(spare.slot, REHEARSING)  # until it says it is over: given after the rehearsed and the asleep
        try:
            spare.control.send(REHEARSE)
        except OSError:  # it died: reaped soon
            return
        spare.rehearsed = True
        self.rehearsed.add(spare)
        self.woken_at = time.monotonic()

    def _calm_since(self, last: float) -> bool:
        return self.pressure.is_calm() or time.monotonic() - last >= REFILL_ANYWAY

    def fork(self, apps: Collection[str]) -> None:
        """Ask for a spare of ``apps`` (the zygote's), listening already under a name of its
        own: giving it to a user is a rename."""
        path = self.runtime.users_dir / f".spare-{os.urandom(8).hex()}.sock"
        self.asked = True
        self.forked_at = time.monotonic()
        renewed = self.renewed
        self._fork(SPARE, path, lambda outcome: self._forked(outcome, path, frozenset(apps), renewed))

    def _forked(self, outcome: Listening | ForkRefused, path: Path, apps: frozenset[str], renewed: int) -> None:
        self.asked = False
        if isinstance(outcome, ForkRefused):  # tried again later; users keep being served by a fork each
            if not self.refused_at:
                logger.warning("fork-server: cannot fork a spare user process (%s): tried again every %gs", outcome, RETRY_REFUSED)
            self.refused_at = time.monotonic()
            return
        if self.refused_at:
            logger.info("fork-server: spare user processes can be forked again")
            self.refused_at = 0.0
        pid, pidfd, slot, ours = outcome
        spare = SpareChild(pid, slot, self.runtime.users_dir, pidfd=pidfd, control=ours, path=path, apps=apps)
        self.spares.append(spare)
        if renewed != self.renewed:  # emptied meanwhile, or asked of a zygote without the app imported since
            self.forget(spare)
            self.drop(spare)

    def take(self, path: os.PathLike[str], app: str, label: str) -> SpareChild | None:
        """A spare given to this user, serving at ``path``; None if none can. A rehearsed
        one first, then one asleep, and last one still rehearsing (it would make the user
        wait for the end of a step of its rehearsal, and compete with it)."""
        for spare in sorted(self.spares, key=_readiness):
            if app in spare.apps:
                self.forget(spare)
                if self._assign(spare, path, app, label):
                    return spare
        return None

    def forget(self, spare: SpareChild) -> None:
        """``spare`` leaves the pool."""
        self.spares.remove(spare)
        self.rehearsed.discard(spare)

    def _assign(self, spare: SpareChild, path: os.PathLike[str], app: str, label: str) -> bool:
        """Its socket renamed into place (atomically replacing a dead process' one), then its session."""
        assert spare.control is not None
        try:
            os.rename(spare.path, path)
            spare.control.sendall(json.dumps({"app": app, "label": label}).encode())
        except OSError:
            self.drop(spare)
            return False
        self.arriving(spare.control)
        return True

    def arriving(self, control: socket.socket) -> None:
        """A user is arriving at the process at the other end of ``control``: no spare is forked until it says it is over."""
        self.settling[control] = time.monotonic()
        self.selector.register(control, selectors.EVENT_READ, lambda mask: self.settled(control))

    def settled(self, control: socket.socket) -> None:
        """A user process said its arrival is over (or ended)."""
        del self.settling[control]
        self.selector.unregister(control)
        control.close()

    def expire_settling(self) -> None:
        """An arrival not over after twice the process' own limit (an app whose construction hangs): stop waiting for it."""
        now = time.monotonic()
        for control, since in list(self.settling.items()):
            if now - since > 2 * SETTLE_LIMIT:
                self.settled(control)

    def next_check(self, apps: Collection[str], users: int) -> float:
        """Seconds until the pool has something to do: an arrival to stop waiting for
        (:meth:`expire_settling`), or the CPUs to measure again while it is short or lacks a
        rehearsed spare (1 if nothing)."""
        if self.short(apps, users) or len(self.rehearsed) < min(REHEARSED, len(self.spares)):
            return WINDOW
        if not self.settling:
            return 1.0
        return max(0.0, min(self.settling.values()) + 2 * SETTLE_LIMIT - time.monotonic())

    def drop(self, spare: SpareChild) -> None:
        """End a live spare no user will get (its end is not waited for)."""
        self._kill(spare)
        spare.release()

    def _kill(self, spare: SpareChild) -> None:
        if spare.control is not None:
            spare.control.close()
        spare.kill()
        spare.path.unlink(missing_ok=True)

    def drop_without(self, app: str) -> None:
        """Spares forked before ``app`` was imported cannot serve it: replaced."""
        self.renewed += 1
        for spare in [spare for spare in self.spares if app not in spare.apps]:
            self.forget(spare)
            self.drop(spare)

    def reaped(self, pid: int, status: int, stopping: bool) -> bool:
        """Whether ``pid`` was a spare (now forgotten). One dying unused is worth a warning, except at a stop
        (systemd signals every process of the service)."""
        spare = next((spare for spare in self.spares if spare.pid == pid), None)
        if spare is None:
            return False
        spare.reaped(status)
        logger.log(logging.DEBUG if stopping else logging.WARNING, "spare user process %d died (status %d)", pid, status)
        self.forget(spare)
        self.drop(spare)
        spare.take_stack()
        spare.slot.close()
        return True

    def inherited(self) -> list[int]:
        """What a new child closes: the other spares' lines (a spare sees the end of its line
        when the fork-server drops it, which no other process may hold open) and the ones
        of arrivals under way."""
        fds = [spare.control.fileno() for spare in self.spares if spare.control is not None]
        return fds + [control.fileno() for control in self.settling]

    def stop(self) -> None:
        for spare in self.spares:
            self._kill(spare)
        for spare in self.spares:
            spare.join(5.0)
            spare.release()
            spare.take_stack()
        self.spares.clear()
        self.rehearsed.clear()
        self.renewed += 1


def _readiness(spare: SpareChild) -> int:
    """How soon a spare can serve a user: 0 rehearsed, 1 asleep, 2 still rehearsing."""
    if not spare.rehearsed:
        return 1
    return 2 if read_slot(spare.slot).state == REHEARSING else 0
