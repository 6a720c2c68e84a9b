"""Parano mode at the protocol level: a crafted client against a real server.
Every refused message is checked to have left the user's app untouched."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time

import httpx
import pytest
import websockets
from helpers import count, pid, server_source
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paranoclient import ClientChannel, ParanoUser, click_message, control, text

from htagweb import cipher
from htagweb.parano import OPEN_WINDOW, _sealed_at


def run(coro):
    return asyncio.run(coro)


async def connected(url: str) -> ParanoUser:
    user = ParanoUser(url)
    bootstrap = await user.http.get("/")
    assert "Connecting securely" in bootstrap.text and "Count:" not in bootstrap.text
    assert "set-cookie" not in bootstrap.headers  # parano mode has no cookie: the session lives in the channel
    await user.key_exchange()
    await user.page()
    return user


async def click_http(user: ParanoUser, tag_id: str = "inc") -> int:
    """A click posted, with a fresh id as htag's client gives each (an id seen before is answered, not run)."""
    body = json.dumps({"id": tag_id, "event": "click", "data": {"callback_id": os.urandom(6).hex()}, "fallback": True}).encode()
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
            async with user.websocket() as ws:
                channel = await user.open_websocket(ws)
                initial = json.loads(text(channel.open(await ws.recv())))
                assert initial["action"] == "update"
                await ws.send(user.event_frame(channel, click_message("inc")))
                reply = json.loads(text(channel.open(await ws.recv())))
                assert "Count: 1" in reply["updates"]["count"]

    run(scenario())


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


async def refusal(user: ParanoUser, channel: ClientChannel, message: bytes) -> str:
    """How the server answered ``message``: a clear error, a sealed one, or a sealed
    answer that ``channel`` cannot read (sealed for the channel the message claims to be)."""
    response = await user.send_http(message)
    if response.status_code != 200:
        return "clear " + error_of(response)
    try:
        return user.answer_head(dataclasses.replace(channel, ks=None, received=0), response).get("error", {}).get("code", "accepted")
    except cipher.ParanoError:
        return "unreadable"


def test_tampered_truncated_and_replayed_http_messages(parano_server):
    async def scenario():
        async with await connected(parano_server.url) as user:
            body = json.dumps({"id": "inc", "event": "click", "data": {"callback_id": "c"}, "fallback": True}).encode()
            channel, message = user.prepare("POST", "/event", [["x-htag-token", user.csrf]], body)
            assert await refusal(user, channel, flip(message, len(message) - 30)) == "integrity"  # ciphertext: told sealed
            assert await refusal(user, channel, flip(message, len(message) - 3)) == "integrity"  # tag
            assert await refusal(user, channel, flip(message, 30)) == "clear ticket"  # inside the ticket: no key to seal with
            assert await refusal(user, channel, flip(message, 5)) == "unreadable"  # channel id: sealed for that other channel
            assert await refusal(user, channel, message[:-7]) == "integrity"  # truncated
            assert await refusal(user, channel, message[:25]) == "clear malformed"
            assert await refusal(user, channel, b"\x01" + message[1:]) == "clear malformed"  # another version
            deep = user.channel(b"H")  # a head nested deeper than the stack: no JSON, as any
            assert await refusal(user, deep, deep.open_message(b"[" * 100_000 + b"\n")) == "malformed"
            assert "Count: 0" in await user.page()  # none of it reached the app
            assert await refusal(user, channel, message) == "accepted"
            assert await refusal(user, channel, message) == "replay"
            assert "Count: 1" in await user.page()

    run(scenario())
    parano_server.wait_log(r"WARNING.*parano: refused an HTTP channel: replay")


