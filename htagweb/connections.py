"""Limits on client connections before they reach the app.

A connection costs a worker a descriptor from its accept on, whether or not a request
ever comes. uvicorn waits for ever for a request's head: a client that opens
connections and sends half a head on each (slowloris), or nothing, holds them, and one
address could take every descriptor of a worker, so that no new user is served. An
ASGI app never sees such connections, so the limits live in the HTTP protocol:

- a request's head must arrive within ``timeout_request_head`` of the connection, or of
  its first byte on a kept-alive connection: 408 beyond, and a connection that sent
  nothing is closed without a word (a browser's preconnected socket);
- a request's head may have ``max_request_head_size`` bytes: 431 beyond (uvicorn's
  httptools protocol keeps however many header lines come);
- a request's body may pause ``timeout_request_body`` between two reads: the connection
  is closed beyond (the app reads a disconnect);
- one address may hold ``max_connections_per_address`` connections, WebSockets
  included: 429 beyond, at once;
- a WebSocket message may have ``max_body_size`` bytes, as a body (parano's envelope
  aside): the socket is closed 1009 beyond. uvicorn lets one have 16 MiB, and keeps a
  message whose last fragment never comes.

:data:`HTTPProtocol` is uvicorn's own protocol (httptools where installed, as uvicorn's
``auto``) with these limits, read from the htagweb app it serves: ``app.run()`` and
``python -m htagweb`` use it, ``uvicorn --http htagweb.connections:HTTPProtocol`` and
gunicorn's ``-k htagweb.workers.UvicornWorker`` choose it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.h11_impl import H11Protocol as _H11Protocol

from .admission import address_group

if TYPE_CHECKING:
    from uvicorn.config import Config as UvicornConfig

logger = logging.getLogger("htagweb")

#: :data:`HTTPProtocol` as uvicorn's ``--http`` and gunicorn's worker name it
PROTOCOL_PATH = "htagweb.connections:HTTPProtocol"

#: seconds between two looks for connections ended after an upgrade (their protocol is the WebSocket's)
SWEEP_EVERY = 60.0
#: seconds a refused connection is read (and what comes dropped) before it is closed: closed with
#: bytes unread, it would be reset, and the client could lose the answer that says why
LINGER = 2.0
#: refused connections lingering at once, at most (each holds a descriptor); beyond, closed at once
LINGERING = 32
#: requests a connection may have waiting behind the one being answered (HTTP/1.1 pipelining,
#: which browsers do not use); beyond, they are dropped, and the connection is read no more
MAX_PIPELINED = 8


def _answer(status: str, text: str, *headers: str) -> bytes:
    body = text.encode()
    head = [f"HTTP/1.1 {status}", "content-type: text/plain; charset=utf-8", "connection: close", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


TOO_MANY = _answer("429 Too Many Requests", "Too many connections from your address: close some and try again.\n", "retry-after: 10")
TOO_SLOW = _answer("408 Request Timeout", "The request head was not received in time.\n")
TOO_LARGE = _answer("431 Request Header Fields Too Large", "The request head is too large.\n")


class ConnectionLimits:
    """The open connections of each client address, and whether one more may open
    (``per_address`` 0: any number, as behind a proxy, whose connections all have its address).

    A connection is known by its transport. One that ends as HTTP is released; one that
    became a WebSocket ends under another protocol, so each address' closed transports
    are dropped when it connects again, and every address' every :data:`SWEEP_EVERY`."""

    def __init__(self, per_address: int, head_timeout: float, head_size: int, body_timeout: float, message_size: int = 0) -> None:
        self.per_address = per_address
        self.head_timeout = head_timeout
        self.head_size = head_size
        self.body_timeout = body_timeout
        self.message_size = message_size
        self._websocket_protocol: Callable[..., asyncio.Protocol] | None = None
        self.open: dict[str, set[asyncio.BaseTransport]] = {}
        #: addresses refused since they last were under their limit (told once in the log)
        self.refused: set[str] = set()
        self.swept_at = time.monotonic()
        #: refused connections being read before they close (see LINGER)
        self.lingering = 0
        #: the server's protocol applies these limits (else the app warns at its first request)
        self.in_force = False

    def admit(self, address: str, transport: asyncio.BaseTransport) -> bool:
        """Count ``transport`` for ``address``, unless the address holds its limit."""
        if not self.per_address or not address:
            return True
        now = time.monotonic()
        if now - self.swept_at >= SWEEP_EVERY:
            self.swept_at = now
            for group in list(self.open):
                self._prune(group)
            self.refused &= set(self.open)
        group = address_group(address)
        held = self._prune(group)
        if len(held) >= self.per_address:
            if group not in self.refused:
                self.refused.add(group)
                logger.warning(
                    "refused connections from %s: it holds %d, max_connections_per_address (429, said once until it holds fewer)",
                    group,
                    len(held),
                )
            return False
        self.refused.discard(group)
        held.add(transport)
        self.open[group] = held
        return True

    def release(self, address: str, transport: asyncio.BaseTransport) -> None:
        group = address_group(address)
        held = self.open.get(group)
        if held is not None:
            held.discard(transport)
            if not held:
                del self.open[group]

    def websocket_protocol(self, config: UvicornConfig) -> Callable[..., asyncio.Protocol]:
        """uvicorn's WebSocket protocol, as its HTTP protocol makes one at an upgrade, reading a
        copy of ``config`` whose ``ws_max_size`` is at most ``message_size``, and ``ws_max_queue``
        one: uvicorn's older protocol (``--ws websockets``) read on while 32 messages waited."""
        if self._websocket_protocol is None:
            limited = copy.copy(config)
            limited.ws_max_size = min(config.ws_max_size, self.message_size)
            limited.ws_max_queue = 1
            protocol_class = config.ws_protocol_class
            assert protocol_class is not None

            def websocket_protocol(**options: Any) -> asyncio.Protocol:
                return protocol_class(**{**options, "config": limited})

            self._websocket_protocol = websocket_protocol
        return self._websocket_protocol

    def _prune(self, group: str) -> set[asyncio.BaseTransport]:
        held = {t for t in self.open.pop(group, ()) if not t.is_closing()}
        if held:
            self.open[group] = held
        return held


