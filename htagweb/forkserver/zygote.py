"""The zygote: the quiet process that forks the fork-server's children.

A forked process shares its parent's memory until one of them writes to a page.
The fork-server's loop writes to some 350 pages while it handles an arrival, and
each time, the process forked just before keeps the old copy of those it had not
written itself: 0.3 to 0.45 MB of a user process' 5 MB (bench/RESULTS.md, "The
zygote"). The zygote is forked from the fork-server once it is warm and does
nothing but fork when asked, so that its children go on sharing the pages it does
not write to.

The apps given as classes are imported before it is forked (their code ran in the
server already); the others in a next zygote (below). The children are the
zygote's own: it reaps them and tells the fork-server how each ended (its
``waitpid`` status), with a pidfd of each through which the fork-server signals it
(never a pid that may be someone else's by now). It dies with the fork-server
(``PR_SET_PDEATHSIG``), and its children with it.

An app named by a string ("module:Class") is imported once the fork-server is up, and
its import may take long or never end (a database out of reach at import time, a bug).
The zygote does not import it: it forks the *next zygote*, which imports the app,
says so on a line of its own, and then serves as zygote in turn, with every app of
its parent and this one. Meanwhile the zygote goes on forking for the other apps;
the fork-server lets a next zygote whose import fails or takes too long die, and
keeps the one it had. Each zygote dies with its parent, as its children do.

The line is a ``SOCK_SEQPACKET`` socket pair, one message a packet, with the
descriptors it hands over. The fork-server asks ``spare`` or ``user {json}`` with a
process' control line, listening socket and slot (answered ``pid N`` with its pidfd,
or ``error {json}``), and ``import {json}`` (answered ``pid N`` with the next
zygote's pidfd and line, on which it says ``ok`` or ``error {json}`` once the import
is over); a zygote says ``exit PID STATUS`` whenever a child of its ends.

A zygote answers within a few milliseconds, and nothing waits for it: the fork-server
sends its request, goes on with its loop, and hands the answer to whoever asked once it
comes (:meth:`Zygote.exits`). A zygote that is stopped (by a signal or a debugger), or
has not answered within :data:`ANSWER_WAIT` (frozen by the cgroup freezer, starved on a
machine out of memory), is given up: the fork-server keeps it, with its processes, starts
a new one, and asks that one. Should the old one go on, the forks it makes then are
ended at once: nobody waits for those processes any more.
"""

from __future__ import annotations

import collections
import faulthandler
import functools
import json
import logging
import mmap
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar

from setproctitle import setproctitle

from ..config import Config
from ..ends import Exit
from ..process import run as run_user_process
from ..slot import SLOT_FILE, open_slot
from ..spare import run_spare
from .children import become, die_with, ended_children, fork, limits, readable, stack_file, stopped
from .loader import AppLoader
from .messages import Source

logger = logging.getLogger("htagweb")

T = TypeVar("T")

#: the largest message either way (a request names an app and its source; the rest are small)
PACKET = 65536
#: the descriptors a fork request hands over: the process' control line, listening socket and slot
HANDED = struct.Struct("3i")
#: the request for a spare
SPARE = b"spare"
#: seconds a zygote that is not this process' child is waited for at its stop
STOP_WAIT = 5.0
#: seconds the fork-server waits for a zygote's answer (a fork takes it 1 to 3 ms, some tens
#: on a loaded machine) before it gives up on that zygote and starts another
ANSWER_WAIT = 3.0
#: seconds after which a zygote that has not answered yet is looked at: one stopped (SIGSTOP,
#: a debugger) is given up at once, one that runs is waited for until ANSWER_WAIT
LOOK_AFTER = 0.05


class ForkRefused(Exception):
    """No process could be had: the zygote could not fork (the app no longer imports, no
    memory, no more processes), or no zygote answered."""


class ZygoteGone(ForkRefused):
    """The zygote ended, or its line broke."""


class ZygoteStuck(ForkRefused):
    """The zygote did not answer in time (see :meth:`Zygote.overdue`); the descriptors handed
    with the request are its own now (it may still fork with them): a new request needs new
    ones."""


#: what a request to a zygote comes to: its answer, or why there is none
Told = Callable[[T | ForkRefused], None]


def user_request(title: str, key: str, app: str, label: str, source: Source | None) -> bytes:
    """The request for the process of one user, not a spare."""
    return b"user " + json.dumps({"title": title, "key": key, "app": app, "label": label, "source": source}).encode()


def _ended(data: bytes) -> tuple[int, int]:
    """(pid, waitpid status) of an ``exit PID STATUS`` message."""
    _, pid, status = data.split()
    return int(pid), int(status)


