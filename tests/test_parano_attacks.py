"""Parano mode against an attacker who reads and writes the wire (issue: protocol v2).

Each test is one attack, named after what the attacker tries, run against a real
server with a protocol-level client (tests/paranoclient.py). The browser-level
attacks are in tests/test_parano_attacks_browser.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable

import httpx
import pytest
import websockets
from helpers import APP, TLS
from paranoclient import ParanoUser, head

from htagweb.parano import OPEN_WINDOW
from htagweb.stores import MemoryStore, SQLiteStore

MARKER = "VICTIM-SECRET-" + os.urandom(5).hex()  # 24 characters, as the placeholder below

SECRET_APP = APP + '''
from htagweb import WebServerWS


class SecretApp(Tag.App):
    def init(self):
        Tag.p(lambda: "secret=" + self.session.get("from_route", "-" * 24), _id="secret")


async def boom(request):
    raise RuntimeError("route-failure-detail-7f3a")


app = WebServerWS(SecretApp, runtime_dir=RUNTIME_DIR, parano=True, debug=True, secret="one secret for every instance", OPTIONS)
app.add_app("/counter", App)
app.add_route("/set", set_value)
app.add_route("/get", get_values)
app.add_route("/boom", boom)
'''


def secret_app(**options: object) -> str:
    return SECRET_APP.replace(", OPTIONS", "".join(f", {k}={v!r}" for k, v in options.items()))


def run(coro):
    return asyncio.run(coro)


async def victim_with_secret(url: str) -> ParanoUser:
    victim = ParanoUser(url)
    await victim.start()  # the page is loaded after the secret is set
    status, _ = await victim.request("GET", f"/set?v={MARKER}")
    assert status == 200
    return victim


def xor(*parts: bytes) -> bytes:
    size = min(len(p) for p in parts)
    out = bytearray(size)
    for part in parts:
        for i in range(size):
            out[i] ^= part[i]
    return bytes(out)


async def own_page_plaintext(url: str) -> bytes:
    """What the attacker knows: the app's page for a session of their own, as sealed."""
    async with ParanoUser(url) as attacker:
        await attacker.connect()
        channel, message = attacker.prepare("GET", "/")
        response = await attacker.send_http(message)
        return attacker.plaintext(channel, response)


async def replay_and_recover(recorded_at: str, replay_at: Callable[[], str]) -> bytes:
    """Record a victim's page load, replay its channel open at ``replay_at()``, XOR the
    two answers with a page of the attacker's own: what comes out where the victim's secret was."""
    async with await victim_with_secret(recorded_at) as victim:
        channel, message = victim.prepare("GET", "/")
        recorded = await victim.send_http(message)
        assert MARKER in victim.answer(channel, recorded)[1].decode()
    url = replay_at()
    async with httpx.AsyncClient(base_url=url, verify=TLS) as attacker:
        replayed = await attacker.post("/_htagweb/p/http", content=message)
    if replayed.status_code != 200:  # refused: nothing to recover
        return b""
    known = await own_page_plaintext(url)
    return xor(ParanoUser.ciphertext(recorded.content), ParanoUser.ciphertext(replayed.content), known)


def test_copied_cookie_does_not_open_the_victims_session(server):
    srv = server(secret_app())

    async def scenario():
        async with await victim_with_secret(srv.url) as victim:
            stolen = dict(victim.http.cookies)  # every cookie the victim's browser sent in clear
            async with ParanoUser(srv.url) as attacker:  # a key exchange of their own, with those cookies
                attacker.http.cookies.update(stolen)
                await attacker.connect()
                status, body = await attacker.request("GET", "/get")
                assert MARKER not in body.decode()
                page = await attacker.page()
                assert MARKER not in page
            async with httpx.AsyncClient(base_url=srv.url, cookies=stolen, verify=TLS) as plain:
                assert MARKER not in (await plain.get("/get")).text
            status, body = await victim.request("GET", "/get")  # the victim still has it
            assert MARKER in body.decode()

    run(scenario())


def test_replayed_channel_after_a_memory_store_restart_reveals_nothing(server):
    srv = server(secret_app(session_store="memory"))
    recovered = run(replay_and_recover(srv.url, lambda: srv.restart().url))
    assert MARKER.encode() not in recovered


def test_replayed_channel_on_another_instance_reveals_nothing(server):
    first, second = server(secret_app()), server(secret_app())  # one secret, a SQLite file each
    recovered = run(replay_and_recover(first.url, lambda: second.url))
    assert MARKER.encode() not in recovered


async def event_message(user: ParanoUser, value: str) -> tuple:
    body = json.dumps({"id": "session", "event": "click", "data": {"callback_id": value, "value": value}, "fallback": True}).encode()
    return user.prepare("POST", "/counter/event", [["x-htag-token", user.csrf]], body)


