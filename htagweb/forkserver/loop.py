"""The fork-server's loop: requests from the workers in, replies out, children reaped.

Nothing in it blocks on a worker: its lines are non-blocking (:mod:`.lines`), signal
handlers only queue (SIGCHLD and the stop signals wake the loop through a wake-up
pipe, no polling), and a request whose answer must wait (why a process still listed
is gone, a process the zygote forks) is answered once it can be, while other requests go
on: nothing waits for the zygote either (see :mod:`.zygote`).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import selectors
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from setproctitle import setproctitle

from ..admission import Candidate, NewProcessLimit, address_group, make_room_from, waits_its_turn
from ..appspec import AppSpec
from ..config import Config
from ..ends import End
from ..immortal import share
from ..merging import why_unmerged
from ..metrics import COUNTERS, FRONT_COUNTERS
from ..rehearsal import warm_up
from ..runtime import Runtime
from ..slot import read_slot
from . import messages
from .census import ROOM_SIGNAL, OlderGenerations, count_path, publish
from .children import (
    PR_SET_CHILD_SUBREAPER,
    Listening,
    UserChild,
    parent,
    prctl,
    stack_path,
    stopped,
)
from .lines import Line, Lines, Reply
from .listener import Listener
from .loader import AppLoader
from .spares import Spares
from .users import UserProcesses, listed
from .watchdogs import Watchdogs
from .zygote import ForkRefused, user_request
from .zygotes import Zygotes

logger = logging.getLogger("htagweb")

#: seconds a status request waits for a listed process to be reaped
STATUS_WAIT = 1.0
#: seconds a retired fork-server stays after its last user process ended, answering why it ended
RETIRED_LINGER = 5.0
#: descriptors the fork-server holds for each process: its pidfd and its slot's file
OPEN_FILES_PER_PROCESS = 2
#: seconds a stopping fork-server waits for the zygote to tell of its children's ends
EXITS_WAIT = 2.0
#: a new user waits for processes that make room once they have answered their own users
STARTING_OTHERS = "The server is starting other new sessions: try again in a moment."


@dataclass
class Forking:
    """A user's process asked of the zygote, and the requests for it that wait."""

    key: str
    app: str
    label: str
    path: Path
    waiting: list[tuple[Line, Reply]]
    address: str


@dataclass
class StatusWait:
    line: Line
    reply: Reply
    key: str
    deadline: float


