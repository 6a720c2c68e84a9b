"""The wire between the front and a user process: ASGI events, framed.

Each HTTP request or WebSocket of a browser is one Unix-socket connection to the
user process. On it travel the ASGI scope, then the ASGI messages of both
directions, each as one frame::

    length (4 bytes, big endian) | kind (1 byte) | body (length bytes)

Bodies are raw bytes (HTTP bodies, WebSocket frames) or small JSON objects
(scope, response start, close). JSON rather than pickle: the front must never
run code chosen by a user process. Frame kinds differ by direction so that a
frame can only be read as what its sender may say.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

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


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    length, kind = HEADER.unpack(await reader.readexactly(HEADER.size))
    if length > MAX_FRAME:
        raise BridgeError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return kind, await reader.readexactly(length)


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
