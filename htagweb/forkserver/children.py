"""The processes a fork-server forks, as objects that carry their own behaviour.

As in uvicorn's supervisors, the supervisor's loop only asks a process whether it
is alive and tells it to terminate, abort or be killed; how that is done is here.
The zygote forks them and reaps them (:mod:`.zygote`): the fork-server signals a
process through its pidfd, never through a pid that may be someone else's by now.

A child is forked by :func:`fork`, which prepares it the same way for every kind:
the zygote's descriptors and signal handlers let go, death with the zygote
(``PR_SET_PDEATHSIG``; the zygote dies with the fork-server), a process title,
resource limits, and a stack file that ``faulthandler`` writes to on SIGABRT (or
on a fatal signal), so that the fork-server can log where a hung or crashed
process was.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import ctypes
import faulthandler
import logging
import mmap
import os
import resource
import select
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from setproctitle import setproctitle

from ..config import Config
from ..ends import End, Exit

logger = logging.getLogger("htagweb")

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: found once, here: a child only calls it
_prctl = ctypes.CDLL(None, use_errno=True).prctl
#: the fork-server's handlers, reset in a child through ``_signal``, without the enum wrappers of
#: ``signal.signal``: they run more code (one copied page per object it touches) than the reset itself
RESET_SIGNALS = tuple(int(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD))
SIG_DFL, SIGTERM = int(signal.SIG_DFL), int(signal.SIGTERM)
#: resource limits of a child: (resource, (soft, hard))
Limits = list[tuple[int, tuple[int, int]]]
#: seconds an aborted process gets to write its stack and die before it is killed
ABORT_GRACE = 1.0


@dataclass(eq=False)
class Child:
    """A process of the fork-server; ``status`` is its ``waitpid`` status once reaped
    (the zygote tells), ``pidfd`` the descriptor it is signalled through until then."""

    pid: int
    slot: mmap.mmap
    stacks: Path
    status: int | None = None
    pidfd: int = -1

    def is_alive(self) -> bool:
        return self.status is None

    def exited(self) -> bool:
        """Whether it ended, its end told or not: its pidfd is readable from its exit on,
        while its status waits for its zygote to reap it (a stuck zygote does not)."""
        return self.status is not None or (self.pidfd >= 0 and readable(self.pidfd, 0))

    def signal(self, sig: int) -> None:
        if self.status is None and self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        """Ask it to end: a user process runs the app's on_destroy first."""
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for it to end; whether it did. Only for a
        fork-server that is stopping: its status comes from the zygote, through its loop."""
        return self.status is not None or self.pidfd < 0 or readable(self.pidfd, timeout)

    def reaped(self, status: int) -> None:
        self.status = status
        self.release()

    def release(self) -> None:
        """Let go of its pidfd: it ended, or it is forgotten (killed, its end not waited for)."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def take_stack(self) -> str:
        """What faulthandler wrote (a hung process aborted, a fatal signal); the file is removed."""
        return take_stack(self.stacks, self.pid)


@dataclass(eq=False)
class UserChild(Child):
    """The process of one (session, app)."""

    key: str = ""
    app: str = ""
    label: str = ""
    #: the client address (address_group) whose page load asked for it ("" if unknown)
    address: str = ""
    #: where it listens (renamed with its session, see the loop's rotation)
    socket: Path | None = None
    #: why the fork-server is ending it (None: it is not, or not yet)
    end: End | None = None
    #: when it was aborted (SIGABRT), for the SIGKILL that follows if it persists
    aborted: float | None = None
    started: float = field(default_factory=time.monotonic)

    def __str__(self) -> str:
        return f"pid {self.pid}, session {self.label}, app {self.app}"

    def ending(self, end: End) -> None:
        """Mark it ending for ``end`` (the first reason stays). Its socket goes at once: a
        process on its way out (a SIGKILL takes a moment) must take no new exchange, which
        would die with it; the next one asks the fork-server and gets a new process."""
        if self.end is None and self.socket is not None:
            self.socket.unlink(missing_ok=True)
        self.end = self.end or end

    def stop(self, end: End) -> None:
        """End it for ``end``, letting it run on_destroy."""
        self.ending(end)
        self.terminate()

    def abort(self, end: End) -> None:
        """End it at once for ``end``, its Python stack written to its stack file first."""
        self.ending(end)
        self.aborted = time.monotonic()
        self.signal(signal.SIGABRT)

    def escalate(self, now: float) -> None:
        """SIGKILL an aborted process that is still there (faulthandler could not run)."""
        if self.aborted is not None and now - self.aborted >= ABORT_GRACE:
            self.kill()
            self.aborted = None


@dataclass(eq=False)
class SpareChild(Child):
    """A user process forked ahead of need, serving at ``path`` under a name of its
    own: giving it to a user costs renaming that socket and a message on ``control``,
    on which it may be told to rehearse: then it is ``rehearsed`` (see :mod:`htagweb.spare`)."""

    control: socket.socket | None = None
    path: Path = Path()
    apps: frozenset[str] = frozenset()
    rehearsed: bool = False


def ended_children() -> list[tuple[int, int]]:
    """(pid, ``waitpid`` status) of each child of this process that ended since last asked."""
    ended: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended.append((pid, status))


def stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped by a signal or a debugger (its state in ``/proc``: T or t)."""
    return _stat(pid)[:1] in ([b"T"], [b"t"])


def parent(pid: int) -> int:
    """The parent of ``pid`` (0 once it ended)."""
    fields = _stat(pid)
    return int(fields[1]) if len(fields) > 1 else 0


def _stat(pid: int) -> list[bytes]:
    """The fields of ``/proc/PID/stat`` after the command's name (none once it ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()
    except OSError:
        return []


def readable(fds: int | list[int], timeout: float) -> bool:
    """Whether one of ``fds`` is readable within ``timeout`` seconds (a pidfd: its process ended).
    ``poll``, not ``select``: a fork-server with a thousand users has descriptors above select's 1024."""
    poller = select.poll()
    for fd in [fds] if isinstance(fds, int) else fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def stack_file(stacks: str, pid: int) -> str:
    """Where faulthandler writes the stack of ``pid`` (a string: a new child builds it without pathlib)."""
    return f"{stacks}/{pid}.stack"


def stack_path(stacks: Path, pid: int) -> Path:
    return Path(stack_file(str(stacks), pid))


def take_stack(stacks: Path, pid: int) -> str:
    """What faulthandler wrote for ``pid`` (a hung process aborted, a fatal signal); the file is removed."""
    path = stack_path(stacks, pid)
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    path.unlink(missing_ok=True)
    return text.strip()


def fork(title: str, limits: Limits, stacks: str, inherited: list[int], body: Callable[..., Exit], args: tuple[Any, ...]) -> int:
    """Fork a child that runs ``body(*args)`` and exits with the code it returns
    (CRASHED if it raises). ``inherited``: the zygote's own descriptors, closed in
    the child; ``limits``: see :func:`limits`; ``stacks``: the directory of stack files.

    Each object the child touches for the first time copies the page it is on (its
    reference count is written to): the child's preparation runs as little Python
    as it can, on values computed before the fork (see bench/RESULTS.md, "USS per
    idle user")."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = Exit.CRASHED
    try:
        become(parent, title, inherited, stacks)  # its stack file written to until the end
        _limit_resources(limits)
        code = body(*args)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def become(parent: int, title: str, inherited: list[int], stacks: str) -> int:
    """What a process forked by a zygote does first, whatever it is: the signal handlers and
    descriptors of its parent let go (its wake-up pipe first: a signal must not write to a
    file opened since), death with it, its title, and the stack file faulthandler writes to
    on SIGABRT or a fatal signal (its descriptor is returned)."""
    signal.set_wakeup_fd(-1)
    for sig in RESET_SIGNALS:
        _signal.signal(sig, SIG_DFL)
    for fd in inherited:
        os.close(fd)
    die_with(parent)
    setproctitle(title)
    stack_fd = os.open(stack_file(stacks, os.getpid()), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    faulthandler.enable(stack_fd)
    return stack_fd


def die_with(parent: int) -> None:
    """SIGTERM when the parent dies, whatever killed it (a user process then runs
    on_destroy and ends, see :mod:`htagweb.process`; the zygote ends at once)."""
    prctl(PR_SET_PDEATHSIG, SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(Exit.ORPHANED)


def prctl(option: int, value: int) -> None:
    if _prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def limits(config: Config) -> Limits:
    """Hard limits for a user process, a backstop for what the fork-server checks
    every second: between two checks, memory can grow by four times the limit at most
    (a larger allocation fails with MemoryError, which htag reports to the user).
    No core file: an aborted process leaves its stack in the log, not a core.
    Computed in the zygote, whose address space the child starts with; never above the
    hard limits it has (no process can raise them: it would not start at all)."""
    limits = [(resource.RLIMIT_CORE, (0, 0))]
    if config.memory_limit:
        limits.append(_within(resource.RLIMIT_AS, resident_memory(os.getpid(), field=0) + 4 * config.memory_limit))
    if config.max_open_files:  # the fork-server kills above max_open_files: let it see it
        limits.append(_within(resource.RLIMIT_NOFILE, config.max_open_files + 16))
    return limits


def _within(which: int, wanted: int) -> tuple[int, tuple[int, int]]:
    hard = resource.getrlimit(which)[1]
    limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    return which, (limit, limit)


def _limit_resources(limits: Limits) -> None:
    for which, limit in limits:
        resource.setrlimit(which, limit)


def resident_memory(pid: int, field: int = 1) -> int:
    """Bytes of resident memory of ``pid`` (``field`` 0: of its whole address space).
    Read without Python's file objects: the fork-server reads it for every user process."""
    fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
    try:
        return int(os.read(fd, 256).split()[field]) * PAGE_SIZE
    finally:
        os.close(fd)


def open_files(pid: int) -> int:
    """Descriptors open in ``pid``. Since Linux 6.2 the size of its ``/proc/PID/fd`` tells,
    without listing them (2.5 times cheaper; a process always has one open: 0 means an
    older kernel)."""
    return os.stat(f"/proc/{pid}/fd").st_size or len(os.listdir(f"/proc/{pid}/fd"))


#: a process listening at its socket: (pid, pidfd, slot, the fork-server's end of its control line)
Listening = tuple[int, int, mmap.mmap, socket.socket]


def listen(path: Path) -> socket.socket:
    """A user process' listening socket, bound before its fork: connectable at once, accepted once it is up."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(128)
    return listener
