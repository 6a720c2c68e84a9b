"""The Redis session store, against a real redis-server: sessions shared by
two server instances (other runtime directories, same secret), as on two machines."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
from helpers import User, click, server_source
from paranoclient import ParanoUser

SECRET = "shared-secret-for-two-instances"


def run(coro):
    return asyncio.run(coro)


def test_session_in_redis_shared_by_two_instances(server, redis_url):
    one = server(server_source("WebServerWS", session_store=redis_url, secret=SECRET))
    two = server(server_source("WebServerWS", session_store=redis_url, secret=SECRET))

    async def scenario():
        async with User(one.url) as user:
            await user.page()
            await user.http.get("/set", params={"v": "from-one"})
            async with user.ws() as ws:
                await ws.recv()
                assert (await click(ws, "session", value="app-one"))["result"] == {"from_route": "from-one", "from_app": "app-one"}
            # the load balancer moves the user: same cookie, other instance
            async with User(two.url) as moved:
                moved.http.cookies.update(user.http.cookies)
                assert (await moved.http.get("/get")).json() == {"from_route": "from-one", "from_app": "app-one"}
                await moved.page()
                async with moved.ws() as ws:
                    await ws.recv()
                    assert (await click(ws, "session"))["result"] == {"from_route": "from-one", "from_app": "app-one"}

    run(scenario())


def test_parano_channel_replayed_on_another_instance_is_refused(server, redis_url):
    one = server(server_source("WebServerWS", session_store=redis_url, secret=SECRET, parano=True))
    two = server(server_source("WebServerWS", session_store=redis_url, secret=SECRET, parano=True))

    async def scenario():
        async with ParanoUser(one.url) as user:
            await user.start()
            channel, message = user.prepare("GET", "/")
            assert user.answer(channel, await user.send_http(message))[0] == 200
            async with httpx.AsyncClient(base_url=two.url) as other:
                replay = await other.post("/_htagweb/p/http", content=message)  # any instance opens the ticket (same secret)...
            assert user.answer_head(channel_copy(channel), replay)["error"]["code"] == "replay"  # ...and Redis remembers the channel

    run(scenario())


def channel_copy(channel):
    """The client's end of ``channel`` as it was before the server answered: to read a second answer."""
    return dataclasses.replace(channel, ks=None, received=0)
