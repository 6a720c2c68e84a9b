"""The fork-server's requests, typed: one JSON line each, ``{"op": ..., fields}``.

Workers (through :class:`htagweb.client.ForkServerClient`) and ``htagweb ps`` /
``htagweb kill`` send them; the fork-server answers each with one JSON line. A
request may carry an ``id``, which its reply carries back: such replies go out as
soon as they are ready (a process the zygote is forking holds back no other
answer); the others in the order of the requests. A line that is not one of these
requests, with its fields of the right types, is refused with a clear error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

#: where a development app comes from (see :mod:`htagweb.folder`): kind, root, rel, class
Source = dict[str, str]


class BadRequest(ValueError):
    def __init__(self, message: str, ident: int | None = None) -> None:
        super().__init__(message)
        #: the request's id, if it could be read: its refusal carries it back
        self.ident = ident


@dataclass(frozen=True)
class Ensure:
    """The user process of ``key``, spawned if needed."""

    op: ClassVar[str] = "ensure"
    key: str
    app: str
    label: str
    source: Source | None = None
    #: the address a new process counts against (see htagweb.admission)
    client: str = ""


@dataclass(frozen=True)
class Status:
    """Whether the process of ``key`` lives, or why it is gone (an :class:`htagweb.ends.End`)."""

    op: ClassVar[str] = "status"
    key: str


@dataclass(frozen=True)
class Stalled:
    """A front waited ``timeout_interaction`` for the process of ``key`` to answer: one that
    is stopped (it never started the handler, no watchdog fires) is ended."""

    op: ClassVar[str] = "stalled"
    key: str


@dataclass(frozen=True)
class Rotate:
    """A session's id changed: its user processes move to the new id."""

    op: ClassVar[str] = "rotate"
    old: str
    new: str


@dataclass(frozen=True)
class Stats:
    op: ClassVar[str] = "stats"


@dataclass(frozen=True)
class Count:
    """One more on a front's counter (:data:`htagweb.metrics.FRONT_COUNTERS`)."""

    op: ClassVar[str] = "count"
    counter: str


@dataclass(frozen=True)
class Users:
    """The live user processes, for ``htagweb ps``."""

    op: ClassVar[str] = "users"


@dataclass(frozen=True)
class Kill:
    """End (on_destroy runs) the user processes of sessions starting with ``prefix``, of ``app`` if given."""

    op: ClassVar[str] = "kill"
    prefix: str
    app: str | None = None


@dataclass(frozen=True)
class Hello:
    """A worker is alive: the fork-server stays while one is. A ``supervised`` worker's
    parent (gunicorn's arbiter, uvicorn's supervisor) may replace it (a reload)."""

    op: ClassVar[str] = "hello"
    pid: int
    ppid: int
    supervised: bool = False
    #: what the worker serves (Config.server_id): a fork-server refuses another server's workers
    server: str = ""


@dataclass(frozen=True)
class Bye:
    """A worker leaves; the last one's bye stops the fork-server."""

    op: ClassVar[str] = "bye"


@dataclass(frozen=True)
class Retire:
    """From the fork-server of a newer code generation: fork no more, end once the last user process has.
    Refused if the newer one serves another server (``server``: its Config.server_id)."""

    op: ClassVar[str] = "retire"
    server: str = ""


@dataclass(frozen=True)
class Stop:
    """From the fork-server of a newer code generation, at server stop: end every user process now."""

    op: ClassVar[str] = "stop"


Request = Ensure | Status | Stalled | Rotate | Stats | Count | Users | Kill | Hello | Bye | Retire | Stop
REQUESTS: dict[str, type[Request]] = {
    cls.op: cls for cls in (Ensure, Status, Stalled, Rotate, Stats, Count, Users, Kill, Hello, Bye, Retire, Stop)
}
#: the JSON types each annotation accepts
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "str | None": (str, type(None)),
    "Source | None": (dict, type(None)),
}


def encode(request: Request, ident: int | None = None) -> bytes:
    fields = {"op": request.op, **asdict(request)}
    return json.dumps(fields if ident is None else {**fields, "id": ident}).encode() + b"\n"


def decode(line: bytes) -> tuple[Request, int | None]:
    """The request of ``line``, and its id (None: its reply goes in order)."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("not a JSON object")
    ident = data.pop("id", None)
    if ident is not None and (not isinstance(ident, int) or isinstance(ident, bool)):
        raise BadRequest("id must be an integer")
    cls = REQUESTS.get(data.pop("op", None))
    if cls is None:
        raise BadRequest(f"unknown op in {line[:80]!r}", ident)
    known = {f.name: f for f in fields(cls)}
    if unknown := set(data) - set(known):
        raise BadRequest(f"unknown fields for {cls.op}: {sorted(unknown)}", ident)
    for name, value in data.items():
        expected = str(known[name].type)
        if not isinstance(value, _TYPES[expected]) or (isinstance(value, bool) and expected != "bool"):
            raise BadRequest(f"{cls.op}: {name} must be {known[name].type}", ident)
    try:
        return cls(**data), ident
    except TypeError as exc:
        raise BadRequest(f"{cls.op}: {exc}", ident) from None


def error(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "status": status, "error": message, **extra}
