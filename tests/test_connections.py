"""Connections that never become requests: a client that opens connections and sends no
request head, or half of one, held them for ever, and one address could take every
descriptor of a worker, so that no new user was served (tests/test_units.py has the
accounting alone)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource

import httpx
import psutil
import pytest
import websockets
from helpers import TLS, User, click, count, server_source

from htagweb.connections import MAX_PIPELINED

#: what a slow client sends: a request head it never finishes
HALF_A_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
MB = 1024 * 1024


def run(coro):
    return asyncio.run(coro)


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """What the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), 30)


async def send_header_lines(writer: asyncio.StreamWriter, until: asyncio.Task[bytes]) -> None:
    """Header lines, 128 kB at a time, until ``until`` (what the server sends) is done, or 256 MB
    (the worker grew by as much before)."""
    lines = (b"X-Filler: " + b"a" * 8000 + b"\r\n") * 16
    sent = 0
    try:
        while sent < 256 * 1024 * 1024 and not until.done():
            writer.write(lines)
            await writer.drain()
            sent += len(lines)
    except ConnectionError:  # the server closed: what it said is still to read
        pass
    writer.close()


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """What the server sends until it closes the connection, or resets it (closed with bytes unread)."""
    try:
        return await read_all(reader)
    except ConnectionResetError:
        return b""


