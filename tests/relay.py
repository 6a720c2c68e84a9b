"""A TCP relay on loopback that records every byte both ways, as a proxy on the path
would, and reads them as such a proxy can: HTTP heads, WebSocket frames unmasked and
inflated. It can also act as an active attacker on the path: answer a request in the
server's place, or close a WebSocket in the server's name."""

from __future__ import annotations

import socket
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class HttpHead:
    """The start line and headers of one HTTP/1.1 message (names in lower case)."""

    line: str
    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


@dataclass
class Forgery:
    """A request the relay lets reach the server while it answers the browser itself."""

    prefix: bytes  # the first request that starts so is taken
    answer: bytes  # what the browser gets instead of the server's answer
    real_answer: bytes = b""  # what the server answered, which the browser never sees
    done: threading.Event = field(default_factory=threading.Event)


class Link:
    """One connection of the browser and its counterpart to the server."""

    def __init__(self, client: socket.socket, upstream: socket.socket, first: bytes) -> None:
        self.client = client
        self.upstream = upstream
        self.up = bytearray()  # what the browser sent
        self.down = bytearray()  # what the browser received
        # Chromium opens a connection of its own for each WebSocket: its first request says so
        self.websocket = b"upgrade: websocket" in first.partition(b"\r\n\r\n")[0].lower()
        self.framed = False  # toward the browser, only whole WebSocket frames are sent from now on
        self.silenced = False  # the relay closed the WebSocket in the server's name: the server's frames go no further
        self.writing = threading.Lock()  # one writer at a time toward the browser


