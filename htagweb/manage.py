"""Operating a running server from outside: its live user processes, and ending some.

The same as ``python -m htagweb ps`` and ``python -m htagweb kill``: both talk to
the server's fork-server through the socket of its runtime directory (the
server logs it at start: ``fork-server PID serving DIR``), so they run as the
user the server runs as. Example::

    from htagweb import manage

    for user in manage.users("/run/myapp"):
        print(user.session, user.app, user.rss)
    manage.kill("/run/myapp", "Xq3v9Tb1")  # its on_destroy runs; the user is told to reload
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .forkserver import messages
from .runtime import RUNTIME_DIR_ENV, forkserver_sockets


class ManageError(RuntimeError):
    """The server cannot be reached, or refused the request."""


@dataclass(frozen=True)
class UserProcessInfo:
    #: the first 8 characters of the session id (what the server's log names)
    session: str
    app: str
    pid: int
    #: seconds since the process was given its user
    age: float
    #: seconds since its last exchange with a browser
    idle: float
    #: resident memory in bytes (None if it could not be read)
    rss: int | None
    #: "idle", "busy" (a handler runs) or "ending"
    state: str


def users(runtime_dir: str | os.PathLike[str] | None = None) -> list[UserProcessInfo]:
    """The live user processes of the server of ``runtime_dir`` (default: $HTAGWEB_RUNTIME_DIR)."""
    return [_info(process) for process in _ask(runtime_dir, messages.Users())]


def kill(session_prefix: str, app: str | None = None, runtime_dir: str | os.PathLike[str] | None = None) -> list[UserProcessInfo]:
    """End the user processes of the sessions starting with ``session_prefix`` (of
    ``app`` only, if given): each runs its app's on_destroy, then ends; a user with
    the page open is told the session was ended. Returns those it ends."""
    if not session_prefix:
        raise ManageError("a session prefix is needed")
    return [_info(process) for process in _ask(runtime_dir, messages.Kill(session_prefix, app))]


def _folder(runtime_dir: str | os.PathLike[str] | None) -> Path:
    folder = runtime_dir or os.environ.get(RUNTIME_DIR_ENV)
    if not folder:
        raise ManageError(f"which server? give its runtime directory (--runtime-dir, or ${RUNTIME_DIR_ENV})")
    return Path(folder)


def _ask(runtime_dir: str | os.PathLike[str] | None, request: messages.Request) -> list[dict[str, Any]]:
    """The processes every fork-server of the server (one per code generation) answers ``request`` with."""
    folder = _folder(runtime_dir)
    processes: list[dict[str, Any]] = []
    answered = False
    for path in forkserver_sockets(folder):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as line:
            line.settimeout(10)
            try:
                line.connect(str(path))
                line.sendall(messages.encode(request))
                reply = line.makefile("rb").readline()
            except (FileNotFoundError, ConnectionRefusedError):
                continue  # left by a fork-server that was killed
            except OSError as exc:
                raise ManageError(f"the server of {folder} did not answer: {exc}") from None
        if not reply:
            raise ManageError(f"the server of {folder} closed the connection")
        data = json.loads(reply)
        if not data.get("ok"):
            raise ManageError(data.get("error", "refused"))
        processes += data["processes"]
        answered = True
    if not answered:
        raise ManageError(f"no server is running with the runtime directory {folder}")
    return processes


def _info(process: dict[str, Any]) -> UserProcessInfo:
    return UserProcessInfo(
        session=process["session"],
        app=process["app"],
        pid=process["pid"],
        age=process["age"],
        idle=process["idle"],
        rss=process["rss"],
        state=process["state"],
    )