def test_websocket_reorder_replay_and_tamper_close_the_channel(parano_server):
    async def attack(user: ParanoUser, mangle) -> str:
        await user.reload()  # each attack kills its page: the next one starts on a new page
        async with user.websocket() as ws:
            channel = await user.open_websocket(ws)
            channel.open(await ws.recv())  # htag's first update
            await mangle(ws, channel)
            errors = []
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    plaintext = channel.open(await ws.recv())
                    if plaintext[0] == cipher.CONTROL:
                        errors.append(control(plaintext)["error"]["code"])
            return errors[-1]

    async def reorder(ws, channel):
        first, second = user_frames(channel, 2)
        await ws.send(second)
        await ws.send(first)

    async def replay(ws, channel):
        (frame,) = user_frames(channel, 1)
        await ws.send(frame)
        channel.open(await ws.recv())
        await ws.send(frame)

    async def tamper(ws, channel):
        await ws.send(flip(user_frames(channel, 1)[0], 12))

    async def plaintext(ws, channel):
        await ws.send(click_message("inc").decode())

    async def scenario():
        nonlocal user_frames
        async with await connected(parano_server.url) as user:
            user_frames = lambda channel, n: [user.event_frame(channel, click_message("inc", str(i))) for i in range(n)]  # noqa: E731
            assert await attack(user, reorder) == "integrity"
            assert await attack(user, replay) == "integrity"
            assert await attack(user, tamper) == "integrity"
            assert await attack(user, plaintext) == "malformed"
            assert "Count: 1" in await user.page()  # only the first frame of `replay` was genuine

    user_frames = None
    run(scenario())


def test_swapped_tickets_are_refused(parano_server):
    async def scenario():
        async with await connected(parano_server.url) as alice, await connected(parano_server.url) as bob:
            for _ in range(3):
                await click_http(bob)
            # Alice sends Bob's ticket with her own keys: the server opens it with Bob's keys, her box fails
            swapped = alice.channel(b"H")
            swapped.ticket = bob.ticket
            assert await refusal(alice, swapped, swapped.open_message(alice.head("GET", "/"))) == "unreadable"
            assert "Count: 3" in await bob.page()  # Bob unaffected
            assert count(await alice.page()) == 0 and pid(await alice.page()) != pid(await bob.page())

    run(scenario())


def test_expired_ticket_is_refused_sealed(server):
    srv = server(server_source("WebServerWS", parano=True, parano_ticket_lifetime=1))

    async def scenario():
        async with await connected(srv.url) as user:
            await asyncio.sleep(2.5)  # the ticket's lifetime, not a measurement
            channel, message = user.prepare("GET", "/")
            assert user.answer_head(channel, await user.send_http(message))["error"]["code"] == "expired"
            await user.key_exchange()  # what the browser does on a sealed "expired": nothing ran
            assert "Count: 0" in await user.page()

    run(scenario())


def test_secret_rotation_keeps_old_tickets():
    ticket = cipher.Ticket(int(time.time()) + 60, bytes(16), bytes(32), bytes(32))
    sealed = cipher.TicketSealer([b"old"]).seal(ticket)
    assert cipher.TicketSealer([b"new", b"old"]).open(sealed) == ticket
    with pytest.raises(cipher.ParanoError, match="ticket"):
        cipher.TicketSealer([b"new"]).open(sealed)


def test_an_opens_stamp_places_it_on_the_servers_clock():
    lifetime, kx_at = 3600.0, time.time() - 1000  # keys exchanged 1,000 s ago
    ticket = cipher.Ticket(int(kx_at + lifetime), bytes(16), bytes(32), bytes(32))
    sealed_at = _sealed_at(ticket, {"age": 999_500}, lifetime)
    assert abs(sealed_at - (time.time() - 0.5)) < 1.5  # `expires` is rounded down to the second
    for age in (1_000_000 - (OPEN_WINDOW + 5) * 1000, 1_000_000 + (OPEN_WINDOW + 5) * 1000):
        with pytest.raises(cipher.ParanoError, match="sealed too long ago"):
            _sealed_at(ticket, {"age": int(age)}, lifetime)
    for age in (None, True, 999.5, "999500", 2**53 + 1):
        with pytest.raises(cipher.ParanoError, match="no stamp"):
            _sealed_at(ticket, {"age": age}, lifetime)


DECODERS = [
    cipher.OpenMessage.parse,
    cipher.ClientHello.parse,
    cipher.data_box,
    cipher.accept_box,
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
            assert response.status_code in (200, 400, 401, 409), response.text
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
        for body in (b"", b"\x02\x10garbage", b"\x02\x01" + bytes(65)):
            http.post("/_htagweb/p/http" if body[1:2] == b"\x10" else "/_htagweb/kx", content=body)
        assert "htagweb_parano_rejections_total 3" in http.get("/_htagweb/metrics").text