def limits_of(config: UvicornConfig) -> ConnectionLimits | None:
    """The limits of the htagweb app uvicorn serves, under its middleware (None: not ours)."""
    app: Any = config.loaded_app
    for _ in range(8):
        limits = getattr(app, "connection_limits", None)
        if isinstance(limits, ConnectionLimits):
            return limits
        app = getattr(app, "app", None)
    return None


class _Limited(asyncio.Protocol):
    """uvicorn's HTTP protocol (the class it is mixed into) with :class:`ConnectionLimits`.
    Reads only what uvicorn's protocols have in common: ``config``, ``client``, ``transport``,
    ``flow`` (its reading paused while the app does not read), ``cycle`` (the request under
    way, a new one once a head is parsed) and ``ws_protocol_class`` (what an upgrade makes)."""

    config: UvicornConfig
    client: tuple[str, int] | None
    transport: asyncio.Transport
    flow: Any
    cycle: Any
    ws_protocol_class: Any  # a class for uvicorn; a function that makes one once limited
    limits: ConnectionLimits | None = None
    #: a request's head is awaited: since the connection, or the first byte of a kept-alive one's next request
    awaiting_head = False
    head_timer: asyncio.TimerHandle | None = None
    #: bytes received since the head was awaited
    head_size = 0
    #: the request under way when the head was awaited: another one means the head came
    head_cycle: Any = None
    body_timer: asyncio.TimerHandle | None = None
    #: when the body under way last had bytes (the body timer looks at it when it fires)
    body_read_at = 0.0
    #: the limits ended the connection: what still comes (a lingering refusal's) is dropped
    ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.limits = limits_of(self.config)
        if self.limits is None:
            return
        self.limits.in_force = True
        if not self.limits.admit(self._address, transport):
            self._refuse(TOO_MANY)
            return
        if self.ws_protocol_class is not None and self.limits.message_size:
            self.ws_protocol_class = self.limits.websocket_protocol(self.config)
        self._await_head()

    def _refuse(self, answer: bytes) -> None:
        """``answer``, then the end of the connection: at once (its client may then read a
        reset) when :data:`LINGERING` others linger, for their descriptors are what a
        flood of refused connections would take. Behind an answer under way (a pipelined
        head), no word: it would land inside that answer."""
        limits = self.limits
        assert limits is not None
        self.ended = True
        if self._answering():
            self.transport.close()
            return
        self.transport.write(answer)
        if limits.lingering >= LINGERING or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        limits.lingering += 1
        transport = self.transport

        def close() -> None:
            limits.lingering -= 1
            transport.close()

        asyncio.get_running_loop().call_later(LINGER, close)

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        if self.limits is None:
            super().data_received(data)
            return
        if not self.awaiting_head and self._head_next():
            self._await_head()  # the next request of a kept-alive connection (or a pipelined one) begins
        counted = self.awaiting_head
        super().data_received(data)
        if self.awaiting_head:
            self._head_read(len(data) if counted else 0)
        if self.transport.get_protocol() is self and not self.ended and self._reading_body():
            self._watch_body()

    def _head_read(self, size: int) -> None:
        """After a read while a head was awaited: did it come, is it too late or too large?
        ``size``: the bytes read, 0 when the head was awaited from within the read."""
        assert self.limits is not None
        if self.cycle is not self.head_cycle or self.transport.get_protocol() is not self:
            self._head_came()  # (a WebSocket's upgrade replaced this protocol)
            return
        self._arm_head_timer()
        self.head_size += size  # only bytes read while no head came: a head and its body may come in one read
        if self.limits.head_size and self.head_size > self.limits.head_size and not self.transport.is_closing():
            logger.debug("closed a connection from %s: its request head passed %d bytes (431)", self._address, self.limits.head_size)
            self._head_came()
            self._refuse(TOO_LARGE)

    def _watch_body(self) -> None:
        """A request's body is being read: its next bytes have ``timeout_request_body`` to come.
        A timer armed once, not one per read: a read costs a float (as the front's stall timer)."""
        assert self.limits is not None
        loop = asyncio.get_running_loop()
        self.body_read_at = loop.time()
        if self.body_timer is None and self.limits.body_timeout:
            self.body_timer = loop.call_later(self.limits.body_timeout, self._body_late)

    def _reading_body(self) -> bool:
        return self.cycle is not None and self.cycle.more_body and not self.cycle.response_complete

    def _body_late(self) -> None:
        self.body_timer = None
        if self.transport.is_closing() or not self._reading_body():
            return
        assert self.limits is not None
        if self.flow.read_paused:  # the app does not read what came: not the client's doing
            self._watch_body()
            return
        left = self.body_read_at + self.limits.body_timeout - asyncio.get_running_loop().time()
        if left > 0:  # bytes came since the timer was armed
            self.body_timer = asyncio.get_running_loop().call_later(left, self._body_late)
            return
        logger.debug("closed a connection from %s: its request body stopped coming", self._address)
        self.ended = True
        self.transport.close()  # the app reads a disconnect; an answer could land inside its own

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._head_came()
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        if self.limits is not None:
            self.limits.release(self._address, self.transport)

    @property
    def _address(self) -> str:
        return self.client[0] if self.client else ""  # none: a Unix socket

    def _head_next(self) -> bool:
        """The next bytes are a request's head: no request yet, or the last one's body is in
        (a pipelined head may then come while its answer is under way), or it was answered."""
        return self.cycle is None or not self.cycle.more_body or self.cycle.response_complete

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _await_head(self) -> None:
        self.awaiting_head = True
        self.head_size = 0
        self.head_cycle = self.cycle
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        """A head's time runs while no answer is under way: a pipelined head waits for it."""
        assert self.limits is not None
        if self.head_timer is None and self.limits.head_timeout and not self._answering():
            self.head_timer = asyncio.get_running_loop().call_later(self.limits.head_timeout, self._head_late)

    def _head_came(self) -> None:
        self.awaiting_head = False
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_late(self) -> None:
        self.head_timer = None
        self.awaiting_head = False
        if self.transport.is_closing():
            return
        if self.head_size:
            logger.debug("closed a connection from %s: its request head came too slowly (408)", self._address)
            self._refuse(TOO_SLOW)
        else:
            self.transport.close()


class H11Protocol(_Limited, _H11Protocol):
    """uvicorn's h11 protocol, limited."""


HTTPProtocol: type[asyncio.Protocol]
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpToolsProtocol
except ImportError:  # uvicorn without its "standard" extra: h11, as uvicorn's auto
    HTTPProtocol = H11Protocol
else:

    class HttpToolsProtocol(_Limited, _HttpToolsProtocol):
        """uvicorn's httptools protocol, limited. It parses every request of a read and keeps
        the pipelined ones, some 3.5 kB each: a read of 256 KiB of small requests is thousands."""

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if len(self.pipeline) > MAX_PIPELINED and not self.ended:
                # the request under way is answered (closing now would cut it: uvloop raises on its
                # writes), then the connection idles out: what comes is dropped
                logger.debug("dropped the pipelined requests of a connection from %s: over %d", self._address, MAX_PIPELINED)
                self.pipeline.clear()
                self.ended = True

    HTTPProtocol = HttpToolsProtocol
