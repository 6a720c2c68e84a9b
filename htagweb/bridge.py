"""The wire between the front and a user process: ASGI events, framed.

Each HTTP request or WebSocket of a browser is one Unix-socket connection to the
user process. On it travel the ASGI scope, then the ASGI messages of both
directions, each as one frame::

    length (4 bytes, big endian) | kind (1 byte) | body (length bytes)

Bodies are raw bytes (HTTP bodies, WebSocket frames) or small JSON objects
(scope, response start, close). JSON rather than pickle: the front must never
run code chosen by a user process. Frame kinds differ by direction so that a
frame can only be read as what its sender may say.

Both ends hold a connection as a :class:`Link`, a protocol that cuts frames
from the bytes as they arrive: every click is read from it at both ends, and
asyncio's streams cost two ``readexactly`` coroutines a frame on that path.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any, cast

from starlette.types import Message, Scope

HEADER = struct.Struct(">IB")
SEQ = struct.Struct(">Q")
MAX_FRAME = 64 * 1024 * 1024

# front -> user process
# (a client that leaves is told by closing the connection: the process reads EOF as a disconnect)
SCOPE, HTTP_BODY, WS_CONNECT, WS_TEXT_IN, WS_BYTES_IN, WS_DISCONNECT, SESSION_DATA, WS_EVENT_IN = b"SRCtydVe"
# user process -> front
RESPONSE_START, RESPONSE_BODY, WS_ACCEPT, WS_TEXT_OUT, WS_BYTES_OUT, WS_CLOSE, SESSION_CHANGES = b"HBATYXU"


class BridgeError(Exception):
    """A malformed or oversized frame: the connection cannot be trusted further."""


def frame(kind: int, body: bytes = b"") -> bytes:
    return HEADER.pack(len(body), kind) + body


def json_frame(kind: int, obj: Any) -> bytes:
    return frame(kind, json.dumps(obj, separators=(",", ":")).encode())


class Link(asyncio.Protocol):
    """One bridge connection, at either end: :meth:`read` the frames that came,
    :meth:`write` and :meth:`drain` as with a stream.

    Back-pressure both ways, as with streams: frames read and not yet taken beyond
    ``LIMIT`` bytes pause the socket (a front whose browser reads slowly holds its
    process back); a peer that does not read makes :meth:`drain` wait. Frames that
    came before the connection broke are still read; then the error is raised.
    """

    #: bytes of frames waiting to be taken before the socket is paused (a StreamReader's 2 x 64 KiB)
    LIMIT = 128 * 1024

    def __init__(self, serve: Callable[[Link], Coroutine[Any, Any, None]] | None = None) -> None:
        #: run as a task once connected (the user process' handler of a connection), held while it runs
        self._serve = serve
        self._serving: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()  # asked once: on Python 3.11 each asking is a getpid() system call
        self.transport: asyncio.Transport  # once connected
        self._buffer = bytearray()
        self._frames: collections.deque[tuple[int, bytes]] = collections.deque()
        #: bytes of the frames not yet taken
        self._waiting = 0
        self._reader: asyncio.Future[None] | None = None
        self._end: Exception | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drainers: list[asyncio.Future[None]] = []
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self._serve is not None:
            self._serving = self._loop.create_task(self._serve(self))

    def data_received(self, data: bytes) -> None:
        if self._end is not None:
            return
        buffer = self._buffer
        buffer += data
        start, size = 0, len(buffer)
        while size - start >= HEADER.size:
            length, kind = HEADER.unpack_from(buffer, start)
            if length > MAX_FRAME:
                self._ended(BridgeError(f"frame of {length} bytes exceeds {MAX_FRAME}"))
                return
            end = start + HEADER.size + length
            if end > size:
                break
            self._frames.append((kind, bytes(buffer[start + HEADER.size : end])))
            self._waiting += length
            start = end
        del buffer[:start]
        if self._waiting > self.LIMIT and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._ended(asyncio.IncompleteReadError(bytes(self._buffer), None))
        return True  # half-closed: this end may still write (and closes when done)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._ended(exc or asyncio.IncompleteReadError(bytes(self._buffer), None))
        for drainer in self._drainers:
            if not drainer.done():
                drainer.set_exception(ConnectionResetError("Connection lost"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        for drainer in self._drainers:
            if not drainer.done():
                drainer.set_result(None)

    async def read(self) -> tuple[int, bytes]:
        """The next frame (kind, body). At the end, once every frame that came is read:
        IncompleteReadError (the peer closed), the connection's error, or BridgeError
        (an oversized frame). One reader at a time, as with a StreamReader."""
        while not self._frames:
            if self._end is not None:
                raise self._end
            if self._reader is not None:
                raise RuntimeError("Link.read() called while another coroutine is already waiting for a frame")
            self._reader = self._loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        kind, body = self._frames.popleft()
        self._waiting -= len(body)
        if self._reading_paused and self._waiting <= self.LIMIT:
            self._reading_paused = False
            self.transport.resume_reading()
        return kind, body

    async def read_to_end(self) -> None:
        """Drop frames until the peer closes."""
        try:
            while True:
                await self.read()
        except asyncio.IncompleteReadError:
            pass

    def write(self, data: bytes) -> None:
        """Sent as the peer reads; dropped once the connection is closing (the process ended:
        the next read says so, which the front tells its user)."""
        if not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the peer does not read what was written; ConnectionResetError once the connection is lost."""
        if self._lost:
            raise ConnectionResetError("Connection lost")
        if not self._writing_paused:
            return
        drainer = self._loop.create_future()
        self._drainers.append(drainer)
        try:
            await drainer
        finally:
            self._drainers.remove(drainer)

    def close(self) -> None:
        self.transport.close()

    def _ended(self, end: Exception) -> None:
        if self._end is None:
            self._end = end
            self._buffer.clear()
        self._wake_reader()

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)