def test_swapped_events_run_in_the_order_sent(server):
    srv = server(secret_app())

    async def scenario():
        async with ParanoUser(srv.url) as user:
            await user.connect("/counter")
            first, second = await event_message(user, "first"), await event_message(user, "second")
            late = asyncio.create_task(user.send_http(second[1]))  # the attacker delivers the second first
            await asyncio.sleep(0.5)  # so that it surely arrives first; not a measurement
            answers = [await user.send_http(first[1]), await late]
            statuses = [user.answer(channel, answer)[0] for (channel, _), answer in zip((first, second), answers, strict=True)]
            assert statuses == [200, 200]
            _, body = await user.request("GET", "/get")
            assert json.loads(body)["from_app"] == "second"

    run(scenario())


def test_dropped_event_is_noticed(server):
    srv = server(secret_app())

    async def scenario():
        async with ParanoUser(srv.url) as user:
            await user.connect("/counter")
            await event_message(user, "dropped on the way")  # sealed, never delivered
            channel, message = await event_message(user, "after it")
            status, body = user.answer(channel, await user.send_http(message))
            assert status != 200 and "order" in body.decode()
            _, body = await user.request("GET", "/get")
            assert "from_app" not in json.loads(body)

    run(scenario())


def test_an_event_number_used_again_is_answered_only_for_the_event_that_ran(server):
    """A page sends an event again under its number once its WebSocket was cut (crypto/
    PROTOCOL.md §7). That number, delivered before, is admitted only for the callback id
    that ran, and then answered without running; another event under it is refused."""
    srv = server(secret_app())

    async def numbered(user: ParanoUser, seq: int, callback_id: str, value: str) -> tuple[int, bytes]:
        body = json.dumps({"id": "session", "event": "click", "data": {"callback_id": callback_id, "value": value}, "fallback": True})
        fields = {"page": user.page_id, "session": user.credential, "seq": seq, **user.stamp()}
        channel = user.channel(b"H")
        message = channel.open_message(head("POST", "/counter/event", [["x-htag-token", user.csrf]], body.encode(), **fields))
        return user.answer(channel, await user.send_http(message))

    async def from_app(user: ParanoUser) -> str:
        return json.loads((await user.request("GET", "/get"))[1])["from_app"]

    async def scenario():
        async with ParanoUser(srv.url) as user:
            await user.connect("/counter")
            assert (await numbered(user, 1, "ran", "first"))[0] == 200
            status, body = await numbered(user, 1, "other", "forged")  # another event under a number delivered
            assert status == 409 and "event 1 of this page was delivered already" in body.decode()
            assert await from_app(user) == "first"
            status, body = await numbered(user, 1, "ran", "sent again")  # the same event: answered
            assert status == 200 and json.loads(body)["status"] == "ok"
            assert await from_app(user) == "first"  # not run again
            assert (await numbered(user, 2, "next", "second"))[0] == 200  # the page goes on
            assert await from_app(user) == "second"

    run(scenario())


def test_route_error_is_answered_inside_the_channel(server):
    srv = server(secret_app())

    async def scenario():
        async with ParanoUser(srv.url) as user:
            await user.connect()
            channel, message = user.prepare("GET", "/boom")
            response = await user.send_http(message)
            assert response.status_code == 200 and b"route-failure-detail" not in response.content
            status, body = user.answer(channel, response)
            assert status == 500 and b"route-failure-detail" in body  # debug=True: the traceback, sealed

    run(scenario())


def test_point_at_infinity_is_refused(server):
    srv = server(secret_app(metrics=True))
    with httpx.Client(base_url=srv.url) as http:
        response = http.post("/_htagweb/kx", content=ParanoUser.hello(b"\x04" + bytes(64), srv.url))
        assert response.status_code == 400 and response.json()["error"] == "malformed"
        assert "htagweb_parano_rejections_total 1" in http.get("/_htagweb/metrics").text
    assert "Traceback" not in srv.log


def test_key_exchanges_leave_nothing_in_the_session_store(server):
    """Each hello was claimed in the session store for a ticket's lifetime (a day), so that a
    replayed one was refused before its ECDH. A fresh hello costs an attacker no more than a
    replay (here: another origin field), so the claim spared nothing, and any client could
    make the server keep a row a day per request: 500 requests, 500 rows. A hello sent again
    now gets a key exchange of its own, which only the holder of its private key can use."""
    srv = server(secret_app())

    def claims() -> int:
        with contextlib.closing(sqlite3.connect(srv.runtime_dir / "sessions.sqlite3")) as db:
            return db.execute("SELECT COUNT(*) FROM claims").fetchone()[0]

    async def scenario():
        async with ParanoUser(srv.url) as user:
            assert "Count: 0" in await user.connect("/counter")
            first, before = user.ticket, claims()
            again = await user.http.post("/_htagweb/kx", content=user.last_hello)
            assert again.status_code == 200 and again.content[139:] != first  # a new server key, a new ticket
            point = user.last_hello[2:67]
            for i in range(500):
                hello = ParanoUser.hello(point, f"https://flood-{i}.example")
                assert (await user.http.post("/_htagweb/kx", content=hello)).status_code == 200
            assert claims() == before
            assert "Count: 0" in await user.page("/counter")

    run(scenario())


