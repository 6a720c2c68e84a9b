"""The relay's reading of HTTP/1.1 messages, as the attack tests rely on it."""

from __future__ import annotations

from relay import http_heads, http_message

REQUEST = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nCookie: s=1\r\n\r\nhello"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"


def test_a_message_ends_where_its_body_does():
    assert http_message(REQUEST + b"GET /b", 0)[1] == len(REQUEST)
    assert http_message(REQUEST[:-1], 0) is None
    assert http_message(CHUNKED, 0)[1] == len(CHUNKED)
    assert http_message(CHUNKED[:-2], 0) is None
    assert http_message(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0)[1] == 27
    switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    head, end = http_message(switching + b"\x81\x02hi", 0)  # frames follow, not a body
    assert end == len(switching) and head.values("upgrade") == ["websocket"]


def test_heads_of_a_stream():
    stream = REQUEST + b"GET /sse HTTP/1.1\r\nReferer: http://h/?q\r\n\r\n"
    heads = http_heads(stream)
    assert [head.line for head in heads] == ["POST /a HTTP/1.1", "GET /sse HTTP/1.1"]
    assert heads[0].values("cookie") == ["s=1"] and heads[1].values("referer") == ["http://h/?q"]
    answers = http_heads(CHUNKED + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=b\r\n\r\n1a\r\ndata: ")
    assert [head.values("set-cookie") for head in answers] == [[], ["a=b"]]  # the stream in progress counts
    websocket = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x85abcd\r\n\r\n"
    assert [head.line for head in http_heads(websocket)] == ["GET /ws HTTP/1.1"]  # frames are not messages
