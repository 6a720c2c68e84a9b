"""Session lifetime and fixation: a rolling, timestamped cookie, and ``rotate()``
(new id, same data, old id dead) from a route and from the app."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from helpers import APP, User, click, count, pid
from itsdangerous import TimestampSigner

SECRET = "a-test-secret"
LOGIN = APP.replace(
    '''        Tag.button("files", _id="files", _onclick=self.files)''',
    '''        Tag.button("files", _id="files", _onclick=self.files)
        Tag.button("login", _id="login", _onclick=self.login)''',
).replace(
    "    def hog(self, event):",
    '''    def login(self, event):
        self.session["user"] = "ada (app)"
        self.session.rotate()
        return True

    def hog(self, event):''',
) + '''

async def login(request):
    request.session["user"] = "ada (route)"
    request.session.rotate()
    return PlainTextResponse("welcome")
'''


def login_source(factory: str = "WebServerWS", **options) -> str:
    opts = "".join(f", {k}={v!r}" for k, v in options.items())
    return LOGIN + f'''
app = {factory}(App, runtime_dir=RUNTIME_DIR, secret={SECRET!r}{opts})
app.add_route("/set", set_value)
app.add_route("/get", get_values)
app.add_route("/login", login)
'''


def cookie_of(response) -> str:
    return response.headers["set-cookie"].split(";")[0].split("=", 1)[1]


def test_cookie_rolls_on_activity_and_a_stale_one_is_refused(server):
    srv = server(login_source(session_max_age=3))

    async def scenario():
        async with User(srv.url) as user:
            first = await user.http.get("/set", params={"v": "kept"})
            assert first.headers["vary"] == "Cookie"
            issued = cookie_of(first)
            for _ in range(5):  # active for longer than the maximum age: the cookie is renewed on the way
                await asyncio.sleep(1)
                response = await user.http.get("/get")
                assert response.json() == {"from_route": "kept"} and response.headers["vary"] == "Cookie"
            assert user.http.cookies["htagweb_session"] != issued
            page = await user.page()
            assert "Cookie" in page.headers["vary"]
        async with User(srv.url) as stale:  # the first cookie, older than the maximum age
            stale.http.cookies.set("htagweb_session", issued)
            assert (await stale.http.get("/get")).json() == {}
        ancient = TimestampSigner(SECRET, salt="htagweb.session").sign(issued.split(".")[0]).decode()
        async with User(srv.url) as forged_time:  # a valid signature whose time is old: refused too
            forged_time.http.cookies.set("htagweb_session", ancient.replace(ancient.split(".")[1], "AAAAAA"))
            assert (await forged_time.http.get("/get")).json() == {}

    asyncio.run(scenario())
    srv.wait_log("expired session cookie")


def test_secure_cookie_takes_the_host_prefix(server):
    srv = server(login_source(trust_proxy_headers=True))
    lax = server(login_source(cookie_samesite="none"))

    async def scenario():
        async with User(srv.url) as user:
            response = await user.http.get("/set", params={"v": "tls"}, headers={"X-Forwarded-Proto": "https"})
            cookie = response.headers["set-cookie"]
            assert cookie.startswith("__Host-htagweb_session=") and "; Secure" in cookie and "; Path=/" in cookie
            assert "domain" not in cookie.lower() and "SameSite=Lax" in cookie
            user.http.cookies.clear()
            user.http.cookies.set("__Host-htagweb_session", cookie_of(response))
            assert (await user.http.get("/get", headers={"X-Forwarded-Proto": "https"})).json() == {"from_route": "tls"}
        async with User(lax.url) as user:
            cookie = (await user.http.get("/get")).headers["set-cookie"]
            assert cookie.startswith("__Host-htagweb_session=") and "SameSite=None" in cookie and "; Secure" in cookie

    asyncio.run(scenario())


def test_rotate_from_a_route_defeats_a_planted_cookie(server):
    srv = server(login_source())

    async def scenario():
        async with User(srv.url) as attacker, User(srv.url) as victim:
            await attacker.http.get("/get")
            planted = attacker.http.cookies["htagweb_session"]
            victim.http.cookies.set("htagweb_session", planted)  # set by a plain-HTTP attacker or a sibling subdomain
            before = await victim.page()
            async with victim.ws() as ws:
                await ws.recv()
                await click(ws, "inc")
            response = await victim.http.get("/login")
            assert response.text == "welcome" and cookie_of(response) != planted
            assert (await victim.http.get("/get")).json() == {"user": "ada (route)"}
            after = await victim.page()  # the victim keeps their process, moved to the new id
            assert pid(after.text) == pid(before.text) and count(after.text) == 1
            assert (await attacker.http.get("/get")).json() == {}  # the planted id is dead
            assert pid((await attacker.page()).text) != pid(before.text)

    asyncio.run(scenario())


def test_rotate_from_the_app_in_pure_http_mode(server):
    srv = server(login_source("WebServer"))

    async def scenario():
        async with User(srv.url) as user:
            first = await user.page()
            planted = user.http.cookies["htagweb_session"]
            response = await user.post_event("login")
            assert json.loads(response.json()["payloads"][-1])["result"] is True
            assert cookie_of(response) != planted
            assert (await user.http.get("/get")).json() == {"user": "ada (app)"}
            assert pid((await user.page()).text) == pid(first.text)
        async with User(srv.url) as attacker:
            attacker.http.cookies.set("htagweb_session", planted)
            assert (await attacker.http.get("/get")).json() == {}

    asyncio.run(scenario())


def test_rotate_from_the_app_over_a_websocket_in_a_browser(server):
    from chromium import chromium
    from playwright.sync_api import expect

    srv = server(login_source())
    with chromium() as browser:
        context = browser.new_context()
        page = context.new_page()
        page.goto(srv.url + "/")
        expect(page.locator("#count")).to_have_text("Count: 0")
        planted = next(c["value"] for c in context.cookies() if c["name"] == "htagweb_session")
        pid_before = page.inner_text("#pid")
        page.click("#inc")
        expect(page.locator("#count")).to_have_text("Count: 1")
        assert page.evaluate("window.ws && window.ws.readyState") == 1
        page.click("#login")
        deadline = time.monotonic() + 10
        while next(c["value"] for c in context.cookies() if c["name"] == "htagweb_session") == planted:
            assert time.monotonic() < deadline, "the browser never got the new cookie"
            page.wait_for_timeout(50)
        page.goto(srv.url + "/get")
        assert json.loads(page.inner_text("body")) == {"user": "ada (app)"}
        page.goto(srv.url + "/")
        expect(page.locator("#count")).to_have_text("Count: 1")
        assert page.inner_text("#pid") == pid_before
        context.close()

    async def attacker():
        async with User(srv.url) as user:
            user.http.cookies.set("htagweb_session", planted)
            assert (await user.http.get("/get")).json() == {}

    asyncio.run(attacker())



def test_a_rotation_ticket_serves_only_the_holder_of_the_old_cookie(server):
    srv = server(login_source())
    tickets = TimestampSigner(SECRET, salt="htagweb.rotation")

    async def scenario():
        async with User(srv.url) as user, User(srv.url) as other:
            await user.http.get("/get")
            await other.http.get("/get")
            old = user.http.cookies["htagweb_session"].split(".")[0]
            ticket = tickets.sign(f"{old} brand-new-id").decode()
            assert (await other.http.post("/_htagweb/session", headers={"X-Htagweb-Rotation": ticket})).status_code == 403
            forged = ticket[:-2] + ("AA" if not ticket.endswith("AA") else "BB")
            assert (await user.http.post("/_htagweb/session", headers={"X-Htagweb-Rotation": forged})).status_code == 403
            assert (await user.http.get("/_htagweb/session", headers={"X-Htagweb-Rotation": ticket})).status_code == 403
            response = await user.http.post("/_htagweb/session", headers={"X-Htagweb-Rotation": ticket})
            assert response.status_code == 204 and user.http.cookies["htagweb_session"].startswith("brand-new-id.")

    asyncio.run(scenario())


def test_rotate_in_parano_mode_hands_the_page_a_new_credential(server):
    from paranoclient import ParanoUser

    srv = server(login_source(parano=True))

    async def scenario():
        async with ParanoUser(srv.url) as user, ParanoUser(srv.url) as copier:
            await user.connect()
            assert (await user.request("GET", "/set?v=before"))[0] == 200
            old = user.credential
            status, body = await user.request("GET", "/login")
            assert (status, body) == (200, b"welcome") and user.credential != old
            status, body = await user.request("GET", "/get")
            assert json.loads(body) == {"from_route": "before", "user": "ada (route)"}
            await copier.start()
            copier.credential = old  # a credential copied before the login grants nothing after it
            status, body = await copier.request("GET", "/get")
            assert status != 200 or json.loads(body) == {}

    asyncio.run(scenario())


def test_rotate_from_the_app_over_sse_hands_the_page_a_ticket(server):
    srv = server(login_source())

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            planted = user.http.cookies["htagweb_session"]
            async with user.http.stream("GET", "/stream") as stream:
                lines = stream.aiter_lines()
                await anext(lines)  # the initial payload
                assert (await user.post_event("login", fallback=False)).json() == {"status": "ok"}
                async for line in lines:
                    if line.startswith("data: ") and "/_htagweb/session" in line:
                        script = json.loads(line[6:])["js"][0]
                        break
            ticket = script.split('"X-Htagweb-Rotation": "')[1].split('"')[0]
            response = await user.http.post("/_htagweb/session", headers={"X-Htagweb-Rotation": ticket})
            assert response.status_code == 204 and user.http.cookies["htagweb_session"] != planted
            assert (await user.http.get("/get")).json() == {"user": "ada (app)"}
        async with User(srv.url) as attacker:
            attacker.http.cookies.set("htagweb_session", planted)
            assert (await attacker.http.get("/get")).json() == {}

    asyncio.run(scenario())


def test_a_wrong_samesite_or_origin_fails_at_construction(tmp_path):
    from htag import Tag

    from htagweb import WebServer

    class App(Tag.App):
        pass

    with pytest.raises(ValueError, match="cookie_samesite must be 'lax', 'strict' or 'none'"):
        WebServer(App, runtime_dir=str(tmp_path / "a"), cookie_samesite="sometimes")
    with pytest.raises(ValueError, match="not an origin"):
        WebServer(App, runtime_dir=str(tmp_path / "b"), allowed_origins=["partner.example"])
