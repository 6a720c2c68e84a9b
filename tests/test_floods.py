"""Clients that are not (yet) users cost little: no session and no process for
HEAD, favicon, robots.txt and health; a limit on new processes per address;
processes whose page never went live reclaimed first, then the least recently
active idle ones (with on_destroy), before anyone gets a 503."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import httpx
import pytest
import websockets
from helpers import TLS, User, click, count, pid, server_source

#: every client of a test comes from 127.0.0.1: no limit per address
ONE_ADDRESS = {"new_processes_per_minute": 0, "max_processes_per_address": 0}


def run(coro):
    return asyncio.run(coro)


def destroyed(srv) -> set[int]:
    path = Path(srv.workdir) / "destroyed.log"
    return set(map(int, path.read_text().split())) if path.exists() else set()


async def processes(url: str) -> int:
    async with httpx.AsyncClient(base_url=url, verify=TLS) as http:
        return (await http.get("/_htagweb/health")).json()["user_processes"]


def test_head_favicon_robots_and_health_create_no_session_and_no_process(server):
    srv = server(server_source("WebServerWS", spare_processes=0))

    async def scenario():
        async with httpx.AsyncClient(base_url=srv.url, verify=TLS) as anonymous:
            head = await anonymous.head("/")
            assert head.status_code == 200 and head.headers["content-type"].startswith("text/html")
            for path in ("/favicon.ico", "/robots.txt", "/_htagweb/health", "/nowhere"):
                response = await anonymous.get(path)
                assert "set-cookie" not in response.headers, path
            assert "set-cookie" not in head.headers and not anonymous.cookies
            assert await processes(srv.url) == 0
            async with User(srv.url) as user:  # a user still gets a session and a process
                page = await user.page()
                assert page.status_code == 200 and "htagweb_session" in user.http.cookies
                assert (await user.http.head("/")).status_code == 200
            assert await processes(srv.url) == 1

    run(scenario())
    assert srv.log.count("user process spawned") == 1


def test_new_processes_are_limited_per_address(server):
    srv = server(server_source("WebServerWS", new_processes_per_minute=4, spare_processes=0))
    proxied = server(server_source("WebServerWS", new_processes_per_minute=2, spare_processes=0, trust_proxy_headers=True))

    async def pages(url: str, n: int, local: str = "127.0.0.1", headers: dict | None = None) -> list[httpx.Response]:
        transport = httpx.AsyncHTTPTransport(local_address=local, verify=TLS)
        async with httpx.AsyncClient(base_url=url, transport=transport) as http:
            responses = []
            for _ in range(n):
                http.cookies.clear()  # each a new visitor
                responses.append(await http.get("/", headers=headers))
            return responses

    async def scenario():
        flood = await pages(srv.url, 7)
        assert [r.status_code for r in flood] == [200] * 4 + [429] * 3
        assert flood[-1].headers["retry-after"] and "Too many new sessions from your address" in flood[-1].text
        assert "set-cookie" not in flood[-1].headers
        assert [r.status_code for r in await pages(srv.url, 1, "127.0.0.2")] == [200]  # another address
        # X-Forwarded-For counts only behind a trusted proxy: the address the proxy saw, last in the list
        spoofed = await pages(srv.url, 2, "127.0.0.3", headers={"X-Forwarded-For": "10.0.0.9"})
        assert [r.status_code for r in spoofed] == [200, 200]
        assert [r.status_code for r in await pages(srv.url, 3, "127.0.0.3")] == [200, 200, 429]
        first = await pages(proxied.url, 3, headers={"X-Forwarded-For": "192.0.2.1, 10.0.0.1"})
        second = await pages(proxied.url, 2, headers={"X-Forwarded-For": "10.0.0.2"})
        assert [r.status_code for r in first + second] == [200, 200, 429, 200, 200]

    run(scenario())
    srv.wait_log(r"new process refused: over 4 new processes per minute from 127\.0\.0\.1")


def test_provisional_then_least_recently_active_idle_processes_make_room(server):
    srv = server(server_source("WebServerWS", max_processes=3, spare_processes=0, max_processes_per_address=0))

    async def live_user(user: User):
        process = pid((await user.page()).text)
        ws = await user.ws().__aenter__()
        await ws.recv()
        assert count((await click(ws, "inc"))["updates"]["count"]) == 1
        return process, ws

    async def scenario():
        async with User(srv.url) as alice, User(srv.url) as lurker, User(srv.url) as bob, User(srv.url) as carol:
            alice_pid, alice_ws = await live_user(alice)
            lurker_pid = pid((await lurker.page()).text)  # a page that never went live: provisional
            bob_pid, bob_ws = await live_user(bob)
            carol_page = await carol.page()  # at the cap: the provisional process makes room
            assert carol_page.status_code == 200
            await wait_for(lambda: lurker_pid in destroyed(srv))
            assert (await click(alice_ws, "inc", callback_id="2"))["updates"]["count"].endswith("Count: 2</p>")
            async with User(srv.url) as dave:  # carol is provisional too: she goes before anyone live
                dave_pid, dave_ws = await live_user(dave)
                await wait_for(lambda: pid(carol_page.text) in destroyed(srv))
                assert (await click(alice_ws, "inc", callback_id="3"))["updates"]["count"].endswith("Count: 3</p>")
                async with User(srv.url) as erin:  # all live now: bob was the least recently active
                    assert (await erin.page()).status_code == 200
                    await wait_for(lambda: bob_pid in destroyed(srv))
                    assert alice_pid not in destroyed(srv) and dave_pid not in destroyed(srv)
                    message = json.loads(await bob_ws.recv())  # bob is told, in htag's overlay
                    assert message["action"] == "error" and "make room for other users" in message["traceback"]
                    assert (await click(alice_ws, "inc", callback_id="4"))["updates"]["count"].endswith("Count: 4</p>")
                await dave_ws.close()
            await alice_ws.close()
            await bob_ws.close()

    run(scenario())
    srv.wait_log(r"user process evicted: pid \d+, .* \(provisional")
    srv.wait_log(r"user process evicted: pid \d+, .* \(idle for")


def test_at_the_cap_a_live_user_is_not_ended_while_new_processes_are_still_answering(server):
    """At max_processes, a new user found every other process arriving (given to its user a moment
    ago, its first page not answered yet) and ended the live user's in their place: a burst of
    cookieless page loads from anywhere ended a live user, whose processes would have been
    provisional, and so first to make room, a moment later. The newcomer now waits its turn."""
    source = server_source("WebServerWS", max_processes=2, spare_processes=0, **ONE_ADDRESS) + """
