"""The fork-server: the one process that creates, watches and ends user processes.

Forked from the first worker that needs it (so it already holds htag, starlette
and the app classes, even an app defined in ``__main__``), then detached into a
session of its own: a worker that dies or a Ctrl-C in the terminal does not take
it down. Any worker of the server talks to it through ``forkserver.sock`` with
one JSON line per request, answered in order (a worker sends its requests on one
connection without waiting for the previous answers); being a single process, it
can never spawn two processes for one user. It keeps spare user processes forked ahead of need
(see :class:`Spare`), so that a new user, even one of a crowd arriving at once,
usually costs a rename and a message rather than a fork.

It ends every user process and removes every socket when the last worker says
``bye`` (server stop), or ``orphan_grace`` seconds after the last worker
vanished without a word.
"""

from __future__ import annotations

import gc
import json
import logging
import mmap
import os
import resource
import selectors
import signal
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import folder
from .admission import Candidate, NewProcessLimit, make_room_from
from .appspec import AppSpec
from .config import Config
from .devindex import index_app
from .process import EXITING, PAGE, SETTLE_LIMIT, activity, new_page, run_spare
from .process import run as run_user_process
from .runtime import Runtime

logger = logging.getLogger("htagweb")

COUNTERS = (
    "spawns",
    "expiries",
    "kills",
    "interaction_timeouts",
    "resource_kills",
    "crashes",
    "bridge_errors",
    "parano_rejections",
    "evictions",
    "address_refusals",
)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Child:
    pid: int
    key: str
    app: str
    label: str
    page: mmap.mmap
    kill_reason: str | None = None
    started: float = field(default_factory=time.monotonic)

    def __str__(self) -> str:
        return f"pid {self.pid}, session {self.label}, app {self.app}"


@dataclass
class Spare:
    """A user process forked ahead of need, serving at ``path``: a new user then costs
    renaming that socket and a message, not a fork. One spare at a time is
    ``rehearsed`` (see :mod:`htagweb.rehearsal`), the fastest for the next user; the
    others sleep, at about 1.6 MB each, for the users of a crowd."""

    pid: int
    control: socket.socket
    page: mmap.mmap
    apps: frozenset[str]
    path: Path
    rehearsed: bool


