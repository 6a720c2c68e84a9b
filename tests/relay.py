"""A TCP relay on loopback that records every byte both ways, as a proxy on the path
would, and reads them as such a proxy can: WebSocket frames unmasked and inflated."""

from __future__ import annotations

import socket
import struct
import threading
import zlib


class RecordingRelay:
    def __init__(self, target_port: int, refuse_prefixes: tuple[bytes, ...] = (), tamper_prefix: bytes = b"") -> None:
        self.target_port = target_port
        self.refuse_prefixes = refuse_prefixes  # requests starting so are cut, as a proxy that blocks them
        self.tamper_prefix = tamper_prefix  # on the first connection so opened, the client's second WebSocket frame is altered
        self.recorded = bytearray()
        self.streams: list[tuple[bytearray, bytearray]] = []  # (client to server, server to client) per connection
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closing = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

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
        stream = (bytearray(first), bytearray())
        with self.lock:
            self.sockets += [client, upstream]
            self.recorded += first
            self.streams.append(stream)
        upstream.sendall(first)
        threading.Thread(target=self._pump, args=(upstream, client, stream[1]), daemon=True).start()
        self._pump(client, upstream, stream[0], tamper_frame=2 if tamper else 0)

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
                with self.lock:
                    self.recorded += data
                    record += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

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

    def close(self) -> None:
        self.closing = True
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                try:  # shutdown, not just close: it wakes the pumping threads and sends the FIN now
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass


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
