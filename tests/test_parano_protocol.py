"""Parano mode at the protocol level: a crafted client against a real server.
Every refused message is checked to have left the user's app untouched."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets
from helpers import count, pid, server_source
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paranoclient import ParanoUser, click_message, head

from htagweb import cipher


def run(coro):
    return asyncio.run(coro)


async def connected(url: str) -> ParanoUser:
    user = ParanoUser(url)
    bootstrap = await user.http.get("/")  # as a browser: the bootstrap page sets the session cookie
    assert "Connecting securely" in bootstrap.text and "Count:" not in bootstrap.text
    await user.key_exchange()
    await user.page()
    return user


async def click_http(user: ParanoUser, tag_id: str = "inc") -> int:
    body = json.dumps({"id": tag_id, "event": "click", "data": {"callback_id": "c"}, "fallback": True}).encode()
    status, response = await user.request("POST", "/event", [["x-htag-token", user.csrf]], body)
    assert status == 200
    return count(json.loads(json.loads(response)["payloads"][-1])["updates"]["count"])


def error_of(response: httpx.Response) -> str:
    return response.json()["error"]


@pytest.fixture
def parano_server(server):
    return server(server_source("WebServerWS", parano=True))


def test_plaintext_is_refused(parano_server):
    async def scenario():
        async with httpx.AsyncClient(base_url=parano_server.url) as http:
            page = await http.get("/")
            assert page.status_code == 200 and "Connecting securely" in page.text
            assert "Count:" not in page.text and "pid=" not in page.text  # no app content before the channel
            assert (await http.post("/event", content="{}")).status_code == 403
            assert (await http.get("/stream")).status_code == 403
            ws_url = parano_server.url.replace("http", "ws") + "/ws"
            cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
            with pytest.raises(websockets.InvalidStatus):
                async with websockets.connect(ws_url, additional_headers={"Cookie": cookie}):
                    pass

    run(scenario())


def test_http_channel_renders_and_counts(parano_server):
    async def scenario():
        async with await connected(parano_server.url) as user:
            assert "Count: 0" in await user.page()
            assert await click_http(user) == 1
            assert await click_http(user) == 2
            assert "Count: 2" in await user.page()

    run(scenario())
    parano_server.wait_log(r"parano mode: server identity fingerprint SHA256:[A-Za-z0-9_-]{43}")


def test_websocket_channel(parano_server):
    async def scenario():
        async with await connected(parano_server.url) as user:
            channel = user.channel(b"W")
            async with user.websocket() as ws:
                await ws.send(channel.open_message(head("GET", "/ws")))
                initial = json.loads(channel.open(await ws.recv()))
                assert initial["action"] == "update"
                await ws.send(channel.data(click_message("inc")))
                reply = json.loads(channel.open(await ws.recv()))
                assert "Count: 1" in reply["updates"]["count"]

    run(scenario())


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_tampered_truncated_and_replayed_http_messages(parano_server):
    async def scenario():
        async with await connected(parano_server.url) as user:
            body = json.dumps({"id": "inc", "event": "click", "data": {"callback_id": "c"}, "fallback": True}).encode()
            make = lambda: user.channel(b"H").open_message(head("POST", "/event", [["x-htag-token", user.csrf]], body))  # noqa: E731
            message = make()
            assert error_of(await user.send_http(flip(message, len(message) - 30))) == "integrity"  # ciphertext
            assert error_of(await user.send_http(flip(message, len(message) - 3))) == "integrity"  # tag
            assert error_of(await user.send_http(flip(message, 30))) == "ticket"  # inside the ticket
            assert error_of(await user.send_http(flip(message, 5))) == "integrity"  # channel id
            assert error_of(await user.send_http(message[:-7])) == "integrity"  # truncated
            assert error_of(await user.send_http(message[:25])) == "malformed"
            assert error_of(await user.send_http(b"\x02" + message[1:])) == "malformed"  # another version
            assert "Count: 0" in await user.page()  # none of it reached the app
            assert (await user.send_http(message)).status_code == 200
            replay = await user.send_http(message)
            assert replay.status_code == 409 and error_of(replay) == "replay"
            assert "Count: 1" in await user.page()

    run(scenario())
    parano_server.wait_log(r"WARNING.*parano: refused an HTTP channel: replay")


def test_websocket_reorder_replay_and_tamper_close_the_channel(parano_server):
    async def attack(user: ParanoUser, mangle) -> int:
        channel = user.channel(b"W")
        async with user.websocket() as ws:
            await ws.send(channel.open_message(head("GET", "/ws")))
            channel.open(await ws.recv())
            await mangle(ws, channel)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            return closed.value.rcvd.code

    async def reorder(ws, channel):
        first, second = channel.data(click_message("inc", "1")), channel.data(click_message("inc", "2"))
        await ws.send(second)
        await ws.send(first)

    async def replay(ws, channel):
        frame = channel.data(click_message("inc", "1"))
        await ws.send(frame)
        channel.open(await ws.recv())
        await ws.send(frame)

    async def tamper(ws, channel):
        await ws.send(flip(channel.data(click_message("inc")), 12))

    async def plaintext(ws, channel):
        await ws.send(click_message("inc").decode())

    async def scenario():
        async with await connected(parano_server.url) as user:
            assert await attack(user, reorder) == 4422
            assert await attack(user, replay) == 4422
            assert await attack(user, tamper) == 4422
            assert await attack(user, plaintext) == 4400
            assert "Count: 1" in await user.page()  # only the first frame of `replay` was genuine

    run(scenario())


def test_swapped_tickets_and_stolen_cookie(parano_server):
    async def scenario():
        async with await connected(parano_server.url) as alice, await connected(parano_server.url) as bob:
            for _ in range(3):
                await click_http(bob)
            # Alice sends Bob's ticket with her own cookie: the session does not match
            swapped = alice.channel(b"H")
            swapped.ticket = bob.ticket
            response = await alice.send_http(swapped.open_message(head("GET", "/")))
            assert response.status_code == 403 and error_of(response) == "session"
            # without a cookie (as a kiosk), Bob's ticket with Alice's keys does not decrypt
            async with httpx.AsyncClient(base_url=parano_server.url) as bare:
                response = await bare.post("/_htagweb/p/http", content=swapped.open_message(head("GET", "/")))
                assert error_of(response) == "integrity"
            assert "Count: 3" in await bob.page()  # Bob unaffected
            # Mallory copies Bob's cookie and makes her own key exchange: another process
            async with ParanoUser(parano_server.url) as mallory:
                mallory.http.cookies.update(bob.http.cookies)
                await mallory.key_exchange()
                page = await mallory.page()
                assert count(page) == 0 and pid(page) != pid(await bob.page())

    run(scenario())


def test_expired_ticket_is_refused(server):
    srv = server(server_source("WebServerWS", parano=True, parano_ticket_lifetime=1))

    async def scenario():
        async with await connected(srv.url) as user:
            await asyncio.sleep(2.5)  # the ticket's lifetime, not a measurement
            response = await user.send_http(user.channel(b"H").open_message(head("GET", "/")))
            assert response.status_code == 401 and error_of(response) == "ticket"
            await user.key_exchange()  # what the browser does on 401
            assert "Count: 0" in await user.page()

    run(scenario())


def test_secret_rotation_keeps_old_tickets():
    ticket = cipher.Ticket(int(time.time()) + 60, "sid", bytes(16), bytes(32), bytes(32))
    sealed = cipher.TicketSealer([b"old"]).seal(ticket)
    assert cipher.TicketSealer([b"new", b"old"]).open(sealed) == ticket
    with pytest.raises(cipher.ParanoError, match="ticket"):
        cipher.TicketSealer([b"new"]).open(sealed)


DECODERS = [
    cipher.OpenMessage.parse,
    cipher.ClientHello.parse,
    cipher.data_box,
    lambda data: cipher.TicketSealer([b"s"]).open(data),
    lambda data: cipher.open_box(bytes(32), b"W", cipher.C2S, bytes(16), 0, data),
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(range(len(DECODERS))))
def test_decoders_only_raise_protocol_errors(data, which):
    try:
        DECODERS[which](data)
    except cipher.ParanoError:
        pass


def test_fuzzed_messages_get_protocol_errors_and_server_keeps_working(parano_server):
    with httpx.Client(base_url=parano_server.url) as http:
        http.get("/")

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.sampled_from(["/_htagweb/kx", "/_htagweb/p/http"]), st.binary(max_size=300))
        def fuzz(path, body):
            response = http.post(path, content=body)
            assert response.status_code in (200, 400, 401, 403, 409, 422), response.text
            if response.status_code != 200:
                assert response.json()["error"] in cipher.ParanoError.HTTP_STATUS

        fuzz()

    async def still_working():
        async with await connected(parano_server.url) as user:
            assert await click_http(user) == 1

    run(still_working())


def test_rejections_are_counted(server):
    srv = server(server_source("WebServerWS", parano=True, metrics=True))
    with httpx.Client(base_url=srv.url) as http:
        for body in (b"", b"\x01\x10garbage", b"\x01\x01" + bytes(65)):
            http.post("/_htagweb/p/http" if body[1:2] == b"\x10" else "/_htagweb/kx", content=body)
        assert "htagweb_parano_rejections_total 3" in http.get("/_htagweb/metrics").text