def claims_of(srv) -> list[float]:
    """When each channel claim of the server's store expires."""
    with contextlib.closing(sqlite3.connect(srv.runtime_dir / "sessions.sqlite3")) as db:
        return [row[0] for row in db.execute("SELECT expires FROM claims")]


def test_a_channel_is_claimed_for_minutes_not_for_its_tickets_day(server):
    """Every channel was claimed in the session store until its ticket expired (a day), so
    that a replay of it was refused: any client with a key exchange of its own made the
    server keep a row a day per request. An Open now says when it was sealed, one sealed
    further than OPEN_WINDOW from the server's clock is refused, and a claim is kept only
    as long as its Open could be replayed."""
    srv = server(secret_app())

    async def scenario():
        async with ParanoUser(srv.url) as user:
            assert "Count: 0" in await user.connect("/counter")
            before = len(claims_of(srv))
            for _ in range(100):
                assert (await user.request("GET", "/nowhere"))[0] == 404
            expiries = claims_of(srv)
            assert len(expiries) == before + 100  # each channel is claimed: a replay is refused
            assert max(expiries) <= time.time() + OPEN_WINDOW

    run(scenario())


def test_a_channel_sealed_outside_its_window_is_refused_and_runs_nothing(server):
    """Once its claim is forgotten, a recorded channel is refused by its stamp: one sealed
    further than OPEN_WINDOW before (or after) the server's clock runs nothing. A page whose
    clock jumped is told `expired`, sealed: it re-keys and sends again (§6)."""
    srv = server(secret_app())

    async def click(user: ParanoUser, value: str) -> dict:
        channel, message = await event_message(user, value)
        return user.answer_head(channel, await user.send_http(message))

    async def scenario():
        async with ParanoUser(srv.url) as user:
            await user.connect("/counter")
            for shift in (-OPEN_WINDOW - 60, OPEN_WINDOW + 60):
                user.clock_shift = shift
                assert (await click(user, f"shifted by {shift}"))["error"]["code"] == "expired"
            user.clock_shift = None
            error = (await click(user, "unstamped"))["error"]
            assert error["code"] == "malformed" and "reload" in error["reason"]
            user.clock_shift = 0.0
            _, body = await user.request("GET", "/get")
            assert "from_app" not in json.loads(body)
            user.events = 0  # none of them was delivered: the page's next event is its first
            assert "error" not in await click(user, "on time")
            _, body = await user.request("GET", "/get")
            assert json.loads(body)["from_app"] == "on time"

    run(scenario())


def test_idle_websockets_are_closed(server):
    srv = server(secret_app())

    async def scenario():
        url = srv.url.replace("http://", "ws://") + "/_htagweb/p/ws"
        sockets = [await websockets.connect(url) for _ in range(20)]
        for ws in sockets:  # nothing sent: the server must not wait forever
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 60)  # a hang detector, not a measurement

    run(scenario())


def test_streaming_path_over_an_http_channel_is_refused(server):
    srv = server(secret_app())

    async def scenario():
        async with ParanoUser(srv.url) as user:
            await user.connect("/counter")
            channel, message = user.prepare("GET", "/counter/stream")
            response = await asyncio.wait_for(user.send_http(message), 60)  # a hang detector
            status, body = user.answer(channel, response)
            assert status == 400 and b"stream" in body

    run(scenario())


def test_sse_channel_keeps_the_ticket_out_of_urls(server):
    srv = server(secret_app())

    async def scenario():
        async with ParanoUser(srv.url) as user:
            await user.connect("/counter")
            await user.open_stream("/counter/stream")
            return user.ticket

    ticket = run(scenario())
    srv.wait_log(r"/_htagweb/p/sse")  # uvicorn's access log line
    import base64

    assert base64.urlsafe_b64encode(ticket)[:32].decode() not in srv.log
    assert "open=" not in srv.log


@pytest.mark.parametrize("make", [lambda path: SQLiteStore(path), lambda path: MemoryStore()], ids=["sqlite", "memory"])
def test_expired_claims_are_purged_while_running(tmp_path, make):
    store = make(tmp_path / "s.db")
    store.purge_interval = 0

    async def scenario():
        past = time.time() - 1
        for i in range(50):
            assert await store.claim("kx", f"old{i}", past)
        assert await store.claim("kx", "live", time.time() + 60)
        await store.close()

    run(scenario())
    if isinstance(store, SQLiteStore):
        rows = sqlite3.connect(tmp_path / "s.db").execute("SELECT token FROM claims").fetchall()
        assert rows == [("live",)]
    else:
        assert list(store._claims) == [("kx", "live")]