@dataclass
class Asked(Generic[T]):
    """A request sent to a zygote, not answered yet."""

    #: what its answer and the descriptors it hands back come to (raises ForkRefused)
    parse: Callable[[bytes, list[int]], T]
    told: Told[T]

    def answer(self, data: bytes, handed: list[int]) -> Callable[[], None]:
        """What to tell once the answer came."""
        try:
            outcome: T | ForkRefused = self.parse(data, handed)
        except ForkRefused as exc:
            outcome = exc
        return functools.partial(self.told, outcome)


class Zygote:
    """The fork-server's end of the line to its zygote."""

    def __init__(self, pid: int, line: socket.socket, pidfd: int = -1, app: str | None = None) -> None:
        self.pid = pid
        self.line = line
        line.setblocking(False)
        #: the descriptor it is signalled through, for a zygote that is not this process' child (-1: it is)
        self.pidfd = pidfd
        #: the app a next zygote was forked to import
        self.app = app
        #: that app, until the zygote says it imported it
        self.importing = app
        #: the end of its import: None once imported, else the error and its traceback
        self.imported: dict[str, str] | None = None
        #: children that ended, read while looking for something else: (pid, waitpid status)
        self._exits: list[tuple[int, int]] = []
        #: requests sent, in order: a zygote answers them in that order
        self.asked: collections.deque[Asked[Any]] = collections.deque()
        #: since when the oldest of them waits: sent, or the one before it answered
        self.since = 0.0
        #: answers read, to be told (see :meth:`told`)
        self.answered: list[Callable[[], None]] = []
        #: answers given up on (see :class:`ZygoteStuck`): those that still come are late
        self.owed = 0

    @classmethod
    def start(cls, serve: Callable[[socket.socket], NoReturn], inherited: list[int]) -> Zygote:
        """Fork a zygote that runs ``serve`` on its end of the line, ``inherited`` closed first."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)  # the fork-server's, closed next (see _next_zygote)
                ours.close()
                for fd in inherited:
                    os.close(fd)
                _close_records()
                serve(theirs)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(Exit.CRASHED)
        theirs.close()
        return cls(pid, ours)

    def fork(self, request: bytes, fds: Sequence[int], told: Told[tuple[int, int]]) -> None:
        """Ask for a child on ``request`` (:data:`SPARE`, or :func:`user_request`): ``told``
        gets its (pid, pidfd), or the refusal."""
        self._ask(request, fds, Asked(_forked, told))

    def next(self, app: str, source: Source | None, told: Told[Zygote]) -> None:
        """Ask for the next zygote, forked to import ``app``: it says when it did (see :meth:`exits`)."""
        request = b"import " + json.dumps({"app": app, "source": source}).encode()
        self._ask(request, (), Asked(functools.partial(_next_zygote, app), told))

    def _ask(self, request: bytes, fds: Sequence[int], asked: Asked[Any]) -> None:
        try:
            socket.send_fds(self.line, [request], list(fds))
        except BlockingIOError:
            raise ZygoteStuck("it has not read its line for long") from None
        except OSError as exc:
            raise ZygoteGone(f"its line broke: {exc}") from exc
        if not self.asked:
            self.since = time.monotonic()
        self.asked.append(asked)

    def overdue(self) -> str | None:
        """Why its oldest request is given up on, if it is: the zygote is stopped (SIGSTOP, a
        debugger), or has not answered it within :data:`ANSWER_WAIT` of answering the one before."""
        if not self.asked:
            return None
        waited = time.monotonic() - self.since
        if waited >= ANSWER_WAIT:
            return f"no answer within {ANSWER_WAIT:g}s"
        if waited >= LOOK_AFTER and stopped(self.pid):
            return "it is stopped (SIGSTOP, or a debugger)"
        return None

    def next_look(self) -> float:
        """Seconds until :meth:`overdue` may say otherwise (inf: nothing is asked)."""
        if not self.asked:
            return float("inf")
        waited = time.monotonic() - self.since
        return max(0.0, LOOK_AFTER - waited if waited < LOOK_AFTER else min(LOOK_AFTER, ANSWER_WAIT - waited))

    def abandon(self, why: ForkRefused) -> list[Callable[[], None]]:
        """Its requests given up on: what tells each asker ``why``. Their answers, should they
        come, are late (:meth:`_late`)."""
        given_up: list[Callable[[], None]] = [functools.partial(asked.told, why) for asked in self.asked]
        self.owed += len(self.asked)
        self.asked.clear()
        return given_up

    def told(self) -> list[Callable[[], None]]:
        """What tells the askers of the answers read since last asked."""
        answered, self.answered = self.answered, []
        return answered

    def exits(self) -> list[tuple[int, int]]:
        """The children that ended since last asked: (pid, waitpid status). Answers are taken on
        the way (:meth:`told`), a next zygote's word on its import too (:attr:`importing`,
        :attr:`imported`), and a late answer's process ended (:meth:`_late`)."""
        while True:
            try:
                data, ancillary, _, _ = self.line.recvmsg(PACKET, socket.CMSG_SPACE(2 * 4), socket.MSG_DONTWAIT)
            except OSError:  # nothing more now (or the line broke: the zygote is reaped as a child)
                break
            if not data:
                break
            if data.startswith(b"exit "):
                self._exits.append(_ended(data))
            elif self.owed:
                self._late(data, _descriptors(ancillary))
            elif self.asked:
                self.answered.append(self.asked.popleft().answer(data, _descriptors(ancillary)))
                self.since = time.monotonic()
            else:  # the end of its import
                self.importing = None
                self.imported = None if data == b"ok" else json.loads(data.partition(b" ")[2])
        exits, self._exits = self._exits, []
        return exits

    def _late(self, answer: bytes, handed: list[int]) -> None:
        """An answer given up on: the process it forked (a spare, a user's, a next zygote) is
        ended; its end comes as any other child's."""
        self.owed -= 1
        kind, _, rest = answer.partition(b" ")
        if kind == b"pid" and handed:
            try:
                signal.pidfd_send_signal(handed[0], signal.SIGKILL)
            except ProcessLookupError:  # it ended by itself (a spare whose line was closed)
                pass
            logger.info("fork-server: zygote %d went on: ended the process %s it forked too late", self.pid, int(rest))
        for fd in handed:
            os.close(fd)

    def signal(self, signum: int) -> None:
        try:
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """End it (its children are expected gone: any left get SIGTERM from their death signal)."""
        self.line.close()
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)  # one stopped (see ZygoteStuck) would keep the SIGTERM pending
        if self.pidfd >= 0:  # forked by a zygote: reaped here only once that one is gone (subreaper)
            readable(self.pidfd, STOP_WAIT)
        try:
            os.waitpid(self.pid, 0 if self.pidfd < 0 else os.WNOHANG)
        except ChildProcessError:
            pass
        self.close()

    def close(self) -> None:
        """Let go of it (it ended, or ends by itself)."""
        self.line.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def _pid(answer: bytes) -> int:
    """The pid a ``pid N`` answer names; an ``error {json}`` answer raised as a refusal."""
    kind, _, rest = answer.partition(b" ")
    if kind != b"pid":
        raise ForkRefused(json.loads(rest)["error"])
    return int(rest)