async def connect(path: str | None = None, sock: socket.socket | None = None) -> Link:
    """A bridge connection to the user process listening at ``path`` (or on a connected ``sock``)."""
    _, link = await asyncio.get_running_loop().create_unix_connection(Link, path, sock=sock)
    return link


def encode_scope(scope: Scope, extra: dict[str, Any]) -> bytes:
    client, server = scope.get("client"), scope.get("server")
    return json_frame(
        SCOPE,
        {
            "type": scope["type"],
            "http_version": scope.get("http_version", "1.1"),
            "method": scope.get("method", "GET"),
            "scheme": scope.get("scheme", "http"),
            "path": scope["path"],
            "root_path": scope.get("root_path", ""),
            "query_string": scope.get("query_string", b"").decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "client": list(client) if client else None,
            "server": list(server) if server and server[1] is not None else None,
            "subprotocols": list(scope.get("subprotocols", [])),
            "htagweb": extra,
        },
    )


def decode_scope(body: bytes) -> Scope:
    data = json.loads(body)
    scope: Scope = {
        "type": data["type"],
        "asgi": {"version": "3.0"},
        "http_version": data["http_version"],
        "method": data["method"],
        "scheme": data["scheme"],
        "path": data["path"],
        "raw_path": data["path"].encode(),
        "root_path": data["root_path"],
        "query_string": data["query_string"].encode("latin-1"),
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in data["headers"]],
        "client": tuple(data["client"]) if data["client"] else None,
        "server": tuple(data["server"]) if data["server"] else None,
        "htagweb": data["htagweb"],
    }
    if data["type"] == "websocket":
        scope["subprotocols"] = data["subprotocols"]
    return scope


def _more(flag: bool, body: bytes) -> bytes:
    return (b"\x01" if flag else b"\x00") + body


# --- front -> user process ------------------------------------------------