class ForkServer:
    def __init__(self, runtime: Runtime, config: Config, apps: dict[str, AppSpec]) -> None:
        self.runtime = runtime
        self.config = config
        self.loader = AppLoader(apps, runtime)
        #: the limit of open files this process was started with, and its processes keep
        self.open_files_limit = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.selector = selectors.DefaultSelector()
        #: what forks the children, started once this process is warm (and again if it dies)
        self.zygotes = Zygotes(
            runtime,
            config,
            self.loader,
            self.selector,
            self.open_files_limit,
            inherited=self._inherited,
            stopping=lambda: self.stop_requested,
            on_current_gone=lambda: self.spares.stop(),
            on_gone=self._continue_orphans,
        )
        self.lines = Lines(self.selector, self._handle, self._dropped)
        self.presence: set[Line] = set()
        #: the workers that said hello, and their parents (a gunicorn or uvicorn master)
        self.server_pids: set[int] = set()
        #: the parents that manage workers: while one lives, workers that all left may be replaced (a reload)
        self.masters: set[int] = set()
        self.orphaned_since: float | None = time.monotonic()
        self.stop_requested = False
        #: a fork-server of newer code took over: no more spares, and it ends once its last user process has
        self.retired = False
        #: since when a retired fork-server has no user process left
        self.emptied_at: float | None = None
        #: the sockets of the older generations' fork-servers this one retired
        self.predecessors: list[Path] = []
        #: their processes count towards max_processes (see census.py)
        self.older = OlderGenerations()
        #: a newer fork-server asked this retired one for room
        self.room_asked = False
        #: the count this retired one last published
        self.published: int | None = None
        #: what /_htagweb/metrics reports, for the whole server (fronts add theirs with the "count" request)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.users = UserProcesses(runtime, self.loader, self.counters)
        self.spares = Spares(runtime, config, self.selector, self.zygotes.fork_listening)
        #: user processes asked of the zygote, by key
        self.forking: dict[str, Forking] = {}
        self.watchdogs = Watchdogs(config)
        self.new_process_limit = NewProcessLimit(config.new_processes_per_minute)
        self.status_waits: list[StatusWait] = []
        self.listener: Listener | None = None
        self.wakeup_r, self.wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # --- life ------------------------------------------------------------

    def run(self, ready_fd: int) -> None:
        """Serve until the server stops; never returns."""
        setproctitle(f"htagweb fork-server {self.runtime.path}")
        prctl(PR_SET_CHILD_SUBREAPER, 1)  # a dead zygote's children (ending with it) are reaped here
        _, hard = self.open_files_limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # two per process: max_processes may be above the soft limit
        if hard < (needed := OPEN_FILES_PER_PROCESS * (self.config.max_processes + self.config.spares) + 64):
            logger.warning(
                "fork-server: at most %d open files (RLIMIT_NOFILE), and max_processes=%d needs some %d (a pidfd and a slot"
                " per process): raise the limit (ulimit -n, LimitNOFILE= in a systemd unit) or lower max_processes",
                hard,
                self.config.max_processes,
                needed,
            )
        signal.set_wakeup_fd(self.wakeup_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop_signal)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # its byte on the wake-up pipe is what counts
        signal.signal(ROOM_SIGNAL, self._on_room_asked)
        self.selector.register(self.wakeup_r, selectors.EVENT_READ, self._woken)
        refusal = self._retire_predecessors()
        if refusal:
            logger.error("fork-server not started: %s", refusal)
            os._exit(1)
        path = self.runtime.forkserver_socket
        _remove(path)
        listener = self.listener = Listener(path, self.selector, self.lines.add)
        if self.config.merge_memory and (unmerged := why_unmerged()):
            logger.warning("merge_memory is set, but %s", unmerged)
        self.loader.import_given()
        warm_up(self.config)
        gc.collect()
        share()  # what is here now is shared copy-on-write by the zygote, then by every user process
        self.zygotes.start()
        os.write(ready_fd, b"1")
        os.close(ready_fd)
        logger.info("fork-server %d serving %s (code generation %s)", os.getpid(), self.runtime.path, self.runtime.generation)
        while not self.stop_requested:
            for key, mask in self.selector.select(self._timeout()):
                key.data(mask)
            self._reap()
            self.zygotes.check()
            self.zygotes.tell()
            listener.resume_when_due()
            if (imported := self.zygotes.take_import()) is not None:
                self.spares.drop_without(imported)
            self._answer_status_waits()
            self.spares.expire_settling()
            if self._spares_wanted():
                self.spares.fork(self.zygotes.apps)
            if self._keeps_spares:
                self.spares.rehearse()
            self.watchdogs.check(self.users)
            if self.orphaned_since is not None:
                self._check_orphaned()
            if self.retired:
                self._give_room()
            if self.retired and not self.users and not self.presence:
                self._end_when_unasked()
            else:
                self.emptied_at = None
        self._shutdown()

    def _end_when_unasked(self) -> None:
        """A retired fork-server whose last user process ended stops, once the fronts
        have had time to ask why that process is gone (its users are told)."""
        now = time.monotonic()
        if self.emptied_at is None:
            self.emptied_at = now
        elif now - self.emptied_at > RETIRED_LINGER and not self.status_waits:
            logger.info("fork-server %d (code generation %s): its last user process ended", os.getpid(), self.runtime.generation)
            self.stop_requested = True

    @property
    def _keeps_spares(self) -> bool:
        """Whether the pool is kept: not by a fork-server that stops, nor by a retired one."""
        return not self.stop_requested and not self.retired

    def _spares_wanted(self) -> bool:
        return self._keeps_spares and not self.zygotes.imports.holds_spares() and self.spares.wanted(self.zygotes.apps, len(self.users))

    def _timeout(self) -> float:
        if self._spares_wanted():
            return 0
        waits = [wait.deadline - time.monotonic() for wait in self.status_waits]
        spares = self.spares.next_check(self.zygotes.apps, len(self.users)) if self._keeps_spares else 1.0
        accepting = self.listener.timeout() if self.listener is not None else 1.0
        zygotes = min(self.zygotes.timeout(), self.zygotes.imports.timeout())
        return max(0.0, min(self.watchdogs.next_check(), spares, zygotes, accepting, *waits))

    def _woken(self, mask: int) -> None:
        try:
            while os.read(self.wakeup_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _continue_orphans(self) -> None:
        """A dead zygote's processes end with it (their death signal, SIGTERM) and come to this
        process, their subreaper. One that is stopped (a debugger) would
        keep that signal pending for ever, counted and listed: continued, it ends."""
        for child in [*self.users, *self.spares.spares]:
            if stopped(child.pid) and parent(child.pid) == os.getpid():
                logger.info("fork-server: continued %s, stopped when its zygote died, so that it ends", child)
                child.signal(signal.SIGCONT)

    def _on_room_asked(self, signum: int, frame: Any) -> None:
        self.room_asked = True

    def _give_room(self) -> None:
        """A retired fork-server: room for a newer one's new user when asked, and its count
        of live processes published (see census.py)."""
        if self.room_asked:
            self.room_asked = False
            victim = make_room_from(self.users.candidates())
            if victim is not None:
                self._evict(victim, "room for a user of newer code")
        live = sum(child.end is None for child in self.users)
        if live != self.published:
            publish(self.runtime.forkserver_socket, live)
            self.published = live

    def _retire_predecessors(self) -> str | None:
        """Older code generations' fork-servers keep their users but fork no more (a reload:
        gunicorn's HUP); what a killed one left behind goes. The refusal of one that serves
        another server, if any (this one must not start)."""
        for path in self.runtime.forkserver_sockets():
            if path == self.runtime.forkserver_socket:
                continue
            reply = _ask(path, messages.Retire(self.config.server_id))
            if reply is None:
                _remove(path)
            elif not reply.get("ok"):
                return str(reply.get("error"))
            else:
                self.predecessors.append(path)
                self.older.add(path, reply.get("pid", 0))
        return None

    def _sweep(self) -> None:
        """At the stop of the last fork-server: what killed ones left behind (their
        processes ended with them) goes too."""
        if self.retired or any(path != self.runtime.forkserver_socket for path in self.runtime.forkserver_sockets()):
            return
        for pattern in ("*.sock", ".spare-*.sock", "*.stack", "*.deps"):
            for path in self.runtime.users_dir.glob(pattern):
                path.unlink(missing_ok=True)

    def _check_orphaned(self) -> None:
        """No worker is connected. Stop at once if the server is gone (killed, or a
        quick shutdown that skipped the goodbyes); else give a restarting worker time."""
        assert self.orphaned_since is not None
        if self.server_pids and not any(_alive(pid) for pid in self.server_pids):
            logger.info("fork-server: the server is gone, stopping")
            self.stop_requested = True
        elif self.masters and not any(_alive(pid) for pid in self.masters):
            logger.info("fork-server: the server's master is gone, stopping")
            self.stop_requested = True
        elif self.retired and self.users:
            return  # its workers were replaced by newer ones: its users stay until they leave
        elif time.monotonic() - self.orphaned_since > self.config.orphan_grace:
            logger.warning("fork-server: no worker for %ss, stopping", self.config.orphan_grace)
            self.stop_requested = True

    def _shutdown(self) -> None:
        """Blocking from here on: no worker waits for anything but the end."""
        self.spares.stop()
        children = list(self.users)
        logger.info("fork-server stopping: ending %d user processes", len(children))
        for child in children:
            child.stop(End.STOPPED)
        deadline = time.monotonic() + self.config.shutdown_grace
        for child in children:
            if not child.join(max(0.0, deadline - time.monotonic())):
                child.end = End.SHUTDOWN_GRACE
                child.kill()
                child.join(5.0)
        self._await_ends(children, EXITS_WAIT)
        self.zygotes.stop()
        _remove(self.runtime.forkserver_socket)
        stopping = []
        for path in self.predecessors:  # the server stops: the older generations' users end too
            if _ask(path, messages.Stop()) is None:  # killed: its socket is all that is left of it
                _remove(path)
            else:
                stopping.append(path)
        deadline = time.monotonic() + self.config.shutdown_grace + 5
        while any(path.exists() for path in stopping) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._sweep()
        self.lines.close_all()
        os._exit(0)

    # --- the lines from workers ----------------------------------------------

    def _dropped(self, line: Line) -> None:
        if line in self.presence:
            self.presence.discard(line)
            if not self.presence:
                self.orphaned_since = time.monotonic()

    def _handle(self, line: Line, request: messages.Request, reply: Reply) -> None:
        if isinstance(request, messages.Ensure):
            answer = self._ensure(line, request, reply)
            if answer is not None:
                reply.set(answer)
        elif isinstance(request, messages.Status):
            self._status(line, request.key, reply)
        elif isinstance(request, messages.Stalled):
            reply.set({"ok": True, "ended": self._end_if_stopped(request.key)})
        elif isinstance(request, messages.Rotate):
            reply.set({"ok": True, "moved": self.users.rotate(request.old, request.new) + self._rotate_forking(request.old, request.new)})
        elif isinstance(request, messages.Stats):
            self._reap()  # a process killed a moment ago is counted as such
            candidates = self.users.candidates()
            reply.set(
                {
                    "ok": True,
                    "processes": len(self.users),
                    "max_processes": self.config.max_processes,
                    "spares": len(self.spares),
                    "starting": len(self.forking),
                    "provisional": sum(not c.live for c in candidates),
                    "busy": sum(c.busy for c in candidates),
                    "counters": self.counters,
                }
            )
        elif isinstance(request, messages.Count):
            if request.counter in FRONT_COUNTERS:
                self.counters[request.counter] += 1
            reply.set({"ok": True})
        elif isinstance(request, messages.Users):
            reply.set({"ok": True, "processes": [listed(child) for child in self.users]})
        elif isinstance(request, messages.Kill):
            reply.set(self._kill(request))
        elif isinstance(request, messages.Hello):
            if request.server != self.config.server_id:
                error = f"this runtime directory serves another application ({self.config.server_id}), not {request.server}"
                reply.set(messages.error(409, error + ": give each server its own runtime_dir"))
                return
            self.presence.add(line)
            self.server_pids |= {pid for pid in (request.pid, request.ppid) if pid > 1}
            if request.supervised and request.ppid > 1:
                self.masters.add(request.ppid)
            self.orphaned_since = None
            reply.set({"ok": True, "pid": os.getpid()})
        elif isinstance(request, messages.Bye):
            self.presence.discard(line)
            if self.presence or (self.retired and self.users):
                pass
            elif any(_alive(pid) for pid in self.masters):  # a reload: new workers come (see _check_orphaned)
                self.orphaned_since = time.monotonic()
                logger.info("fork-server: its workers left, their master lives: waiting for new ones")
            else:
                self.stop_requested = True  # the connection stays open: EOF tells the worker we are done
            reply.set({"ok": True, "remaining": len(self.presence), "stopping": self.stop_requested})
        elif isinstance(request, messages.Retire):
            if request.server != self.config.server_id:
                error = f"this runtime directory serves another application ({self.config.server_id}), not {request.server}"
                reply.set(messages.error(409, error + ": give each server its own runtime_dir"))
                return
            if not self.retired:
                self.retired = True
                self.spares.stop()
                self._give_room()  # its count, before the newer one admits anyone
                logger.info(
                    "fork-server %d (code generation %s) retired by newer code: its %d user processes stay until they leave",
                    os.getpid(),
                    self.runtime.generation,
                    len(self.users),
                )
            reply.set({"ok": True, "pid": os.getpid()})
        elif isinstance(request, messages.Stop):
            self.stop_requested = True
            reply.set({"ok": True})

    def _status(self, line: Line, key: str, reply: Reply) -> None:
        """Why the process of ``key`` is gone. Asked when a front saw its connection end:
        a process still listed is given a moment to be reaped, without holding up the loop."""
        if key not in self.users.by_key:
            reply.set({"ok": True, "alive": False, "reason": self.users.why_gone(key).value})
        else:
            self.status_waits.append(StatusWait(line, reply, key, time.monotonic() + STATUS_WAIT))

    def _answer_status_waits(self) -> None:
        now = time.monotonic()
        waiting = []
        for wait in self.status_waits:
            child = self.users.by_key.get(wait.key)
            if child is None:
                wait.reply.set({"ok": True, "alive": False, "reason": self.users.why_gone(wait.key).value})
            elif now >= wait.deadline:
                wait.reply.set({"ok": True, "alive": child.end is None, "reason": child.end.value if child.end else None})
            else:
                waiting.append(wait)
                continue
            self.lines.flush(wait.line)
        self.status_waits = waiting

    def _end_if_stopped(self, key: str) -> bool:
        """The process of ``key`` has left a request unanswered for ``timeout_interaction``.
        One that runs a handler is the watchdogs' (:mod:`.watchdogs`); one that is stopped
        (SIGSTOP, a debugger) never started it: ended as if it hung."""
        child = self.users.live(key)
        if child is None or read_slot(child.slot).busy_since or not stopped(child.pid):
            return False
        limit = self.config.timeout_interaction
        logger.warning("user process killed: %s (stopped, by a signal or a debugger, with a request waiting for %gs)", child, limit)
        child.ending(End.INTERACTION_TIMEOUT)
        child.kill()
        return True

    def _kill(self, request: messages.Kill) -> dict[str, Any]:
        if not request.prefix:
            return messages.error(400, "a session prefix is needed")
        chosen = self.users.chosen(request.prefix, request.app)
        for child in chosen:
            logger.info("user process ended on request: %s", child)
            child.stop(End.KILLED)
        return {"ok": True, "processes": [listed(child) for child in chosen]}

    # --- user processes ----------------------------------------------------

    def _ensure(self, line: Line, request: messages.Ensure, reply: Reply) -> dict[str, Any] | None:
        """The user process of ``key``, spawned if needed; None if the answer comes once the
        zygote forked it (:meth:`_forked`). ``source`` describes an app of a development
        folder: a file app is imported in its process, and replaced when a file it imported
        changed."""
        key, app, label, source = request.key, request.app, request.label, request.source
        self._reap()
        child = self.users.live(key)
        if child is not None:
            if not self.loader.stale(key, source):
                return {"ok": True, "pid": child.pid, "spawned": False}
            logger.info("user process reloaded: %s (its source changed)", child)
            child.stop(End.RELOADED)
        if key in self.forking:  # asked for already (another tab, another worker): told together
            self.forking[key].waiting.append((line, reply))
            return None
        if not self.loader.per_process(source) and app not in self.zygotes.apps:  # "still loading": the front asks again
            return self.zygotes.refusal(app, source)
        address = address_group(request.client) if request.client else ""
        refusal = self._admit(request.client, address, label)
        if refusal is not None:
            return refusal
        path = self.runtime.user_socket_path(key)
        spare = None if self.loader.per_process(source) else self.spares.take(path, app, label)
        if spare is None:
            path.unlink(missing_ok=True)  # a previous process' socket, being replaced
            self.users.replacing(key)
            forking = self.forking[key] = Forking(key, app, label, path, [(line, reply)], address)
            asked = user_request(f"htagweb user {app} {label}", key, app, label, source)
            self.zygotes.fork_listening(asked, path, lambda outcome: self._forked(forking, outcome))
            return None
        child = UserChild(
            spare.pid, spare.slot, self.runtime.users_dir, pidfd=spare.pidfd, key=key, app=app, label=label, socket=path, address=address
        )
        self.users.add(child)
        self.lines.after_reply.append(("user process spawned: %s", child))
        return {"ok": True, "pid": child.pid, "spawned": True}

    def _forked(self, forking: Forking, outcome: Listening | ForkRefused) -> None:
        """The zygote forked a user's process, or none could be had: the requests for it are answered."""
        del self.forking[forking.key]
        if isinstance(outcome, ForkRefused):
            self.counters["fork_failures"] += 1
            logger.warning("fork-server: no process could be had for session %s, app %s: %s", forking.label, forking.app, outcome)
            refusal = messages.error(503, "The server cannot start a session now: try again in a moment.")
            for line, reply in forking.waiting:
                reply.set(refusal)
                self.lines.flush(line)
            return
        pid, pidfd, slot, control = outcome
        self.spares.arriving(control)
        key, app, label = forking.key, forking.app, forking.label
        child = UserChild(
            pid, slot, self.runtime.users_dir, pidfd=pidfd, key=key, app=app, label=label, socket=forking.path, address=forking.address
        )
        self.users.add(child)
        for n, (line, reply) in enumerate(forking.waiting):  # the first asked for it; the others found it
            reply.set({"ok": True, "pid": pid, "spawned": n == 0})
            self.lines.flush(line)
        logger.info("user process spawned: %s", child)

    def _rotate_forking(self, old: str, new: str) -> int:
        """A session's id changed while its process is asked for: it answers to the new id only."""
        moved = 0
        for forking in [forking for forking in self.forking.values() if forking.key == self.runtime.process_key(old, forking.app)]:
            key = self.runtime.process_key(new, forking.app)
            path = self.runtime.user_socket_path(key)
            try:
                os.rename(forking.path, path)
            except FileNotFoundError:  # still waiting its turn (see Zygotes.fork_listening), or refused already
                continue
            del self.forking[forking.key]
            forking.key, forking.path = key, path
            self.forking[key] = forking
            moved += 1
        return moved

    def _admit(self, client: str, address: str, label: str) -> dict[str, Any] | None:
        """None if a new process may start now (room made if needed), else the refusal. Only a
        process that starts counts towards new_processes_per_minute: a request told to wait its
        turn (its front asks again), or refused for want of room, does not."""
        now, cap = time.monotonic(), self.config.processes_per_address
        victim: Candidate | None = None
        why = ""
        if address and cap and self.users.of_address(address) + sum(f.address == address for f in self.forking.values()) >= cap:
            own = self._room_of_address(address, cap, label)
            if isinstance(own, dict):
                return own
            victim, why = own, f"room for a new session of the same address, at max_processes_per_address ({cap})"
        if not self.new_process_limit.allows(address, now):
            self.counters["address_refusals"] += 1
            limit = self.config.new_processes_per_minute
            logger.warning("new process refused: over %d new processes per minute from %s", limit, client)
            return messages.error(429, "Too many new sessions from your address: try again in a minute.")
        if victim is None:
            at_cap = self._room_at_cap(label)
            if isinstance(at_cap, dict):
                return at_cap
            victim = at_cap
        self.new_process_limit.count(address, now)
        if victim is not None:
            self._evict(victim, why)
        return None

    def _room_at_cap(self, label: str) -> Candidate | dict[str, Any] | None:
        """None if there is room under max_processes, else the process to make room, else the refusal."""
        older = self.older.processes()  # after a reload (see census.py)
        others = older + len(self.forking)
        if len(self.users.by_key) + others < self.config.max_processes:  # room, without reading every slot
            return None
        candidates = self.users.candidates()
        if len(candidates) + others < self.config.max_processes:
            return None
        if self.older.make_room(older):  # the front asks again in a moment
            return messages.error(503, "The server is making room for a new session: try again in a moment.", retry=True)
        victim = make_room_from(candidates)
        if waits_its_turn(victim, candidates, starting=bool(self.forking)):  # the front asks again in a moment
            return messages.error(503, STARTING_OTHERS, retry=True)
        if victim is None:
            live = len(candidates) + others
            logger.warning("max_processes (%d) reached, all busy: refusing a new user process for session %s", live, label)
            return messages.error(503, "The server has reached its limit of live user sessions.")
        return victim

    def _room_of_address(self, address: str, cap: int, label: str) -> Candidate | dict[str, Any]:
        """``address`` holds its max_processes_per_address: which of its own processes is to make
        room, never another address', else the refusal."""
        own = [candidate for candidate in self.users.candidates() if candidate.address == address]
        victim = make_room_from(own)
        if waits_its_turn(victim, own, starting=len(own) < cap):
            # a flood's pages, provisional then, before a live user of the same address (behind one NAT)
            return messages.error(503, STARTING_OTHERS, retry=True)
        if victim is None:
            logger.warning("max_processes_per_address (%d) reached by %s, all busy: refusing session %s", cap, address, label)
            return messages.error(429, "Too many live sessions from your address, all busy: try again in a moment.")
        return victim

    def _evict(self, victim: Candidate, why: str) -> None:
        child = self.users.by_key[victim.key]
        idle = time.monotonic() - victim.last_activity
        state = f"idle for {idle:.0f}s" if victim.live else f"provisional: its page never went live, {idle:.0f}s ago"
        self.counters["evictions"] += 1
        logger.info("user process evicted: %s (%s)", child, f"{state}, {why}" if why else state)
        child.stop(End.EVICTED)  # on_destroy runs

    def _inherited(self) -> list[int]:
        """What a zygote closes at once: the fork-server's descriptors are not its to keep."""
        fds = [self.selector.fileno(), self.wakeup_r, self.wakeup_w, *self.lines.filenos()]
        if self.listener is not None:
            fds.append(self.listener.fileno())
        return fds + self.spares.inherited()

    def _await_ends(self, children: list[UserChild], timeout: float) -> None:
        """Reap until each of ``children`` is told of by the zygote, for ``timeout`` seconds at most."""
        deadline = time.monotonic() + timeout
        while True:
            self._reap()
            left = deadline - time.monotonic()
            if not self.zygotes.all() or left <= 0 or all(child.status is not None for child in children):
                return
            self.zygotes.wait(left)

    def _reap(self) -> None:
        """Take the ends of children: those the zygotes tell of, and this process' own (a dead
        zygote's children)."""
        for pid, status in self.zygotes.ends():
            if self.spares.reaped(pid, status, self.stop_requested):
                continue
            if not self.users.reaped(pid, status, self.stop_requested):  # a spare dropped earlier, a next zygote that failed
                stack_path(self.runtime.users_dir, pid).unlink(missing_ok=True)


def _ask(path: Path, request: messages.Request) -> dict[str, Any] | None:
    """One request to another fork-server (blocking, briefly: at this one's start or stop); None if it did not answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as line:
            line.settimeout(5)
            line.connect(str(path))
            line.sendall(messages.encode(request))
            answer = line.makefile("rb").readline()
    except OSError:
        return None
    return json.loads(answer) if answer else None


def _remove(socket_path: Path) -> None:
    """A fork-server's socket, and the count it wrote once retired."""
    socket_path.unlink(missing_ok=True)
    count_path(socket_path).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
