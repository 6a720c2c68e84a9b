"""The lines from workers (and from ``htagweb ps``) to the fork-server: one JSON request
a line in, one reply a line out.

A reply may be set later than the requests after it (a status request waits for a
process' end, an ensure request for the zygote's fork). One whose request carried an id
goes out once set; one without waits for the replies before it. Nothing blocks: a line's
replies go out as its socket takes them, and a worker that does not read them is not read
from either once :data:`MAX_OUTBOX` bytes wait for it.
"""

from __future__ import annotations

import collections
import json
import logging
import selectors
import socket
from collections.abc import Callable
from typing import Any

from . import messages

logger = logging.getLogger("htagweb")

#: a worker's unread replies past which its requests are not read either
MAX_OUTBOX = 4 * 2**20


class Reply:
    __slots__ = ("data", "ident")

    def __init__(self) -> None:
        self.data: bytes | None = None
        #: its request's id (None: it goes out in order)
        self.ident: int | None = None

    def set(self, reply: dict[str, Any]) -> None:
        self.data = json.dumps(reply if self.ident is None else {**reply, "id": self.ident}).encode() + b"\n"


class Line:
    """A connection from a worker (or from ``htagweb ps``): requests in, replies out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.replies: collections.deque[Reply] = collections.deque()
        self.outbox = bytearray()
        self.closed = False


#: what handles one request: it sets the reply now, or later (then flushes its line)
Handler = Callable[[Line, messages.Request, Reply], None]


class Lines:
    def __init__(self, selector: selectors.BaseSelector, handle: Handler, on_drop: Callable[[Line], None]) -> None:
        self.selector = selector
        self.handle = handle
        self.on_drop = on_drop
        self.open: dict[socket.socket, Line] = {}
        #: INFO lines written once the replies have left: a front waits for the reply, nobody for the log
        self.after_reply: list[tuple[str, object]] = []

    def add(self, sock: socket.socket) -> None:
        line = self.open[sock] = Line(sock)
        self.selector.register(sock, selectors.EVENT_READ, lambda mask: self._ready(line, mask))

    def filenos(self) -> list[int]:
        return [sock.fileno() for sock in self.open]

    def close_all(self) -> None:
        for line in list(self.open.values()):
            line.sock.close()

    def flush(self, line: Line) -> None:
        """Send what can be sent now of the replies that are ready (see the module's docstring)."""
        if line.closed:
            return
        held: collections.deque[Reply] = collections.deque()
        for reply in line.replies:
            if reply.data is not None and (reply.ident is not None or not held):
                line.outbox += reply.data
            else:
                held.append(reply)
        line.replies = held
        if line.outbox:
            try:
                sent = line.sock.send(line.outbox)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.drop(line)
                return
            del line.outbox[:sent]
        events = (selectors.EVENT_READ if len(line.outbox) < MAX_OUTBOX else 0) | (selectors.EVENT_WRITE if line.outbox else 0)
        self.selector.modify(line.sock, events, self.selector.get_key(line.sock).data)

    def drop(self, line: Line) -> None:
        if line.closed:
            return
        line.closed = True
        self.selector.unregister(line.sock)
        del self.open[line.sock]
        self.on_drop(line)
        line.sock.close()

    def _ready(self, line: Line, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.flush(line)
        if mask & selectors.EVENT_READ and not line.closed:
            self._read(line)

    def _read(self, line: Line) -> None:
        try:
            data = line.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop(line)
            return
        line.inbox += data
        while not line.closed and b"\n" in line.inbox:
            raw, _, rest = bytes(line.inbox).partition(b"\n")
            line.inbox[:] = rest
            reply = Reply()
            line.replies.append(reply)
            try:
                request, reply.ident = messages.decode(raw)
                self.handle(line, request, reply)
            except messages.BadRequest as exc:
                reply.ident = exc.ident
                logger.warning("fork-server: bad request: %s", exc)
                reply.set(messages.error(400, f"bad request: {exc}"))
            except Exception as exc:
                logger.exception("fork-server: request failed")
                reply.set(messages.error(500, f"fork-server error: {exc!r}"))
        self.flush(line)
        for message, arg in self.after_reply:
            logger.info(message, arg)
        self.after_reply.clear()
