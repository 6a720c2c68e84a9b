"""The processes a fork-server forks, as objects that carry their own behaviour.

As in uvicorn's supervisors, the supervisor's loop only asks a process whether it
is alive and tells it to terminate, abort or be killed; how that is done (never
a signal to a pid already reaped: it may be someone else's by now) is here.

A child is forked by :func:`fork`, which prepares it the same way for every kind:
the fork-server's own descriptors and signal handlers let go, death with the
fork-server (``PR_SET_PDEATHSIG``), a process title, resource limits, and a
stack file that ``faulthandler`` writes to on SIGABRT (or on a fatal signal), so
that the fork-server can log where a hung or crashed process was.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import ctypes
import faulthandler
import logging
import mmap
import os
import resource
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from setproctitle import setproctitle

from ..config import Config
from ..ends import End, Exit

logger = logging.getLogger("htagweb")

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PR_SET_PDEATHSIG = 1
#: found once, here: a child only calls it
_prctl = ctypes.CDLL(None, use_errno=True).prctl
#: the fork-server's handlers, reset in a child through ``_signal``, without the enum wrappers of
#: ``signal.signal``: they run more code (one copied page per object it touches) than the reset itself
RESET_SIGNALS = tuple(int(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD))
SIG_DFL, SIGTERM = int(signal.SIG_DFL), int(signal.SIGTERM)
#: seconds an aborted process gets to write its stack and die before it is killed
ABORT_GRACE = 1.0


@dataclass(eq=False)
class Child:
    """A process of the fork-server; ``status`` is its ``waitpid`` status once reaped."""

    pid: int
    slot: mmap.mmap
    stacks: Path
    status: int | None = None

    def is_alive(self) -> bool:
        return self.status is None

    def signal(self, sig: int) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        """Ask it to end: a user process runs the app's on_destroy first."""
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for it to end; whether it did. Only for a
        fork-server that is stopping: its loop reaps through :meth:`reaped`."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid:
                self.reaped(status)
            elif time.monotonic() >= deadline:
                return False
            else:
                time.sleep(0.01)
        return True

    def reaped(self, status: int) -> None:
        self.status = status

    @property
    def stack_path(self) -> Path:
        return stack_path(self.stacks, self.pid)

    def take_stack(self) -> str:
        """What faulthandler wrote (a hung process aborted, a fatal signal); the file is removed."""
        try:
            text = self.stack_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        self.stack_path.unlink(missing_ok=True)
        return text.strip()


@dataclass(eq=False)
class UserChild(Child):
    """The process of one (session, app)."""

    key: str = ""
    app: str = ""
    label: str = ""
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


def stack_file(stacks: str, pid: int) -> str:
    """Where faulthandler writes the stack of ``pid`` (a string: a new child builds it without pathlib)."""
    return f"{stacks}/{pid}.stack"


def stack_path(stacks: Path, pid: int) -> Path:
    return Path(stack_file(str(stacks), pid))


def fork(title: str, config: Config, stacks: Path, inherited: list[int], slot: mmap.mmap, body: Callable[[], Exit]) -> int:
    """Fork a child that runs ``body`` and exits with the code it returns (CRASHED
    if it raises). ``inherited``: the fork-server's own descriptors, closed in the
    child; ``slot``: the child's, which no later child inherits.

    Each object the child touches for the first time copies the page it is on (its
    reference count is written to): the child's preparation runs as little Python
    as it can, on values computed here, before the fork (see bench/RESULTS.md,
    "USS per idle user")."""
    parent = os.getpid()
    stacks_dir = str(stacks)
    limits = _limits(config)
    pid = os.fork()
    if pid:
        slot.madvise(mmap.MADV_DONTFORK)  # other users' slots are not a child's to keep, nor to close one by one
        return pid
    code = Exit.CRASHED
    try:
        signal.set_wakeup_fd(-1)
        for sig in RESET_SIGNALS:
            _signal.signal(sig, SIG_DFL)
        for fd in inherited:
            os.close(fd)
        _die_with(parent)
        setproctitle(title)
        _limit_resources(limits)
        stack_fd = os.open(stack_file(stacks_dir, os.getpid()), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        faulthandler.enable(stack_fd)  # writes to it until the end
        code = body()
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _die_with(parent: int) -> None:
    """SIGTERM when the fork-server dies, whatever killed it (a user process then
    runs on_destroy and ends; see :mod:`htagweb.process`)."""
    if _prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(Exit.ORPHANED)


def _limits(config: Config) -> list[tuple[int, tuple[int, int]]]:
    """Hard limits for a user process, a backstop for what the fork-server checks
    every second: between two checks, memory can grow by four times the limit at most
    (a larger allocation fails with MemoryError, which htag reports to the user).
    No core file: an aborted process leaves its stack in the log, not a core.
    Computed in the fork-server, whose address space the child starts with."""
    limits = [(resource.RLIMIT_CORE, (0, 0))]
    if config.memory_limit:
        limit = resident_memory(os.getpid(), field=0) + 4 * config.memory_limit
        limits.append((resource.RLIMIT_AS, (limit, limit)))
    if config.max_open_files:
        limit = config.max_open_files + 16  # the fork-server kills above max_open_files: let it see it
        limits.append((resource.RLIMIT_NOFILE, (limit, limit)))
    return limits


def _limit_resources(limits: list[tuple[int, tuple[int, int]]]) -> None:
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


def listen(path: Path) -> socket.socket:
    """A user process' listening socket, bound before its fork: connectable at once, accepted once it is up."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(128)
    return listener