class SlowFirstPage(Tag.App):
    def init(self):
        time.sleep(0.5)  # its first page takes a while: its process is arriving meanwhile
        Tag.p("slow page")

app.add_app("/slow", SlowFirstPage)
"""
    srv = server(source)

    async def newcomer() -> httpx.Response:
        async with httpx.AsyncClient(base_url=srv.url, verify=TLS) as http:
            return await http.get("/slow")

    async def scenario():
        async with User(srv.url) as alice:
            alice_pid = pid((await alice.page()).text)
            async with alice.ws() as ws:
                await ws.recv()
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
                pages = await asyncio.gather(*(newcomer() for _ in range(4)))
                assert ["slow page" in page.text for page in pages] == [True] * 4
                assert count((await click(ws, "inc", callback_id="2"))["updates"]["count"]) == 2
            assert alice_pid not in destroyed(srv)

    run(scenario())


def test_a_503_only_when_every_process_is_busy(server):
    """... and a user refused so is not counted towards new_processes_per_minute: no process started."""
    options = {"metrics": True, "shutdown_grace": 1, "max_processes_per_address": 0, "new_processes_per_minute": 2}
    srv = server(server_source("WebServerWS", max_processes=1, spare_processes=0, **options))

    async def scenario():
        async with User(srv.url) as busy, User(srv.url) as late:
            await busy.page()
            async with busy.ws() as ws:
                await ws.recv()
                await ws.send(json.dumps({"id": "hang", "event": "click", "data": {"callback_id": "h"}}))
                await wait_for_async(lambda: processes_busy(srv.url))
                for _ in range(3):  # the user tries again
                    refused = await late.page()
                    assert refused.status_code == 503 and refused.headers["retry-after"] == "30"
                    assert "limit of live user sessions" in refused.text

    run(scenario())


async def processes_busy(url: str) -> bool:
    async with httpx.AsyncClient(base_url=url, verify=TLS) as http:
        return "htagweb_busy_processes 1\n" in (await http.get("/_htagweb/metrics")).text


async def wait_for(condition, tries: int = 200) -> None:
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never met")


async def wait_for_async(condition, tries: int = 200) -> None:
    for _ in range(tries):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never met")


def test_two_thousand_cookieless_gets_leave_room_for_users(server):
    """The flood of the issue: 2,000 cookieless GETs from one address; a user from another
    loopback address then loads the page, opens the WebSocket and clicks; a user active
    before the flood keeps clicking (timings: bench/flood_bench.py, not asserted here)."""
    srv = server(server_source("WebServerWS", max_processes=40))

    async def flood() -> dict[int, int]:
        statuses: dict[int, int] = {}

        async def one_by_one(n: int) -> None:
            async with httpx.AsyncClient(base_url=srv.url, verify=TLS) as http:
                for _ in range(n):
                    http.cookies.clear()  # cookieless, every one
                    status = (await http.get("/")).status_code
                    statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(one_by_one(100) for _ in range(20)))
        return statuses

    async def scenario():
        async with User(srv.url) as before:
            await before.page()
            async with before.ws() as ws:
                await ws.recv()
                await click(ws, "inc", callback_id="1")
                statuses = await flood()
                assert sum(statuses.values()) == 2000 and set(statuses) == {200, 429}, statuses
                assert count((await click(ws, "inc", callback_id="2"))["updates"]["count"]) == 2
                transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2", verify=TLS)
                async with httpx.AsyncClient(base_url=srv.url, transport=transport) as newcomer:
                    page = await newcomer.get("/")
                    assert page.status_code == 200 and count(page.text) == 0
                    cookie = "; ".join(f"{k}={v}" for k, v in newcomer.cookies.items())
                    url = srv.url.replace("http://", "ws://") + "/ws"
                    async with websockets.connect(url, additional_headers={"Cookie": cookie}, local_addr=("127.0.0.2", 0)) as theirs:
                        await theirs.recv()
                        assert count((await click(theirs, "inc"))["updates"]["count"]) == 1
                assert count((await click(ws, "inc", callback_id="3"))["updates"]["count"]) == 3

    run(scenario())


def test_one_address_at_its_share_of_processes_makes_room_from_its_own(server):
    """One address opened sessions and kept them active, new_processes_per_minute a minute:
    at max_processes, each of its new sessions ended the least recently active process,
    another address' user's. An address holds max_processes_per_address (a quarter of
    max_processes by default: 2 here); beyond, its own least recently active makes room."""
    srv = server(server_source("WebServerWS", max_processes=8, spare_processes=0, new_processes_per_minute=0))
    ws_url = srv.url.replace("http://", "ws://") + "/ws"

    async def scenario():
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2", verify=TLS)
        async with httpx.AsyncClient(base_url=srv.url, transport=transport) as victim, contextlib.AsyncExitStack() as held:
            page = await victim.get("/")
            cookie = "; ".join(f"{k}={v}" for k, v in victim.cookies.items())
            connecting = websockets.connect(ws_url, additional_headers={"Cookie": cookie}, local_addr=("127.0.0.2", 0))
            theirs = await held.enter_async_context(connecting)
            await theirs.recv()
            assert count((await click(theirs, "inc", callback_id="1"))["updates"]["count"]) == 1
            flood = []
            for _ in range(8):  # as many as max_processes, each clicked: more recently active than the victim
                user = await held.enter_async_context(User(srv.url))
                flood.append(pid((await user.page()).text))
                ws = await held.enter_async_context(user.ws())
                await ws.recv()
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
            await wait_for(lambda: len(destroyed(srv)) >= 6)
            assert destroyed(srv) == set(flood[:6])  # the flood's own, oldest first
            assert count((await click(theirs, "inc", callback_id="2"))["updates"]["count"]) == 2
            assert pid(page.text) not in destroyed(srv)

    run(scenario())
    srv.wait_log(r"user process evicted: .*room for a new session of the same address, at max_processes_per_address \(2\)")


def test_parano_key_exchanges_from_one_address_are_limited_too(server):
    from paranoclient import ParanoUser

    srv = server(server_source("WebServerWS", parano=True, new_processes_per_minute=2, spare_processes=0))

    async def scenario():
        statuses = []
        for _ in range(3):
            async with ParanoUser(srv.url) as visitor:
                await visitor.start()
                status, body = await visitor.request("GET", "/")
                statuses.append(status)
        assert statuses == [200, 200, 429] and b"Too many new sessions from your address" in body

    run(scenario())


@pytest.mark.parametrize("per_minute", [0, 12], ids=["no-rate-limit", "rate-limit-of-the-burst"])
def test_a_burst_of_new_users_at_the_cap_is_served_in_turn(server, per_minute):
    """More new users at once than max_processes: no process is busy, so none is refused.
    A process given to a user is not ended to make room before it answered that user's
    first page (see admission.py): the others wait their turn, and each gets its page
    once a process before it has answered its own. Each front asks again meanwhile: those
    asks counted towards new_processes_per_minute, and a limit of as many as the burst
    refused (429) its fourth user. Only a process that starts counts now."""
    cap, burst = 3, 12
    options = {"new_processes_per_minute": per_minute, "max_processes_per_address": 0}
    srv = server(server_source("WebServerWS", max_processes=cap, spare_processes=0, **options))

    async def newcomer() -> httpx.Response:
        async with httpx.AsyncClient(base_url=srv.url, verify=TLS) as http:
            return await http.get("/")

    async def scenario() -> list[httpx.Response]:
        return await asyncio.gather(*(newcomer() for _ in range(burst)))

    pages = run(scenario())
    refused = [page.text for page in pages if page.status_code != 200]
    assert not refused, refused
    assert [count(page.text) for page in pages] == [0] * burst
    assert "all busy" not in srv.log and "new processes per minute" not in srv.log


def test_a_crowd_arriving_at_the_cap_gets_pages_or_clear_answers(server):
    """New users at max_processes make room from processes whose page never went live, the
    others' as much as a flood's (see admission.py): one whose process was taken between
    the fork-server's answer and the front's connection is given another, or a clear 503;
    never a 500. A page that loaded gets its click counted, or is told why not (its WebSocket
    closed with the reason, or refused before it opens when no process can be had)."""
    cap = 8
    srv = server(server_source("WebServerWS", max_processes=cap, spare_processes=cap, **ONE_ADDRESS))

    async def arrive(user: User) -> str:
        page = await user.page()
        if page.status_code != 200:
            assert page.status_code == 503 and page.headers["retry-after"], page.text
            return "refused"
        try:
            ws = await user.ws().__aenter__()
        except websockets.InvalidStatus as refused:  # no process for it any more, none to be had: refused before it opened
            answer = refused.response  # or its process made room for a later one before it answered the opening
            assert answer.status_code == 503 and answer.headers["Retry-After"], answer
            assert b"limit of live user sessions" in answer.body or b"make room for other users" in answer.body, answer.body
            return "refused"
        async with ws:
            await ws.recv()
            try:
                message = await click(ws, "inc")
            except websockets.ConnectionClosedOK as closed:  # its process made room for a later one
                assert "make room for other users" in closed.rcvd.reason
                return "told"
            if message.get("action") == "error":
                assert "make room for other users" in message["traceback"]
                return "told"
            assert count(message["updates"]["count"]) == 1
            return "counted"

    async def scenario() -> list[str]:
        crowd = [User(srv.url) for _ in range(3 * cap)]
        try:
            return await asyncio.gather(*(arrive(user) for user in crowd))
        finally:
            for user in crowd:
                await user.http.aclose()

    outcomes = run(scenario())
    assert "counted" in outcomes
    assert "Exception in ASGI application" not in srv.log and "Traceback" not in srv.log
