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


def test_every_store_forgets_a_rotated_id_and_keeps_an_active_session(redis_url, tmp_path):
    from htagweb.sessions import move
    from htagweb.stores import MemoryStore, RedisStore, SQLiteStore

    async def scenario(store):
        store.max_age = 60
        await store.update("old", {"user": '"ada"'}, [])
        version = await move(store, "old", "new")
        assert version >= 1 and await store.load("new") == (version, {"user": '"ada"'})
        assert await store.load("old") == (0, {})
        await store.touch("new")
        await store.close()

    for store in (MemoryStore(), SQLiteStore(tmp_path / "s.sqlite3"), RedisStore(redis_url)):
        run(scenario(store))
    ttl_store = RedisStore(redis_url, max_age=1000)

    async def touched():
        import redis.asyncio

        await ttl_store.update("t", {"k": "1"}, [])
        client = redis.asyncio.Redis.from_url(redis_url)
        await client.expire("htagweb:s:t", 5)
        await ttl_store.touch("t")
        assert await client.ttl("htagweb:s:t") > 900
        await client.aclose()
        await ttl_store.close()

    run(touched())
