"""The Redis session store, against a real redis-server: sessions shared by
two server instances (other runtime directories, same secret), as on two machines."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal

import httpx
import pytest
import websockets
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


def test_a_channel_claim_in_redis_is_kept_no_shorter_than_asked(redis_url):
    """Redis counts a key's life in whole seconds: rounded down, a claim kept until a parano
    Open's window closes (crypto/PROTOCOL.md §4) ended up to a second early, and a replay
    there ran again."""
    import time

    import redis.asyncio

    from htagweb.stores import RedisStore

    async def scenario():
        store = RedisStore(redis_url)
        assert await store.claim("kx", "channel", time.time() + 1.9)
        client = redis.asyncio.Redis.from_url(redis_url)
        assert await client.pttl("htagweb:c:kx:channel") > 1800
        await client.aclose()
        await store.close()

    run(scenario())


STORE_DOWN = "The session store is unavailable"


def test_a_session_store_gone_is_told_to_users_and_served_again_once_back(server, redis_server):
    """redis-server killed, then frozen (a hung machine), then started again: every user
    whose request needs the store is told so, nothing is logged as a crash, and once the
    store is back users are served without a restart."""
    srv = server(server_source("WebServerWS", session_store=redis_server.url + "?socket_timeout=0.5&socket_connect_timeout=0.5"))

    async def refused_socket(user):
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with user.ws():
                pass
        assert refused.value.response.status_code == 503 and STORE_DOWN in refused.value.response.body.decode()

    async def scenario():
        async with User(srv.url) as known, User(srv.url) as clicking, User(srv.url) as newcomer:
            assert "Count: 0" in (await known.page()).text
            assert "Count: 0" in (await clicking.page()).text
            await known.http.get("/set", params={"v": "kept"})
            async with clicking.ws() as ws:
                await ws.recv()
                assert "Count: 1" in json.dumps(await click(ws, "inc", callback_id="one"))
                redis_server.stop()
                answer = await click(ws, "inc", callback_id="two")
                assert answer["action"] == "error" and STORE_DOWN in answer["traceback"]
            page = await known.page()  # its session cannot be read
            assert page.status_code == 503 and STORE_DOWN in page.text and page.headers["retry-after"]
            assert (await known.http.get("/get")).status_code == 503
            assert "Count: 0" in (await newcomer.page()).text  # nothing stored to read yet
            await refused_socket(newcomer)  # its session is read: a route may have written to it since
            posted = (await newcomer.post_event("inc")).json()  # htag's fallback: answered for its overlay
            assert posted["status"] == "error" and STORE_DOWN in json.loads(posted["payloads"][0])["traceback"]
            redis_server.start()
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            try:
                page = await known.page()
                assert page.status_code == 503 and STORE_DOWN in page.text
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            assert "Count: 0" in (await known.page()).text  # back, empty: as a new session
            assert (await known.http.get("/set", params={"v": "again"})).text == "ok"
            assert (await known.http.get("/get")).json() == {"from_route": "again"}

    run(scenario())
    assert srv.log.count(STORE_DOWN) == 0 and srv.log.count("session store unavailable") >= 5 and "Traceback" not in srv.log


def test_a_session_store_gone_is_told_inside_parano_channels(server, redis_server):
    """Parano mode claims every channel in the store (a replay is refused by it): with the
    store gone, a channel is refused sealed, as `unavailable`; none of it counts as a rejected
    message. A key exchange stores nothing, and goes on. Once back, the page goes on."""
    srv = server(server_source("WebServerWS", session_store=redis_server.url, parano=True, metrics=True))

    async def scenario():
        async with ParanoUser(srv.url) as user:
            assert "Count: 0" in await user.connect()
            redis_server.stop()
            channel, message = user.prepare("GET", "/")
            error = user.answer_head(channel, await user.send_http(message))["error"]
            assert error == {"code": "unavailable", "reason": "the session store is unavailable: try again in a moment"}
            await user.key_exchange()  # new keys, with the store gone
            metrics = (await user.http.get("/_htagweb/metrics")).text
            redis_server.start()
            assert "Count: 0" in await user.page()
        return metrics

    metrics = run(scenario())
    assert "htagweb_parano_rejections_total 0" in metrics
    assert srv.log.count("session store unavailable") == 1 and "Traceback" not in srv.log