@pytest.mark.parametrize("launch", ["uvicorn", "uvicorn-h11", "gunicorn", "app.run"])
def test_a_request_head_not_sent_in_time_is_answered_408_and_the_connection_closed(server, launch):
    options = {"timeout_request_head": 1.0}
    if launch == "app.run":
        source = server_source("WebServerWS", **options) + "\nif __name__ == '__main__':\n    app.run(port=0)\n"
        srv = server(source, script="srv.py")
    elif launch == "uvicorn-h11":  # where httptools is not installed
        srv = server(server_source("WebServerWS", **options), "--http", "htagweb.connections:H11Protocol")
    else:
        srv = server(server_source("WebServerWS", **options), gunicorn=launch == "gunicorn")

    async def scenario():
        silent, silent_writer = await asyncio.open_connection("127.0.0.1", srv.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(HALF_A_HEAD)
        await writer.drain()
        answer = await read_all(reader)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"request head" in answer
        kept, kept_writer = await asyncio.open_connection("127.0.0.1", srv.port)  # kept alive, then slow
        kept_writer.write(b"GET /robots.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await kept.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.5)
        kept_writer.write(HALF_A_HEAD)
        assert b"HTTP/1.1 408 " in await read_all(kept)
        kept_writer.close()
        assert await read_all(silent) == b""  # nothing sent, nothing said (as a browser's preconnected socket)
        writer.close()
        silent_writer.close()
        async with User(srv.url) as user:  # a request sent in time is served as ever
            assert count((await user.page()).text) == 0

    run(scenario())
    assert "Traceback" not in srv.log
    assert "not limited" not in srv.log


def test_a_request_head_without_end_is_refused_431_before_it_fills_the_worker(server):
    """uvicorn's httptools protocol (its h11 one stops at 16 KiB) keeps a request's headers
    however many come: one connection streaming header lines grew a worker by 2 GB in 8 s
    on this machine."""
    srv = server(server_source("WebServerWS", timeout_request_head=60.0), "--http", "htagweb.connections:HttpToolsProtocol")
    worker = psutil.Process(srv.proc.pid)
    before = worker.memory_info().rss

    async def scenario():
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(HALF_A_HEAD)
        answer = asyncio.create_task(read_all(reader))
        await send_header_lines(writer, answer)
        assert (await answer).startswith(b"HTTP/1.1 431 ") and b"request head is too large" in await answer
        async with User(srv.url) as user:  # other requests are served as ever
            assert count((await user.page()).text) == 0

    run(scenario())
    assert worker.memory_info().rss - before < 32 * 1024 * 1024
    assert "Traceback" not in srv.log


def test_a_pipelined_head_without_end_behind_a_stream_ends_its_connection(server):
    """A head pipelined behind a request whose answer is under way (an SSE stream, which
    never ends) is limited too; no word is said inside the stream."""
    srv = server(server_source("WebServerWS", timeout_request_head=60.0))
    worker = psutil.Process(srv.proc.pid)
    before = worker.memory_info().rss

    async def scenario():
        async with User(srv.url) as user:
            assert count((await user.page()).text) == 0
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(f"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {user.cookie_header}\r\n\r\n".encode())
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")  # the stream is under way
            writer.write(HALF_A_HEAD)
            rest = asyncio.create_task(until_closed(reader))
            await send_header_lines(writer, rest)
            assert b"HTTP/1.1" not in await rest

    run(scenario())
    assert worker.memory_info().rss - before < 32 * 1024 * 1024
    assert "Traceback" not in srv.log


def test_pipelined_requests_past_a_few_end_their_connection_before_they_fill_the_worker(server):
    """uvicorn's httptools protocol parses every request of a read, and keeps each pipelined one,
    some 3.5 kB: 50 connections sending 4 MB of pipelined GETs each, reading no answer, grew a
    worker by 1 GB, and a user's page then went unanswered for 30 s. A connection with more than
    MAX_PIPELINED requests waiting has them dropped, is read no more, and closes once idle; a few
    pipelined requests are answered as ever."""
    srv = server(server_source("WebServerWS"))
    worker = psutil.Process(srv.proc.pid)
    before = worker.memory_info().rss
    request = b"GET /_htagweb/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    async def scenario():
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(request * MAX_PIPELINED + request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        answers = await until_closed(reader)
        assert answers.count(b"HTTP/1.1 200 ") == MAX_PIPELINED + 1 and answers.count(b'"ok"') == MAX_PIPELINED + 1
        flood = []
        for _ in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(request * (4 * MB // len(request)))
            flood.append(reader)
        async with User(srv.url) as user:  # other requests are served as ever
            assert count((await user.page()).text) == 0
            async with user.ws() as ws:
                await ws.recv()
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
        for reader in flood:
            await until_closed(reader)

    run(scenario())
    assert worker.memory_info().rss - before < 64 * MB
    assert "Traceback" not in srv.log


def test_a_request_body_that_stalls_ends_its_connection_and_one_that_flows_does_not(server):
    """A head that came, then a body that stops: the connection was held for ever. One whose
    bytes keep coming, however slowly, is read to its end."""
    srv = server(server_source("WebServerWS", timeout_request_body=1.0))

    async def scenario():
        async with User(srv.url) as user:
            assert count((await user.page()).text) == 0
            head = f"POST /event HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {user.cookie_header}\r\nX-HTAG-TOKEN: {user.csrf}\r\n"
            event = json.dumps({"id": "inc", "event": "click", "data": {"callback_id": "cb"}, "fallback": True}).encode()
            stalled, stalled_writer = await asyncio.open_connection("127.0.0.1", srv.port)
            stalled_writer.write(f"{head}Content-Length: {len(event)}\r\n\r\n".encode() + event[:10])
            flowing, flowing_writer = await asyncio.open_connection("127.0.0.1", srv.port)
            flowing_writer.write(f"{head}Content-Length: {len(event)}\r\n\r\n".encode())
            for byte in range(len(event)):  # a byte every 0.05 s: longer than the timeout in all, never a pause as long
                flowing_writer.write(event[byte : byte + 1])
                await asyncio.sleep(0.05)
            answer = await flowing.readuntil(b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert await until_closed(stalled) == b""  # closed, no answer
            stalled_writer.close()
            flowing_writer.close()
            assert count((await user.page()).text) == 1  # the flowing click ran, the stalled one did not

    run(scenario())
    assert "Traceback" not in srv.log


async def message_never_finished(ws, size: int) -> None:
    """A WebSocket text message sent in 1 MB fragments, ``size`` bytes of them, and never its
    last: the client still answers the server's pings."""

    async def fragments():
        yield "{" + " " * (MB - 1)
        for _ in range(size // MB - 1):
            yield " " * MB
        await asyncio.Event().wait()

    await ws.send(fragments())


async def twenty_sockets(user: User, held: contextlib.AsyncExitStack) -> list:
    """``user``'s page, then 20 of its WebSockets, open until ``held`` closes."""
    assert count((await user.page()).text) == 0
    sockets = [await held.enter_async_context(user.ws()) for _ in range(20)]
    for socket in sockets:
        await socket.recv()
    return sockets


@pytest.mark.parametrize("ws", ["auto", "websockets"])
def test_websocket_messages_past_max_body_size_close_their_socket_before_they_fill_the_worker(server, ws):
    """A WebSocket message could have 16 MiB (uvicorn's default), as many as a client liked,
    and one never finished was held for ever: 20 such messages held 300 MB of a worker.
    A message has max_body_size bytes, as a request's body; the socket is closed 1009
    beyond. ``websockets``: uvicorn's older WebSocket protocol, which an operator may choose."""
    srv = server(server_source("WebServerWS"), "--ws", ws)  # max_body_size: 1 MiB
    worker = psutil.Process(srv.proc.pid)
    before = worker.memory_info().rss

    async def scenario():
        async with User(srv.url) as user, contextlib.AsyncExitStack() as held:
            sockets = await twenty_sockets(user, held)
            sending = [asyncio.create_task(message_never_finished(socket, 15 * MB)) for socket in sockets]
            for socket in sockets:  # closed while its client sends: the close frame may be lost in a reset
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(socket.recv(), 30)
            for task in sending:  # a message never finished never ends
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)
            async with user.ws() as socket:  # a frame's head that says 15 MB: closed at once, and told why
                await socket.recv()
                socket.transport.write(bytes([0x81, 0xFF]) + (15 * MB).to_bytes(8, "big") + os.urandom(4))
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(socket.recv(), 30)
                assert closed.value.rcvd.code == 1009  # message too big
            async with user.ws() as socket:  # a message within the limit is a click as any
                await socket.recv()
                assert count((await click(socket, "inc", value="x" * (MB - 4096)))["updates"]["count"]) == 1

    run(scenario())
    assert worker.memory_info().rss - before < 64 * MB
    assert "Traceback" not in srv.log


@pytest.mark.parametrize("ws", ["auto", "websockets"])
def test_websocket_messages_sent_faster_than_the_app_takes_them_wait_in_no_queue(server, ws):
    """While a user's process runs a long handler, its sockets' messages wait. uvicorn's older
    WebSocket protocol read on until 32 of them waited on each socket: 20 sockets sending whole
    messages of 1 MiB made a worker grow by 700 MB. Now each socket stops being read at its
    first waiting message, as under uvicorn's default protocol: a few messages per socket."""
    # a handler that hangs holds its sockets' tasks: a graceful-shutdown limit, as docs/deploy.md says
    options = {"timeout_interaction": 600, "shutdown_grace": 1}
    srv = server(server_source("WebServerWS", **options), "--ws", ws, "--timeout-graceful-shutdown", "2")  # max_body_size: 1 MiB
    worker = psutil.Process(srv.proc.pid)
    before = worker.memory_info().rss
    message = json.dumps({"id": "inc", "event": "click", "data": {"callback_id": "x", "value": "y" * (MB - 4096)}})

    async def scenario():
        async with User(srv.url) as user, contextlib.AsyncExitStack() as held:
            sockets = await twenty_sockets(user, held)
            await sockets[0].send(json.dumps({"id": "hang", "event": "click", "data": {"callback_id": "h"}}))

            async def flood(socket) -> None:
                for _ in range(40):
                    await socket.send(message)

            sending = [asyncio.create_task(flood(socket)) for socket in sockets]
            await asyncio.wait(sending, timeout=10)  # for the worker to read what it will; not a measurement
            assert worker.memory_info().rss - before < 20 * 8 * MB
            for task in sending:
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)
            for socket in sockets:  # no closing handshake: the worker reads none of them now
                socket.transport.abort()

    run(scenario())
    assert "Traceback" not in srv.log


def test_a_server_without_the_limits_says_so_once(server):
    """Under uvicorn's own protocol (``uvicorn server:app``) nothing limits connections: the
    operator reads how to serve with the limits."""
    srv = server(server_source("WebServerWS"), "--http", "auto")

    async def scenario():
        async with User(srv.url) as user:
            for _ in range(2):
                assert count((await user.page()).text) == 0

    run(scenario())
    warning = r"WARNING.*connections are not limited.*uvicorn --http htagweb\.connections:HTTPProtocol, or gunicorn -k htagweb\.workers"
    assert len(re.findall(warning, srv.log)) == 1


def test_connections_held_open_by_one_address_leave_room_for_users(server):
    """One address opens more connections than its worker has descriptors for, and sends
    half a request head on each: a user from another address still gets the page and
    clicks, and the connections beyond the address' limit are told why."""
    srv = server(server_source("WebServerWS", max_connections_per_address=40, timeout_request_head=60.0))
    worker = psutil.Process(srv.proc.pid)
    limit = worker.rlimit(psutil.RLIMIT_NOFILE)
    worker.rlimit(psutil.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{worker.pid}/fd")) + 100, limit[1]))

    async def attack(n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        connections = []
        for _ in range(n):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(HALF_A_HEAD)
            connections.append((reader, writer))  # a writer let go closes its connection
        return connections

    async def scenario():
        held = await attack(300)
        async with User(srv.url) as user:  # from another address
            await user.http.aclose()
            transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2", verify=TLS)
            user.http = httpx.AsyncClient(base_url=srv.url, transport=transport, timeout=15)
            assert count((await user.page()).text) == 0
            ws_url = srv.url.replace("http://", "ws://") + "/ws"
            async with websockets.connect(ws_url, additional_headers={"Cookie": user.cookie_header}, local_addr=("127.0.0.2", 0)) as ws:
                await ws.recv()
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
        answers = await asyncio.gather(*(asyncio.wait_for(r.read(), 1) for r, _ in held), return_exceptions=True)
        told = [a for a in answers if isinstance(a, bytes) and a.startswith(b"HTTP/1.1 429 ")]
        # beyond the few refused connections read before they close, the others are closed at once and may be reset
        reset = [a for a in answers if isinstance(a, ConnectionResetError) or a == b""]
        waiting = [a for a in answers if isinstance(a, asyncio.TimeoutError)]
        assert len(told) >= 32 and len(told) + len(reset) == 260 and len(waiting) == 40
        assert b"Too many connections from your address" in told[0]

    run(scenario())
    assert srv.log.count("connections from 127.0.0.1") == 1  # said once, not once per connection
    assert "Traceback" not in srv.log


def test_a_websocket_outlives_the_head_timeout_and_once_closed_no_longer_counts(server):
    """A WebSocket is a connection whose head came: no timeout cuts it. Once closed it no
    longer counts towards its address' limit, though it ended under the WebSocket's
    protocol, not the HTTP one that counted it."""
    srv = server(server_source("WebServerWS", max_connections_per_address=3, timeout_request_head=1.0))

    async def scenario():
        async with User(srv.url) as user:
            assert count((await user.page()).text) == 0
            for expected in range(1, 7):
                async with user.ws() as ws:
                    await ws.recv()
                    if expected == 1:
                        await asyncio.sleep(2)  # twice the head's time
                    assert count((await click(ws, "inc"))["updates"]["count"]) == expected
            assert count((await user.page()).text) == 6

    run(scenario())
    assert "refused connections" not in srv.log


def test_a_worker_raises_its_soft_limit_of_open_files_to_the_hard_one(server):
    """A worker holds a descriptor per connection: at a soft limit of 1,024, four addresses at
    their limit of connections would take them all."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 1024:
        pytest.skip("this machine's hard limit of open files is the usual soft one")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # inherited by the server
    try:
        srv = server(server_source("WebServerWS"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert psutil.Process(srv.proc.pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)
