"""The worker's line to the fork-server (htagweb.client), against a stand-in fork-server
on the real socket path: requests are pipelined and each caller gets its own reply,
whatever its order and whatever happens to the other callers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from htagweb.appspec import AppSpec
from htagweb.client import ForkServerClient
from htagweb.config import Config
from htagweb.forkserver.messages import Count
from htagweb.runtime import Runtime


class StandIn:
    """Answers "hello" and "bye" at once; holds the answers to other requests until ``batch`` of
    them are in (or forever with ``batch=0``), then answers them last first, each answer naming
    its request's counter and carrying its id; hangs up on ``Count("hang-up")``."""

    def __init__(self, path: Path, batch: int) -> None:
        self.path = path
        self.batch = batch
        self.received: list[dict] = []
        self.connections = 0

    async def __aenter__(self) -> StandIn:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        held: list[dict] = []
        while line := await reader.readline():
            request = json.loads(line)
            if request["op"] in ("hello", "bye"):
                writer.write(b'{"ok": true, "remaining": 1}\n')
                continue
            self.received.append(request)
            if request["counter"] == "hang-up":
                writer.close()
                return
            held.append(request)
            if len(held) == self.batch:
                answers = [{"ok": True, "n": r["counter"], "id": r["id"]} for r in reversed(held)]
                writer.write(b"".join(json.dumps(answer).encode() + b"\n" for answer in answers))
                held.clear()


def client_in(path: Path) -> ForkServerClient:
    runtime = Runtime(path)
    runtime.generation = "test"
    return ForkServerClient(runtime, Config(), {"app": AppSpec("app", None)})


def test_requests_are_pipelined_and_replies_matched(tmp_path):
    async def scenario():
        client = client_in(tmp_path)
        async with StandIn(client.runtime.forkserver_socket, batch=20) as stand_in:
            # the stand-in answers only once all 20 are in (one request at a time would wait forever), last first
            replies = await asyncio.wait_for(asyncio.gather(*(client.request(Count(str(n))) for n in range(20))), 10)
            assert [reply["n"] for reply in replies] == [str(n) for n in range(20)]
            assert stand_in.connections == 2  # the worker's presence, and one kept line for the requests
            await client.stop()

    asyncio.run(scenario())


def test_a_caller_that_gives_up_does_not_get_its_reply_to_the_next(tmp_path):
    async def scenario():
        client = client_in(tmp_path)
        async with StandIn(client.runtime.forkserver_socket, batch=2):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.request(Count("1")), 0.2)
            reply = await asyncio.wait_for(client.request(Count("2")), 10)
            assert reply["n"] == "2"
            await client.stop()

    asyncio.run(scenario())


def test_a_line_cut_fails_its_waiters_and_the_next_request_reconnects(tmp_path):
    async def scenario():
        client = client_in(tmp_path)
        async with StandIn(client.runtime.forkserver_socket, batch=1) as stand_in:
            # asked twice (the kept line is cut both times): the second failure reaches the caller
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(client.request(Count("hang-up")), 10)
            assert [r["counter"] for r in stand_in.received] == ["hang-up", "hang-up"]
            reply = await asyncio.wait_for(client.request(Count("7")), 10)
            assert reply == {"ok": True, "n": "7"}
            assert stand_in.connections == 4  # presence, two cut lines, a new one
            await client.stop()

    asyncio.run(scenario())