def encode_inbound(message: Message) -> bytes:
    kind = message["type"]
    if kind == "websocket.receive":
        if message.get("htagweb.seq") is not None:  # a parano page's numbered event
            return frame(WS_EVENT_IN, SEQ.pack(message["htagweb.seq"]) + message["text"].encode())
        if message.get("text") is not None:
            return frame(WS_TEXT_IN, message["text"].encode())
        return frame(WS_BYTES_IN, message.get("bytes") or b"")
    if kind == "http.request":
        return frame(HTTP_BODY, _more(message.get("more_body", False), message.get("body", b"")))
    if kind == "websocket.connect":
        return frame(WS_CONNECT)
    if kind == "websocket.disconnect":
        return json_frame(WS_DISCONNECT, {"code": message.get("code", 1000)})
    raise BridgeError(f"cannot forward {kind!r}")


def decode_inbound(kind: int, body: bytes) -> Message:
    if kind == WS_TEXT_IN:
        return {"type": "websocket.receive", "text": body.decode()}
    if kind == WS_BYTES_IN:
        return {"type": "websocket.receive", "bytes": body}
    if kind == WS_EVENT_IN:
        return {"type": "websocket.receive", "text": body[SEQ.size :].decode(), "htagweb.seq": SEQ.unpack_from(body)[0]}
    if kind == HTTP_BODY:
        return {"type": "http.request", "body": body[1:], "more_body": body[:1] == b"\x01"}
    if kind == WS_CONNECT:
        return {"type": "websocket.connect"}
    if kind == WS_DISCONNECT:
        return {"type": "websocket.disconnect", "code": int(json.loads(body)["code"])}
    raise BridgeError(f"unexpected frame kind {kind!r} from the front")


# --- user process -> front ------------------------------------------------


def encode_outbound(message: Message) -> bytes:
    kind = message["type"]
    if kind == "websocket.send":
        if message.get("text") is not None:
            return frame(WS_TEXT_OUT, message["text"].encode())
        return frame(WS_BYTES_OUT, message.get("bytes") or b"")
    if kind == "http.response.body":
        return frame(RESPONSE_BODY, _more(message.get("more_body", False), message.get("body", b"")))
    if kind == "http.response.start":
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])]
        return json_frame(RESPONSE_START, {"status": message["status"], "headers": headers})
    if kind == "websocket.accept":
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])]
        return json_frame(WS_ACCEPT, {"subprotocol": message.get("subprotocol"), "headers": headers})
    if kind == "websocket.close":
        return json_frame(WS_CLOSE, {"code": message.get("code", 1000), "reason": message.get("reason") or ""})
    raise BridgeError(f"cannot forward {kind!r}")


def decode_outbound(kind: int, body: bytes) -> Message:
    if kind == WS_TEXT_OUT:
        return {"type": "websocket.send", "text": body.decode()}
    if kind == WS_BYTES_OUT:
        return {"type": "websocket.send", "bytes": body}
    if kind == RESPONSE_BODY:
        return {"type": "http.response.body", "body": body[1:], "more_body": body[:1] == b"\x01"}
    if kind not in (RESPONSE_START, WS_ACCEPT, WS_CLOSE):
        raise BridgeError(f"unexpected frame kind {kind!r} from a user process")
    data = json.loads(body)
    if kind == RESPONSE_START:
        headers = [(str(k).encode("latin-1"), str(v).encode("latin-1")) for k, v in data["headers"]]
        return {"type": "http.response.start", "status": int(data["status"]), "headers": headers}
    if kind == WS_ACCEPT:
        headers = [(str(k).encode("latin-1"), str(v).encode("latin-1")) for k, v in data["headers"]]
        return {"type": "websocket.accept", "subprotocol": data["subprotocol"], "headers": headers}
    if kind == WS_CLOSE:
        return {"type": "websocket.close", "code": int(data["code"]), "reason": str(data["reason"])}
    raise BridgeError(f"unexpected frame kind {kind!r} from a user process")