class ForkServer:
    def __init__(self, runtime: Runtime, config: Config, apps: dict[str, AppSpec]) -> None:
        self.runtime = runtime
        self.config = config
        self.apps = apps
        self.classes: dict[str, type] = {}
        self.by_key: dict[str, Child] = {}
        self.by_pid: dict[int, Child] = {}
        self.deaths: dict[str, str] = {}
        self.buffers: dict[socket.socket, bytearray] = {}
        self.presence: set[socket.socket] = set()
        #: the workers that said hello, and their parents (a gunicorn or uvicorn master)
        self.server_pids: set[int] = set()
        self.orphaned_since: float | None = time.monotonic()
        self.stop_requested = False
        self.resources_checked = 0.0
        #: what /_htagweb/metrics reports, for the whole server (fronts add theirs with the "count" op)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.selector = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.spares: list[Spare] = []
        #: control sockets of spares given to users whose arrival is not over, and since when
        self.settling: dict[socket.socket, float] = {}
        #: INFO lines written once the reply has left: a front waits for the reply, nobody for the log
        self.after_reply: list[tuple[str, object]] = []
        self.new_process_limit = NewProcessLimit(config.new_processes_per_minute)

    # --- life ------------------------------------------------------------

    def run(self, ready_fd: int) -> None:
        """Serve until the server stops; never returns."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        path = self.runtime.forkserver_socket
        path.unlink(missing_ok=True)
        self.listener = _listen(path)
        self.selector.register(self.listener, selectors.EVENT_READ)
        gc.freeze()  # what is here now is shared copy-on-write by every user process
        os.write(ready_fd, b"1")
        os.close(ready_fd)
        logger.info("fork-server %d serving %s", os.getpid(), self.runtime.path)
        while not self.stop_requested:
            for selected, _ in self.selector.select(timeout=0 if self._spares_wanted() else 0.2):
                sock = selected.fileobj
                if sock is self.listener:
                    self._accept()
                elif sock in self.settling:
                    self._settled(sock)  # type: ignore[arg-type]
                else:
                    self._read(sock)  # type: ignore[arg-type]
            self._reap()
            if self.settling:
                self._expire_settling()
            if self._spares_wanted():
                self._fork_spare(rehearsed=not any(spare.rehearsed for spare in self.spares))
            self._watch_interactions()
            if time.monotonic() - self.resources_checked >= 1.0:
                self._watch_resources()
            if self.orphaned_since is not None:
                self._check_orphaned()
        self._shutdown()

    def _check_orphaned(self) -> None:
        """No worker is connected. Stop at once if the server is gone (killed, or a
        quick shutdown that skipped the goodbyes); else give a restarting worker time."""
        assert self.orphaned_since is not None
        if self.server_pids and not any(_alive(pid) for pid in self.server_pids):
            logger.info("fork-server: the server is gone, stopping")
            self.stop_requested = True
        elif time.monotonic() - self.orphaned_since > self.config.orphan_grace:
            logger.warning("fork-server: no worker for %ss, stopping", self.config.orphan_grace)
            self.stop_requested = True

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _shutdown(self) -> None:
        for spare in self.spares:
            self._drop_spare(spare)
            os.waitpid(spare.pid, 0)
        self.spares.clear()
        children = list(self.by_pid.values())
        logger.info("fork-server stopping: ending %d user processes", len(children))
        for child in children:
            self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_grace
        while self.by_pid and time.monotonic() < deadline:
            time.sleep(0.02)
            self._reap()
        for child in list(self.by_pid.values()):
            child.kill_reason = "killed at server stop (shutdown_grace exceeded)"
            self._signal(child, signal.SIGKILL)
        while self.by_pid:
            time.sleep(0.01)
            self._reap()
        self.runtime.forkserver_socket.unlink(missing_ok=True)
        for sock in list(self.buffers):
            sock.close()
        os._exit(0)

    # --- requests --------------------------------------------------------

    def _accept(self) -> None:
        assert self.listener is not None
        conn, _ = self.listener.accept()
        conn.setblocking(True)
        self.buffers[conn] = bytearray()
        self.selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buffer = self.buffers[conn]
        buffer += data
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            try:
                reply = self._handle(conn, json.loads(line))
            except Exception as exc:
                logger.exception("fork-server: bad request")
                reply = {"ok": False, "status": 500, "error": f"fork-server error: {exc!r}"}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                self._drop(conn)
                return
            finally:
                for message, arg in self.after_reply:
                    logger.info(message, arg)
                self.after_reply.clear()

    def _drop(self, conn: socket.socket) -> None:
        self.selector.unregister(conn)
        self.buffers.pop(conn, None)
        if conn in self.presence:
            self.presence.discard(conn)
            if not self.presence:
                self.orphaned_since = time.monotonic()
        conn.close()

    def _handle(self, conn: socket.socket, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ensure":
            return self._ensure(request["key"], request["app"], request["label"], request.get("source"), request.get("client", ""))
        if op == "status":
            return self._status(request["key"])
        if op == "rotate":
            return self._rotate(request["old"], request["new"])
        if op == "stats":
            self._reap()  # a process killed a moment ago is counted as such
            candidates = self._candidates()
            return {
                "ok": True,
                "processes": len(self.by_pid),
                "max_processes": self.config.max_processes,
                "spares": len(self.spares),
                "provisional": sum(not c.live for c in candidates),
                "busy": sum(c.busy for c in candidates),
                "counters": self.counters,
            }
        if op == "count":
            if request.get("counter") in ("bridge_errors", "parano_rejections"):
                self.counters[request["counter"]] += 1
            return {"ok": True}
        if op == "list":
            return {"ok": True, "processes": [{"pid": c.pid, "app": c.app, "label": c.label} for c in self.by_pid.values()]}
        if op == "hello":
            if request.get("server") != self.config.server_id:
                error = f"this runtime directory serves another application ({self.config.server_id}), not {request.get('server')}"
                return {"ok": False, "status": 409, "error": error + ": give each server its own runtime_dir"}
            self.presence.add(conn)
            self.server_pids |= {pid for pid in (request.get("pid"), request.get("ppid")) if isinstance(pid, int) and pid > 1}
            self.orphaned_since = None
            return {"ok": True, "pid": os.getpid()}
        if op == "bye":
            self.presence.discard(conn)
            if not self.presence:
                self.stop_requested = True  # the connection stays open: EOF tells the worker we are done
            return {"ok": True, "remaining": len(self.presence)}
        return {"ok": False, "status": 400, "error": f"unknown op {op!r}"}

    def _status(self, key: str) -> dict[str, Any]:
        """Why the process of ``key`` is gone. Asked when a front saw its connection end,
        so a process still listed is given a moment to be reaped."""
        deadline = time.monotonic() + 1.0
        self._reap()
        while key in self.by_key and self.by_key[key].kill_reason is None and time.monotonic() < deadline:
            time.sleep(0.01)
            self._reap()
        child = self.by_key.get(key)
        if child is not None:
            return {"ok": True, "alive": child.kill_reason is None, "reason": child.kill_reason}
        return {"ok": True, "alive": False, "reason": self.deaths.get(key)}

    def _rotate(self, old: str, new: str) -> dict[str, Any]:
        """A session's id changed: its user processes move to the new id (their sockets
        renamed), so that the old id reaches none of them."""
        moved = 0
        for child in list(self.by_key.values()):
            if child.key != self.runtime.process_key(old, child.app):
                continue
            key = self.runtime.process_key(new, child.app)
            try:
                os.rename(self.runtime.user_socket_path(child.key), self.runtime.user_socket_path(key))
            except FileNotFoundError:  # ending already (its socket removed): the old id reaches it no more
                continue
            deps = self.runtime.users_dir / f"{child.key}.deps"
            if deps.exists():
                deps.rename(self.runtime.users_dir / f"{key}.deps")
            del self.by_key[child.key]
            child.key = key
            self.by_key[key] = child
            moved += 1
        return {"ok": True, "moved": moved}

    # --- user processes ----------------------------------------------------

    def _ensure(self, key: str, app: str, label: str, source: dict[str, str] | None = None, client: str = "") -> dict[str, Any]:
        """The user process of ``key``, spawned if needed. ``source`` describes an app of
        a development folder: a file app is imported in its process, and replaced when
        a file it imported changed."""
        self._reap()
        fresh = source is not None and source["kind"] == "file"
        deps_file = self.runtime.users_dir / f"{key}.deps"
        child = self.by_key.get(key)
        if child is not None and child.kill_reason is None and PAGE.unpack_from(child.page)[1] != EXITING:
            if not (fresh and folder.changed(deps_file)):
                return {"ok": True, "pid": child.pid, "spawned": False}
            child.kill_reason = "reloaded: its source changed"
            logger.info("user process reloaded: %s (its source changed)", child)
            self._signal(child, signal.SIGTERM)
        refusal = self._admit(client, label)
        if refusal is not None:
            return refusal
        if fresh:
            assert source is not None
            root = Path(source["root"])

            def load() -> type:
                return folder.load_file_app(root, source["rel"], source["class"], deps_file)
        else:
            try:
                app_cls = self._load(app, source)
            except Exception as exc:
                logger.error("cannot load htag app %s: %s", app, exc)
                return {
                    "ok": False,
                    "status": 500,
                    "error": f"The application {app} could not be loaded.",
                    "traceback": traceback.format_exc(),
                }

            def load() -> type:
                return app_cls

        path = self.runtime.user_socket_path(key)
        spare = None if fresh else self._take_spare(path, app, label)
        if spare is not None:
            pid, page = spare.pid, spare.page
        else:
            path.unlink(missing_ok=True)  # a previous process' socket, being replaced
            listener = _listen(path)
            page = new_page()
            ours, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                try:
                    ours.close()
                    self._become_child()
                    _limit_resources(self.config)
                    run_user_process(listener, load, self.config, page, label, theirs)
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(0)
            theirs.close()
            listener.close()
            self._arriving(ours)
        child = Child(pid, key, app, label, page)
        self.by_key[key] = child
        self.by_pid[pid] = child
        self.deaths.pop(key, None)
        self.counters["spawns"] += 1
        self.after_reply.append(("user process spawned: %s", child))
        return {"ok": True, "pid": pid, "spawned": True}

    def _admit(self, client: str, label: str) -> dict[str, Any] | None:
        """None if a new process may start now (room made if needed), else the refusal."""
        if not self.new_process_limit.admit(client, time.monotonic()):
            self.counters["address_refusals"] += 1
            limit = self.config.new_processes_per_minute
            logger.warning("new process refused: over %d new processes per minute from %s", limit, client)
            return {"ok": False, "status": 429, "error": "Too many new sessions from your address: try again in a minute."}
        candidates = self._candidates()
        if len(candidates) < self.config.max_processes:
            return None
        victim = make_room_from(candidates)
        if victim is None:
            logger.warning("max_processes (%d) reached, all busy: refusing a new user process for session %s", len(candidates), label)
            return {"ok": False, "status": 503, "error": "The server has reached its limit of live user sessions."}
        child = self.by_key[victim.key]
        idle = time.monotonic() - victim.last_activity
        why = f"idle for {idle:.0f}s" if victim.live else f"provisional: its page never went live, {idle:.0f}s ago"
        child.kill_reason = "evicted: made room for a new user at max_processes"
        self.counters["evictions"] += 1
        logger.info("user process evicted: %s (%s)", child, why)
        self._signal(child, signal.SIGTERM)  # on_destroy runs
        return None

    def _candidates(self) -> list[Candidate]:
        """The user processes that count towards max_processes (not those already ending)."""
        candidates = []
        for child in self.by_pid.values():
            if child.kill_reason is None and self.by_key.get(child.key) is child:
                last, live = activity(child.page)
                busy = PAGE.unpack_from(child.page)[0] != 0
                candidates.append(Candidate(child.key, live, busy, last))
        return candidates

    def _load(self, app: str, source: dict[str, str] | None) -> type:
        if app not in self.classes:
            if source is not None:  # a folder index: our own code, loaded once
                self.classes[app] = index_app(Path(source["root"]), source["rel"])
            else:
                self.classes[app] = self.apps.get(app, AppSpec(app, None)).load()
            gc.freeze()
            for spare in [spare for spare in self.spares if app not in spare.apps]:  # forked without it
                self.spares.remove(spare)
                self._drop_spare(spare)
        return self.classes[app]

    def _spares_wanted(self) -> bool:
        """Whether to fork one more spare now: the pool is short, and no arrival is
        under way (a fork would slow its page load). A server near ``max_processes``
        keeps no more spares than it may still give out."""
        if not self.classes or self.settling or self.stop_requested:
            return False
        room = self.config.max_processes - len(self.by_pid)
        return len(self.spares) < min(self.config.spare_processes, room)

    def _fork_spare(self, rehearsed: bool) -> None:
        """A spare listens already, under a name of its own: giving it to a user is a rename."""
        ours, theirs = socket.socketpair()
        path = self.runtime.users_dir / f".spare-{os.urandom(8).hex()}.sock"
        listener = _listen(path)
        page = new_page()
        classes = dict(self.classes)
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                self._become_child()
                _limit_resources(self.config)
                run_spare(theirs, listener, classes, self.config, page, rehearsed)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(0)
        theirs.close()
        listener.close()
        self.spares.append(Spare(pid, ours, page, frozenset(classes), path, rehearsed))

    def _take_spare(self, path: Path, app: str, label: str) -> Spare | None:
        """A spare given to this user, the rehearsed one first; None if none can take it."""
        for spare in sorted(self.spares, key=lambda spare: not spare.rehearsed):
            if app in spare.apps:
                self.spares.remove(spare)
                if self._assign(spare, path, app, label):
                    return spare
        return None

    def _assign(self, spare: Spare, path: Path, app: str, label: str) -> bool:
        """Give the spare its user: its socket renamed into place (atomically replacing
        a dead process' one), then its session. False if it cannot take them.

        Spares are forked again once the process says its user's arrival is over
        (see :meth:`_settled`): a fork meanwhile would slow that very page load."""
        try:
            os.rename(spare.path, path)
            spare.control.sendall(json.dumps({"app": app, "label": label}).encode())
        except OSError:
            self._drop_spare(spare)
            return False
        self._arriving(spare.control)
        return True

    def _arriving(self, control: socket.socket) -> None:
        """A user is arriving at the process at the other end of ``control``, which
        says when the arrival is over: no spare is forked until then."""
        self.settling[control] = time.monotonic()
        self.selector.register(control, selectors.EVENT_READ)

    def _settled(self, control: socket.socket) -> None:
        """A user process said its arrival is over (or ended): spares may be forked again."""
        del self.settling[control]
        self.selector.unregister(control)
        control.close()

    def _expire_settling(self) -> None:
        """An arrival not over after twice the process' own limit (an app whose
        construction hangs): stop waiting for it."""
        now = time.monotonic()
        for control, since in list(self.settling.items()):
            if now - since > 2 * SETTLE_LIMIT:
                self._settled(control)

    def _drop_spare(self, spare: Spare) -> None:
        """End a live spare that no user will get (never one already reaped: its pid may be reused)."""
        spare.control.close()
        self._signal(spare, signal.SIGKILL)
        spare.path.unlink(missing_ok=True)

    def _become_child(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        for spare in self.spares:
            spare.control.close()
            spare.page.close()
        for child in self.by_pid.values():  # other users' watchdog pages: not this process' to write
            child.page.close()
        for control in self.settling:
            control.close()
        self.selector.close()
        if self.listener is not None:
            self.listener.close()
        for sock in self.buffers:
            sock.close()

    def _signal(self, child: Child | Spare, sig: int) -> None:
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass

    def _watch_interactions(self) -> None:
        limit = self.config.timeout_interaction
        if not limit:
            return
        now = time.monotonic()
        for child in self.by_pid.values():
            busy_since = PAGE.unpack_from(child.page)[0]
            if busy_since and child.kill_reason is None and now - busy_since > limit:
                child.kill_reason = f"interaction timeout: a handler ran more than {limit:g}s"
                self.counters["interaction_timeouts"] += 1
                logger.warning("user process killed: %s (%s)", child, child.kill_reason)
                self._signal(child, signal.SIGKILL)

    def _watch_resources(self) -> None:
        """Kill a user process over its memory or open-files limit (read from /proc)."""
        self.resources_checked = time.monotonic()
        memory, files = self.config.memory_limit, self.config.max_open_files
        for child in self.by_pid.values():
            if child.kill_reason:
                continue
            try:
                with open(f"/proc/{child.pid}/statm") as statm:
                    rss = int(statm.read().split()[1]) * PAGE_SIZE
                open_files = len(os.listdir(f"/proc/{child.pid}/fd")) if files else 0
            except (OSError, ValueError, IndexError):
                continue
            if memory and rss > memory:
                child.kill_reason = f"memory limit: {rss // 2**20} MiB resident, over {memory // 2**20} MiB"
            elif files and open_files > files:
                child.kill_reason = f"open files limit: {open_files} open, over {files}"
            else:
                continue
            self.counters["resource_kills"] += 1
            logger.warning("user process killed: %s (%s)", child, child.kill_reason)
            self._signal(child, signal.SIGKILL)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            spare = next((spare for spare in self.spares if spare.pid == pid), None)
            if spare is not None:  # died before being used; at a stop, with all the others (systemd signals every process)
                logger.log(logging.DEBUG if self.stop_requested else logging.WARNING, "spare user process %d died (status %d)", pid, status)
                self.spares.remove(spare)
                spare.control.close()
                spare.path.unlink(missing_ok=True)
                continue
            child = self.by_pid.pop(pid, None)
            if child is None:
                continue
            if child.kill_reason:
                reason = child.kill_reason
                self.counters["kills"] += 1
            elif os.WIFSIGNALED(status) or os.WEXITSTATUS(status):
                reason = (
                    f"crashed (signal {os.WTERMSIG(status)})" if os.WIFSIGNALED(status) else f"crashed (exit code {os.WEXITSTATUS(status)})"
                )
                self.counters["crashes"] += 1
                logger.warning("user process crashed: %s, %s", child, reason)
            else:
                reason = "ended"
                self.counters["expiries"] += 0 if self.stop_requested else 1
                logger.info("user process ended: %s", child)
            self.deaths[child.key] = reason
            if len(self.deaths) > 10000:
                self.deaths.pop(next(iter(self.deaths)))
            if self.by_key.get(child.key) is child:
                del self.by_key[child.key]
                self.runtime.user_socket_path(child.key).unlink(missing_ok=True)
                (self.runtime.users_dir / f"{child.key}.deps").unlink(missing_ok=True)
            child.page.close()


def _listen(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(128)  # connectable now: the process accepts once it is up
    return listener


def _limit_resources(config: Config) -> None:
    """Hard limits in the user process, a backstop for what the fork-server checks
    every second: between two checks, memory can grow by four times the limit at most
    (a larger allocation fails with MemoryError, which htag reports to the user)."""
    if config.memory_limit:
        with open("/proc/self/statm") as statm:
            size = int(statm.read().split()[0]) * PAGE_SIZE
        limit = size + 4 * config.memory_limit
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if config.max_open_files:
        limit = config.max_open_files + 16  # the fork-server kills above max_open_files: let it see it
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(runtime: Runtime, config: Config, apps: dict[str, AppSpec]) -> None:
    """Fork a detached fork-server; return once its socket accepts connections."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork():
                os._exit(0)
            _release_inherited_fds(keep={ready_w})
            ForkServer(runtime, config, apps).run(ready_w)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)
    os.close(ready_w)
    os.waitpid(pid, 0)
    try:
        if os.read(ready_r, 1) != b"1":
            raise RuntimeError(f"htagweb fork-server failed to start in {runtime.path} (see the log above)")
    finally:
        os.close(ready_r)


def _release_inherited_fds(keep: set[int]) -> None:
    """Let go of the worker's sockets (its listening port above all) and files.

    Each inherited descriptor is pointed at /dev/null rather than closed: the
    worker's objects still alive here (servers, event loops, temp files) may
    close their descriptor number when collected, and that number must never be
    one of ours. Kept: stdio, ``keep``, and the streams of logging handlers.
    """
    keep = set(keep) | {0, 1, 2}
    for handler in logging.root.handlers + logger.handlers + logging.getLogger("uvicorn").handlers:
        stream = getattr(handler, "stream", None)
        try:
            keep.add(stream.fileno())  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            pass
    try:
        inherited = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        inherited = list(range(3, 4096))
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in inherited:
        if fd not in keep and fd != devnull:
            try:
                os.dup2(devnull, fd)
            except OSError:
                pass  # not open (any more)
