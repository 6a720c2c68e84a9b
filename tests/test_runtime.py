"""Protocol-level tests of the runtime against real servers (HTTP + WebSocket)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import psutil
import pytest
import websockets
from helpers import User, click, count, new_users_pids, pid, server_source


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_ws_counter_keeps_state_across_reload(server, loop):
    srv = server(server_source("WebServerWS"), "--loop", loop)

    async def scenario():
        async with User(srv.url) as user:
            first = await user.page()
            assert "Count: 0" in first.text
            async with user.ws() as ws:
                initial = json.loads(await ws.recv())
                assert initial["action"] == "update"
                for n in range(1, 4):
                    reply = await click(ws, "inc", callback_id=str(n))
                    assert reply["updates"]["count"] == f'<p id="count">Count: {n}</p>'
            again = await user.page()
            assert count(again.text) == 3
            assert pid(again.text) == pid(first.text)

    run(scenario())
    srv.wait_log(r"user process spawned: pid \d+, session \S{8}, app srv:App")
    srv.wait_log(r"user process reused: session \S{8}, app srv:App")


def test_http_only_server_uses_pure_http_mode(server):
    srv = server(server_source("WebServer"))

    async def scenario():
        async with User(srv.url) as user:
            page = await user.page()
            assert "window.use_pure_http=window.use_fallback=true" in page.text  # htag's client in pure-HTTP mode
            assert (await user.http.get("/stream")).status_code == 404
            response = await user.post_event("inc")
            assert response.status_code == 200
            payloads = [json.loads(p) for p in response.json()["payloads"]]
            assert payloads[-1]["updates"]["count"] == '<p id="count">Count: 1</p>'
            assert count((await user.page()).text) == 1

    run(scenario())


def test_sse_stream_and_background_post(server):
    srv = server(server_source("WebServerWS"))

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            async with user.http.stream("GET", "/stream") as stream:
                lines = stream.aiter_lines()
                first = await anext(lines)
                assert first.startswith("data: ") and json.loads(first[6:])["action"] == "update"
                assert (await user.post_event("inc", fallback=False)).json() == {"status": "ok"}
                async for line in lines:
                    if line.startswith("data: ") and "Count: 1" in line:
                        break

    run(scenario())


def test_an_sse_stream_whose_process_dies_is_told_why_in_the_stream(server):
    """A stream's start goes out at once (its events come later, see front.py): a process that
    dies once it began is told in the stream's own format, which htag's client shows."""
    srv = server(server_source("WebServerWS"))

    async def scenario():
        async with User(srv.url) as user:
            process = psutil.Process(pid((await user.page()).text))
            async with user.http.stream("GET", "/stream") as stream:
                assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.aiter_lines()
                assert (await anext(lines)).startswith("data: ")
                process.kill()
                told = [line async for line in lines if line.startswith("data: ")]
            assert len(told) == 1 and "stopped unexpectedly" in told[0], told
        assert "Traceback" not in srv.log

    run(scenario())


def test_users_get_own_process_tabs_share_one(server):
    srv = server(server_source("WebServerWS"))

    async def scenario():
        async with User(srv.url) as alice, User(srv.url) as bob:
            alice_pid = pid((await alice.page()).text)
            bob_pid = pid((await bob.page()).text)
            assert alice_pid != bob_pid
            async with alice.ws() as tab1, alice.ws() as tab2:
                await tab1.recv(), await tab2.recv()
                await click(tab1, "inc")
                reply = json.loads(await tab2.recv())  # the other tab is told too
                assert "Count: 1" in reply["updates"]["count"]
            assert pid((await alice.page()).text) == alice_pid
            assert count((await bob.page()).text) == 0

    run(scenario())


def test_a_user_process_holds_no_other_users_watchdog_page(server):
    """Each process shares one page with the fork-server (it publishes there when a
    handler runs): pages of the users forked before it must not stay mapped in it."""
    srv = server(server_source("WebServerWS"))
    for user_pid in run(new_users_pids(srv.url, 4)):
        maps = Path(f"/proc/{user_pid}/maps").read_text()
        assert maps.count("/memfd:htagweb-slot") == 1, maps


def test_simultaneous_first_requests_spawn_one_process(server):
    srv = server(server_source("WebServerWS"))

    async def scenario():
        async with User(srv.url) as user:
            assert (await user.http.get("/get")).json() == {}  # a cookie, no process yet
            pages = await asyncio.gather(*(user.page() for _ in range(20)))
            assert len({pid(p.text) for p in pages}) == 1

    run(scenario())
    assert len(re.findall(r"user process spawned", srv.log)) == 1


def test_session_shared_between_route_and_app(server):
    srv = server(server_source("WebServerWS"))

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            async with user.ws() as ws:
                await ws.recv()
                assert (await user.http.get("/set", params={"v": "r1"})).text == "ok"
                reply = await click(ws, "session")  # route's value, in the app's next event
                assert reply["result"] == {"from_route": "r1"}
                reply = await click(ws, "session", value="a1")
                assert reply["result"] == {"from_route": "r1", "from_app": "a1"}
                assert (await user.http.get("/get")).json() == {"from_route": "r1", "from_app": "a1"}
            await user.http.get("/set", params={"v": "r2"})
            await user.page()  # reload
            async with user.ws() as ws:
                await ws.recv()
                assert (await click(ws, "session"))["result"] == {"from_route": "r2", "from_app": "a1"}

    run(scenario())


def test_session_survives_in_pure_http_mode(server):
    srv = server(server_source("WebServer"))

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            await user.http.get("/set", params={"v": "r"})
            response = await user.post_event("session", value="a")
            payload = json.loads(response.json()["payloads"][-1])
            assert payload["result"] == {"from_route": "r", "from_app": "a"}
            assert (await user.http.get("/get")).json() == {"from_route": "r", "from_app": "a"}

    run(scenario())


def test_forged_cookie_gets_a_new_session(server):
    srv = server(server_source("WebServerWS"))

    async def scenario():
        async with User(srv.url) as victim, User(srv.url) as attacker:
            await victim.page()
            await victim.http.get("/set", params={"v": "secret"})
            signed = victim.http.cookies["htagweb_session"]
            sid, _, signature = signed.rpartition(".")
            forged = sid + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
            attacker.http.cookies.set("htagweb_session", forged)
            response = await attacker.http.get("/get")
            assert response.json() == {}
            assert "htagweb_session=" in response.headers["set-cookie"]
            assert response.cookies["htagweb_session"] != signed
            unsigned = User(srv.url)
            unsigned.http.cookies.set("htagweb_session", sid)
            assert (await unsigned.http.get("/get")).json() == {}
            await unsigned.http.aclose()

    run(scenario())
    srv.wait_log(r"WARNING.*forged or tampered session cookie")


def test_cookie_flags(server):
    plain = server(server_source("WebServerWS"))
    proxied = server(server_source("WebServerWS", trust_proxy_headers=True))

    async def scenario():
        async with User(plain.url) as user:
            cookie = (await user.http.get("/get", headers={"X-Forwarded-Proto": "https"})).headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
        async with User(proxied.url) as user:
            cookie = (await user.http.get("/get", headers={"X-Forwarded-Proto": "https"})).headers["set-cookie"]
            assert "Secure" in cookie
        async with User(proxied.url) as user:
            assert "Secure" not in (await user.http.get("/get")).headers["set-cookie"]

    run(scenario())


def test_ws_and_event_need_a_session(server):
    srv = server(server_source("WebServerWS"))

    async def scenario():
        async with User(srv.url) as user:
            response = await user.http.post("/event", content="{}")  # answered in htag's terms: its overlay shows it
            assert response.json()["status"] == "error"
            assert "reload the page" in json.loads(response.json()["payloads"][0])["traceback"]
        async with User(srv.url) as user:
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with user.ws():
                    pass
            assert refused.value.response.status_code == 403 and refused.value.response.body == b"No valid session: reload the page."

    run(scenario())


def test_inactivity_destroys_process_and_runs_on_destroy(server):
    srv = server(server_source("WebServerWS", timeout_inactivity=1))

    async def scenario():
        async with User(srv.url) as user:
            first = pid((await user.page()).text)
            srv.wait_log(r"user process expired: session \S{8} after 1s of inactivity")
            srv.wait_log(rf"user process ended: pid {first}")
            assert (srv.workdir / "destroyed.log").read_text().split() == [str(first)]
            again = await user.page()
            assert pid(again.text) != first and count(again.text) == 0

    run(scenario())


def test_hanging_handler_is_killed_others_unaffected(server):
    srv = server(server_source("WebServerWS", timeout_interaction=1))

    async def scenario():
        async with User(srv.url) as victim, User(srv.url) as other:
            victim_pid = pid((await victim.page()).text)
            await other.page()
            async with victim.ws() as ws, other.ws() as other_ws:
                await ws.recv(), await other_ws.recv()
                await ws.send(json.dumps({"id": "hang", "event": "click", "data": {"callback_id": "h"}}))
                for n in range(1, 6):  # the other user goes on meanwhile
                    assert f"Count: {n}" in (await click(other_ws, "inc", callback_id=str(n)))["updates"]["count"]
                message = json.loads(await ws.recv())
                assert message["action"] == "error"
                assert "took longer than 1s" in message["traceback"] and "Reload" in message["traceback"]
                await ws.wait_closed()
            again = await victim.page()
            assert pid(again.text) != victim_pid and count(again.text) == 0

    run(scenario())
    srv.wait_log(r"user process killed: pid \d+, session \S{8}, app srv:App \(interaction timeout")


def test_hanging_event_post_gets_readable_message(server):
    srv = server(server_source("WebServer", timeout_interaction=1))

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            response = await user.post_event("hang")
            payload = json.loads(response.json()["payloads"][0])
            assert payload["action"] == "error" and "took longer than 1s" in payload["traceback"]

    run(scenario())


def test_crashed_process_is_replaced(server):
    srv = server(server_source("WebServerWS"))

    async def scenario():
        async with User(srv.url) as user:
            first = pid((await user.page()).text)
            async with user.ws() as ws:
                await ws.recv()
                message = await click(ws, "crash")
                assert message["action"] == "error" and "stopped unexpectedly" in message["traceback"]
            again = await user.page()
            assert pid(again.text) != first

    run(scenario())
    srv.wait_log(r"user process crashed: pid \d+, session \S{8}, app srv:App, crashed \(exit code 3\)")


def test_bad_input(server):
    srv = server(server_source("WebServerWS", max_body_size=1000))

    async def scenario():
        async with User(srv.url) as user:
            assert (await user.http.get("/nowhere")).status_code == 404
            await user.page()
            big = await user.http.post("/event", content="x" * 5000, headers={"X-HTAG-TOKEN": user.csrf})
            assert big.status_code == 413
            garbage = await user.http.post("/event", content="not json", headers={"X-HTAG-TOKEN": user.csrf})
            assert garbage.status_code == 400 and "invalid htag event" in garbage.text
            wrong_token = await user.http.post("/event", content="{}", headers={"X-HTAG-TOKEN": "nope"})
            assert wrong_token.status_code == 403
            async with user.ws() as bad, user.ws() as good:
                await bad.recv(), await good.recv()
                await bad.send("\x00garbage{")
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await bad.recv()
                assert closed.value.rcvd.code == 1003
                await bad.close()
                assert "Count: 1" in (await click(good, "inc"))["updates"]["count"]

    run(scenario())


def test_json_nested_deeper_than_the_stack_is_invalid_input_not_a_stopped_app(server):
    """100 kB of ``[``: Python's JSON decoder raises RecursionError, not ValueError. It
    escaped as a failure of the app: the user read "The application stopped unexpectedly"
    and the log had a traceback, though the app ran on."""
    srv = server(server_source("WebServerWS"))
    deep = "[" * 100_000

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            answer = await user.http.post("/event", content=deep, headers={"X-HTAG-TOKEN": user.csrf})
            assert answer.status_code == 400 and "invalid htag event" in answer.text
            async with user.ws() as bad:
                await bad.recv()
                await bad.send(deep)
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await bad.recv()
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1003, "invalid htag frame")
            async with user.ws() as good:
                await good.recv()
                assert "Count: 1" in (await click(good, "inc"))["updates"]["count"]

    run(scenario())
    assert "Traceback" not in srv.log


@pytest.mark.parametrize("ws", ["auto", "websockets"])
def test_a_text_frame_that_is_not_utf8_closes_its_socket_without_a_traceback(server, ws):
    """uvicorn's default WebSocket protocol logs a traceback at ERROR for each text message that
    is not UTF-8 (then closes the socket 1007): any client could write as many into the log as
    it liked. It is a WARNING line, as any other invalid frame."""
    srv = server(server_source("WebServerWS"), "--ws", ws)

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            for _ in range(3):
                async with user.ws() as bad:
                    await bad.recv()
                    key = os.urandom(4)
                    payload = bytes(c ^ key[i % 4] for i, c in enumerate(b"\xdd\xff{"))
                    bad.transport.write(bytes([0x81, 0x80 | len(payload)]) + key + payload)  # a text frame, not UTF-8
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await bad.recv()
                    assert closed.value.rcvd.code == 1007  # invalid frame payload data
            async with user.ws() as good:
                await good.recv()
                assert "Count: 1" in (await click(good, "inc"))["updates"]["count"]

    run(scenario())
    assert "Traceback" not in srv.log and "ERROR" not in srv.log


BROKEN = "import htag\nraise RuntimeError('boom at import')\n"


@pytest.mark.parametrize("debug", [False, True])
def test_broken_app_module_gives_readable_page(server, debug):
    source = f"from htagweb import WebServerWS\napp = WebServerWS('broken:App', runtime_dir=RUNTIME_DIR, debug={debug})\n"
    srv = server(source, files={"broken.py": BROKEN})

    async def scenario():
        async with User(srv.url) as user:
            response = await user.page()
            assert response.status_code == 500
            assert "could not be loaded" in response.text
            assert ("boom at import" in response.text) is debug
            assert ("Traceback" in response.text) is debug

    run(scenario())


def test_app_forms(server):
    files = {
        "component.py": "from htag import Tag\nclass App(Tag.div):\n    def init(self):\n        self.add('plain component')\n",
        "modapp.py": "from htag import Tag\nclass App(Tag.App):\n    def init(self):\n        Tag.p('module app')\n",
    }
    source = """
    import component, modapp
    from htagweb import WebServerWS
    app = WebServerWS(component.App, runtime_dir=RUNTIME_DIR)
    app.add_app("/str", "modapp:App")
    app.add_app("/mod", modapp)
    """
    srv = server(source, files=files)

    async def scenario():
        async with User(srv.url) as user:
            assert "plain component" in (await user.page("/")).text
            assert "module app" in (await user.page("/str")).text
            assert "module app" in (await user.page("/mod")).text
            async with user.ws("/str/ws") as ws:
                initial = json.loads(await ws.recv())
                assert "module app" in next(iter(initial["updates"].values()))

    run(scenario())
    assert len(re.findall(r"user process spawned", srv.log)) == 3  # one process per (user, app)


def test_stop_ends_processes_and_runs_on_destroy(server):
    srv = server(server_source("WebServerWS"))
    pids = run(new_users_pids(srv.url, 3))
    srv.stop()  # asserts no process and no socket left
    assert sorted(map(int, (srv.workdir / "destroyed.log").read_text().split())) == sorted(pids)


def test_http_only_answers_the_first_click_in_its_response(server):
    srv = server(server_source("WebServer"))

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            response = await user.post_event("inc", fallback=False)  # htag's client before it switched to pure HTTP
            payloads = [json.loads(p) for p in response.json()["payloads"]]
            assert payloads[-1]["updates"]["count"] == '<p id="count">Count: 1</p>'

    run(scenario())


def test_health_and_metrics_count_without_naming_sessions(server):
    srv = server(server_source("WebServerWS", metrics=True, timeout_interaction=1, spare_processes=3))
    plain = server(server_source("WebServerWS"))

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            async with user.ws() as ws:
                await ws.recv()
                message = await click(ws, "hang")
                assert message["action"] == "error"
            health = (await user.http.get("/_htagweb/health")).json()
            assert health["status"] == "ok"
            metrics = (await user.http.get("/_htagweb/metrics")).text
            assert "htagweb_spawns_total 1" in metrics
            assert "htagweb_interaction_timeouts_total 1" in metrics and "htagweb_kills_total 1" in metrics
            assert "htagweb_bridge_errors_total 1" in metrics
            assert user.http.cookies["htagweb_session"].split(".")[0][:8] not in metrics
            for _ in range(200):  # the pool fills up once no arrival is under way
                if "htagweb_spare_processes 3\n" in metrics:
                    break
                await asyncio.sleep(0.1)
                metrics = (await user.http.get("/_htagweb/metrics")).text
            assert "htagweb_spare_processes 3\n" in metrics
        async with User(plain.url) as user:
            assert (await user.http.get("/_htagweb/metrics")).status_code == 404
            assert (await user.http.get("/_htagweb/health")).json() == {"status": "ok", "user_processes": 0}

    run(scenario())


def test_memory_store_shares_the_session_in_one_worker(server):
    srv = server(server_source("WebServerWS", session_store="memory"))

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            await user.http.get("/set", params={"v": "in-memory"})
            async with user.ws() as ws:
                await ws.recv()
                assert (await click(ws, "session", value="app"))["result"] == {"from_route": "in-memory", "from_app": "app"}
            assert (await user.http.get("/get")).json() == {"from_route": "in-memory", "from_app": "app"}

    run(scenario())


def test_runtime_directory_must_be_private(tmp_path):
    from htagweb.runtime import Runtime, RuntimeDirError

    with pytest.raises(RuntimeDirError, match="too long for Unix sockets"):
        Runtime(tmp_path / ("x" * 100))
    short = Path(tempfile.mkdtemp(prefix="hwt-"))
    try:
        shared = short / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        with pytest.raises(RuntimeDirError, match="must not be accessible to other users"):
            Runtime(shared)
        private = Runtime(short / "private")
        assert oct(private.path.stat().st_mode & 0o777) == "0o700" and oct(private.users_dir.stat().st_mode & 0o777) == "0o700"
        assert oct((private.path / "secret.key").stat().st_mode & 0o777) == "0o600"
        assert private.process_key("sid", "app") != private.process_key("sid2", "app")
    finally:
        shutil.rmtree(short)