class RecordingRelay:
    def __init__(self, target_port: int, refuse_prefixes: tuple[bytes, ...] = (), tamper_prefix: bytes = b"") -> None:
        self.target_port = target_port
        self.refuse_prefixes = refuse_prefixes  # requests starting so are cut, as a proxy that blocks them
        self.tamper_prefix = tamper_prefix  # on the first connection so opened, the client's second WebSocket frame is altered
        self.recorded = bytearray()
        self.streams: list[tuple[bytearray, bytearray]] = []  # (client to server, server to client) per connection
        self.links: list[Link] = []
        self.forgeries: list[Forgery] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closing = False
        self.sockets: list[socket.socket] = []
        #: every thread of the relay, joined at its close: none is left in the test process
        self.threads: list[threading.Thread] = []
        self._start(self._accept)

    def __enter__(self) -> RecordingRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.closing:
                client.close()
                return
            with self.lock:
                self.sockets.append(client)  # shut down at close, even before it sent anything
            self._start(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        first = client.recv(65536)
        if not first or first.startswith(self.refuse_prefixes):
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        tamper = bool(self.tamper_prefix) and first.startswith(self.tamper_prefix)
        if tamper:
            self.tamper_prefix = b""
        link = Link(client, upstream, first)
        with self.lock:
            self.sockets.append(upstream)
            self.streams.append((link.up, link.down))
            self.links.append(link)
        self._start(self._pump_down, link)
        if link.websocket:
            self._record(link.up, first)
            upstream.sendall(first)
            self._pump(client, upstream, link.up, tamper_frame=2 if tamper else 0)
        else:
            self._pump_requests(link, first)

    def _record(self, record: bytearray, data: bytes) -> None:
        with self.lock:
            self.recorded += data
            record += data

    def _pump(self, source: socket.socket, sink: socket.socket, record: bytearray, tamper_frame: int = 0) -> None:
        """Forward and record; with ``tamper_frame``, flip the last byte of that WebSocket
        frame (counted from 1), found by its header however TCP cut the bytes."""
        pending, frames = bytearray(), 0
        try:
            while data := source.recv(65536):
                if frames < tamper_frame:
                    pending += data
                    data = b""
                    while frames < tamper_frame and (size := frame_size(pending)):
                        frames += 1
                        frame, pending[:size] = bytes(pending[:size]), b""
                        if frames == tamper_frame:
                            frame = frame[:-1] + bytes([frame[-1] ^ 0x01])
                        data += frame
                    if frames == tamper_frame:
                        data, pending = data + bytes(pending), bytearray()
                    if not data:
                        continue
                self._record(record, data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _shutdown(source, sink)

    def _pump_requests(self, link: Link, first: bytes) -> None:
        """Browser to server on a plain HTTP connection: record as it comes, forward
        request by request, so that one of them can be taken by a forgery."""
        pending, data = bytearray(), first
        try:
            while data:
                self._record(link.up, data)
                pending += data
                while message := http_message(pending, 0):
                    request, pending[: message[1]] = bytes(pending[: message[1]]), b""
                    forgery = self._take_forgery(request)
                    if forgery:
                        self._answer_instead(link, request, forgery)
                    else:
                        link.upstream.sendall(request)
                data = link.client.recv(65536)
        except OSError:
            pass
        finally:
            _shutdown(link.client, link.upstream)

    def _pump_down(self, link: Link) -> None:
        """Server to browser; on a WebSocket, once the handshake is through, whole frames
        only, so that a frame of the relay's own can go between two of them."""
        pending = bytearray()
        try:
            while data := link.upstream.recv(65536):
                if link.websocket:
                    pending += data
                    data = b""
                    if not link.framed:
                        head = http_message(pending, 0)
                        if head is None:
                            continue
                        data, pending[: head[1]] = bytes(pending[: head[1]]), b""
                        if not head[0].line.startswith("HTTP/1.1 101"):  # refused: what follows is not frames
                            link.websocket = False
                            data, pending = data + bytes(pending), bytearray()
                    while link.websocket and (size := frame_size(pending)):
                        data, pending[:size] = data + bytes(pending[:size]), b""
                    if not data:
                        continue
                self._to_client(link, data, framed=link.websocket)
            if pending:  # the server cut a frame short: the browser gets what there is
                self._to_client(link, bytes(pending))
        except OSError:
            pass
        finally:
            _shutdown(link.upstream, link.client)

    def _to_client(self, link: Link, data: bytes, framed: bool = False) -> None:
        with link.writing:
            if link.silenced:
                return
            self._record(link.down, data)
            link.client.sendall(data)
            link.framed = framed

    # --- the active attacker ---------------------------------------------------------

    def forge_answer(self, prefix: bytes, answer: bytes) -> Forgery:
        """The next request that starts with ``prefix`` reaches the server on a connection
        of the relay's own; the server's answer is kept, and the browser gets ``answer``."""
        forgery = Forgery(prefix, answer)
        with self.lock:
            self.forgeries.append(forgery)
        return forgery

    def _take_forgery(self, request: bytes) -> Forgery | None:
        with self.lock:
            forgery = next((f for f in self.forgeries if request.startswith(f.prefix)), None)
            if forgery:
                self.forgeries.remove(forgery)
        return forgery

    def _answer_instead(self, link: Link, request: bytes, forgery: Forgery) -> None:
        side = socket.create_connection(("127.0.0.1", self.target_port))
        with self.lock:
            self.sockets.append(side)
        answer = bytearray()
        try:
            side.sendall(request)
            while not http_message(answer, 0) and (data := side.recv(65536)):
                answer += data
        finally:
            side.close()
        forgery.real_answer = bytes(answer)
        self._to_client(link, forgery.answer)
        forgery.done.set()

    def close_websocket(self, prefix: bytes, code: int, reason: str) -> None:
        """Send the browser a close frame as if from the server, on the last WebSocket
        opened by a request starting with ``prefix`` (its handshake must be through).
        What the server sends after it is dropped (its own close above all, which the
        browser would take for a protocol error); its end of the connection still is passed on."""
        with self.lock:
            link = next(each for each in reversed(self.links) if each.websocket and each.up.startswith(prefix))
        payload = struct.pack(">H", code) + reason.encode()
        assert len(payload) <= 125, "a control frame carries at most 125 bytes"
        with link.writing:
            assert link.framed, "the WebSocket handshake is not through yet"
            frame = bytes([0x88, len(payload)]) + payload  # FIN + close, unmasked as from a server
            self._record(link.down, frame)
            link.client.sendall(frame)
            link.silenced = True

    # --- what the observer reads ---------------------------------------------------

    def sent_heads(self) -> list[HttpHead]:
        """The heads of the HTTP requests the browser sent, in the order of its connections."""
        return [head for up, _ in self._stream_copies() for head in http_heads(up)]

    def received_heads(self) -> list[HttpHead]:
        """The heads of the HTTP responses the browser received."""
        return [head for _, down in self._stream_copies() for head in http_heads(down)]

    def _stream_copies(self) -> list[tuple[bytes, bytes]]:
        with self.lock:
            return [(bytes(up), bytes(down)) for up, down in self.streams]

    def bytes(self) -> bytes:
        with self.lock:
            return bytes(self.recorded)

    def observed(self) -> bytes:
        """All the bytes, plus the payloads of WebSocket messages as an observer decodes them."""
        with self.lock:
            streams = [(bytes(up), bytes(down)) for up, down in self.streams]
            observed = bytearray(self.recorded)
        for up, down in streams:
            if b"\r\n\r\n" not in up or b"upgrade: websocket" not in up.split(b"\r\n\r\n")[0].lower():
                continue
            response_head, _, frames_down = down.partition(b"\r\n\r\n")
            deflate = b"permessage-deflate" in response_head.lower()
            for frames in (up.partition(b"\r\n\r\n")[2], frames_down):
                observed += b"".join(websocket_messages(frames, deflate))
        return bytes(observed)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def close(self) -> None:
        self.closing = True
        _shutdown(self.listener)  # a close alone does not wake the thread blocked in accept()
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                try:  # shutdown, not just close: it wakes the pumping threads and sends the FIN now
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass
        joined = 0
        while True:  # those started meanwhile too
            with self.lock:
                threads = self.threads[joined:]
            if not threads:
                return
            for thread in threads:
                thread.join(5)
            joined += len(threads)


def _shutdown(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def parse_head(data: bytes | bytearray, at: int) -> tuple[HttpHead, int] | None:
    """The head of the HTTP/1.1 message at ``data[at:]`` and where its body starts, None if incomplete."""
    end = data.find(b"\r\n\r\n", at)
    if end < 0:
        return None
    line, *fields = bytes(data[at:end]).decode("latin-1").split("\r\n")
    return HttpHead(line, [(name.strip().lower(), value.strip()) for name, _, value in (f.partition(":") for f in fields)]), end + 4


def http_message(data: bytes | bytearray, at: int) -> tuple[HttpHead, int] | None:
    """The head of the complete HTTP/1.1 message at ``data[at:]`` and where it ends, None if
    incomplete. Bodies by Content-Length or chunked (no trailers); a 101, 204 or 304 has none."""
    parsed = parse_head(data, at)
    if parsed is None:
        return None
    head, at = parsed
    if head.line.startswith(("HTTP/1.1 101", "HTTP/1.1 204", "HTTP/1.1 304")):
        return head, at
    if "chunked" in ",".join(head.values("transfer-encoding")).lower():
        while (line_end := data.find(b"\r\n", at)) >= 0:
            size = int(bytes(data[at:line_end]).split(b";")[0], 16)
            at = line_end + 2 + size + 2
            if at > len(data):
                return None
            if size == 0:
                return head, at
        return None
    at += int((head.values("content-length") or ["0"])[0])
    return (head, at) if at <= len(data) else None


def http_heads(stream: bytes) -> list[HttpHead]:
    """The heads of the HTTP messages in a recorded stream, the one in progress (an SSE
    answer) included; after a WebSocket handshake come frames, not messages."""
    heads, at = [], 0
    while parsed := parse_head(stream, at):
        heads.append(parsed[0])
        message = http_message(stream, at)
        if message is None or parsed[0].line.startswith("HTTP/1.1 101") or parsed[0].values("upgrade"):
            break
        at = message[1]
    return heads


def frame_size(data: bytes | bytearray) -> int:
    """The size of the complete WebSocket frame at the start of ``data``, 0 if incomplete."""
    if len(data) < 2:
        return 0
    length, at = data[1] & 0x7F, 2
    if length == 126:
        if len(data) < 4:
            return 0
        (length,), at = struct.unpack_from(">H", data, 2), 4
    elif length == 127:
        if len(data) < 10:
            return 0
        (length,), at = struct.unpack_from(">Q", data, 2), 10
    size = at + (4 if data[1] & 0x80 else 0) + length
    return size if len(data) >= size else 0


def websocket_messages(data: bytes, deflate: bool) -> list[bytes]:
    """The message payloads in a run of WebSocket frames (RFC 6455, RFC 7692)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # context kept across messages, as the extension allows
    messages, at, parts, compressed = [], 0, [], False
    while at + 2 <= len(data):
        first, second = data[at], data[at + 1]
        length, at = second & 0x7F, at + 2
        if length == 126:
            (length,), at = struct.unpack_from(">H", data, at), at + 2
        elif length == 127:
            (length,), at = struct.unpack_from(">Q", data, at), at + 8
        mask = b""
        if second & 0x80:
            mask, at = data[at : at + 4], at + 4
        payload = data[at : at + length]
        at += length
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if first & 0x0F in (0x1, 0x2):
            compressed = bool(first & 0x40)
        if first & 0x0F in (0x0, 0x1, 0x2):
            parts.append(payload)
            if first & 0x80:
                message = b"".join(parts)
                if deflate and compressed:
                    try:
                        message = inflater.decompress(message + b"\x00\x00\xff\xff")
                    except zlib.error:
                        pass
                messages.append(message)
                parts = []
    return messages