def _forked(answer: bytes, handed: list[int]) -> tuple[int, int]:
    """(pid, pidfd) of the child a zygote forked."""
    pid = _pid(answer)
    if not handed:  # the kernel dropped it: this process has no descriptor left
        raise ForkRefused(f"process {pid} was forked, but its pidfd did not come: too many open files")
    return pid, handed[0]


def _next_zygote(app: str, answer: bytes, handed: list[int]) -> Zygote:
    """The next zygote a zygote forked to import ``app``."""
    pid = _pid(answer)
    if len(handed) < 2:  # the kernel dropped them: this process has no descriptor left
        for fd in handed:
            os.close(fd)
        raise ForkRefused(f"zygote {pid} was forked, but its line did not come: too many open files")
    return Zygote(pid, socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=handed[1]), handed[0], app)


def serve(line: socket.socket, loader: AppLoader, config: Config, stacks: Path, parent: int, title: str) -> NoReturn:
    """The zygote's loop: fork when asked, tell each child's end. Ends with its line.

    Each page it writes to after a fork is left to the child it forked, which keeps the
    old copy to itself (the zygote moved on to its own): the loop touches as few objects
    as it can. A spare's fork and its answer are a few bytes, not JSON; the sockets and
    the slot of a child are made from their descriptors in the child; what a child
    needs that does not change is computed once."""
    die_with(parent)
    setproctitle(title)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # its byte on the wake-up pipe is what counts
    line_fd = line.fileno()
    children = Children(loader, config, str(stacks), [line_fd, wake_r, wake_w], title)
    poller = select.poll()  # not select: the fork-server's descriptors, hence this one's, can be above 1024
    poller.register(line_fd, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    space = socket.CMSG_SPACE(HANDED.size)
    try:
        while True:
            _turn(line, children, poller, wake_r, space)
    except (BrokenPipeError, ConnectionResetError):  # the fork-server ended, some of our messages unread
        pass
    os._exit(Exit.STOPPED)


def _turn(line: socket.socket, children: Children, poller: select.poll, wake_r: int, space: int) -> None:
    """One turn of the zygote's loop: children reaped and told of, a request answered."""
    ready = [fd for fd, _ in poller.poll()]
    if wake_r in ready:
        while _drained(wake_r):
            pass
        _reap(line)
    if line.fileno() in ready:
        data, ancillary, _, _ = line.recvmsg(PACKET, space)
        if not data:
            os._exit(Exit.STOPPED)
        handed = HANDED.unpack(ancillary[0][2]) if ancillary else ()
        try:
            answer, handed_back = children.answer(data, handed)
        except Exception:  # a fork refused (no memory, no more processes): the fork-server says so
            answer, handed_back = _failure(), []
        finally:
            for fd in handed:
                os.close(fd)
        if not handed_back:
            line.send(answer)
        else:
            line.sendmsg([answer], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(handed_back)}i", *handed_back))])
            for fd in handed_back:
                os.close(fd)


class Children:
    """What the zygote forks: spares and user processes, from the descriptors handed over."""

    def __init__(self, loader: AppLoader, config: Config, stacks: str, own: list[int], title: str) -> None:
        self.loader = loader
        self.config = config
        self.stacks = stacks
        self.own = own
        self.title = title
        self.limits = limits(config)

    def answer(self, data: bytes, handed: tuple[int, ...]) -> tuple[bytes, list[int]]:
        """The answer to one request, and the descriptors it hands back."""
        if data == SPARE:
            pid = fork("htagweb spare", self.limits, self.stacks, self.own, self._spare, (handed,))
            return b"pid %d" % pid, [os.pidfd_open(pid)]
        kind, _, body = data.partition(b" ")
        request = json.loads(body)
        if kind == b"import":
            pid, line = self._next_zygote(request["app"], request["source"])
            return b"pid %d" % pid, [os.pidfd_open(pid), line]
        load = self.loader.load(request["key"], request["app"], request["source"])
        pid = fork(request["title"], self.limits, self.stacks, self.own, self._user, (handed, load, request["app"], request["label"]))
        return b"pid %d" % pid, [os.pidfd_open(pid)]

    def _next_zygote(self, app: str, source: Source | None) -> tuple[int, int]:
        """Fork the next zygote, which imports ``app`` and then serves: (pid, the fork-server's
        end of its line). Its Python stack goes to its stack file if it is aborted (an import
        that takes too long)."""
        parent = os.getpid()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid:
            ours.close()
            return pid, theirs.detach()
        try:
            theirs.close()
            stack_fd = become(parent, f"{self.title} importing {app}", self.own, self.stacks)
            try:
                self.loader.imported(app, source)
            except Exception:
                ours.send(_failure())
                os._exit(Exit.STOPPED)
            faulthandler.disable()
            os.close(stack_fd)
            os.unlink(stack_file(self.stacks, os.getpid()))
            ours.send(b"ok")
            serve(ours, self.loader, self.config, Path(self.stacks), parent, self.title)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(Exit.CRASHED)

    def _spare(self, handed: tuple[int, int, int]) -> Exit:
        control, listener, slot = _opened(handed)
        return run_spare(control, listener, dict(self.loader.classes), self.config, slot)

    def _user(self, handed: tuple[int, int, int], load: Callable[[], type], app: str, label: str) -> Exit:
        control, listener, slot = _opened(handed)
        return run_user_process(listener, load, self.config, slot, label, app, control)


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors a message handed over (``socket.recv_fds`` would drop ``MSG_DONTWAIT``
    before Python 3.12)."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
            fds += struct.unpack(f"{len(data) // 4}i", data[: len(data) // 4 * 4])
    return fds


def _opened(handed: tuple[int, int, int]) -> tuple[socket.socket, socket.socket, mmap.mmap]:
    """A child's control line, listening socket and slot, from their descriptors."""
    return socket.socket(fileno=handed[0]), socket.socket(fileno=handed[1]), open_slot(handed[2])


def _close_records() -> None:
    """Close the pidfds and slots of the fork-server's processes: a zygote forked after a death
    would hand them to every process it forks (the fork-server holds them as it waits for those
    processes' ends; each slot's mapping keeps its own copy of the file, out of reach)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the descriptor of the listing itself
            continue
        if target == "anon_inode:[pidfd]" or target.startswith(f"/memfd:{SLOT_FILE} "):
            os.close(int(name))


def _failure() -> bytes:
    """The answer that tells of the exception being handled, and its traceback."""
    return b"error " + json.dumps({"error": repr(sys.exc_info()[1]), "traceback": traceback.format_exc()}).encode()


def _reap(line: socket.socket) -> None:
    for pid, status in ended_children():
        line.send(b"exit %d %d" % (pid, status))


def _drained(fd: int) -> bool:
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return False
