"""The Origin check of live connections, at the protocol level and as pure logic
(the browser test is in test_browser_hardening.py)."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from helpers import User, click, count, pid, server_source

from htagweb.origin import OriginPolicy, normalize


def scope(origin: str | None, host: str = "localhost:8000", **extra: str) -> dict:
    headers = [(b"host", host.encode())] + [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "websocket", "headers": headers}


def test_origin_policy():
    policy = OriginPolicy(["https://Partner.example:8443/"])
    assert policy.allows(scope("http://localhost:8000"))
    assert policy.allows(scope(None))  # a program, not a page
    assert policy.allows(scope("https://partner.example:8443"))
    for refused in ("http://localhost:9999", "http://evil.localhost:8000", "null", "https://partner.example", "garbage"):
        assert not policy.allows(scope(refused)), refused
    assert policy.allows(scope("https://app.example", host="app.example"))  # behind a TLS proxy: the scheme is not compared
    assert policy.allows(scope("http://app.example", host="app.example:80"))
    assert not policy.allows(scope("https://app.example", host="internal:8000", x_forwarded_host="app.example"))
    assert OriginPolicy(trust_proxy_headers=True).allows(scope("https://app.example", host="internal:8000", x_forwarded_host="app.example"))
    assert normalize("HTTPS://Example.COM:443") == "https://example.com" and normalize("http://[::1]:8000") == "http://[::1]:8000"
    with pytest.raises(ValueError, match="not an origin"):
        OriginPolicy(["partner.example"])


def test_websocket_and_sse_refuse_another_sites_page(server):
    srv = server(server_source("WebServerWS"))
    own = f"http://127.0.0.1:{srv.port}"

    async def scenario():
        async with User(srv.url) as user:
            await user.page()
            for origin in (f"http://127.0.0.1:{srv.port + 1}", "null"):
                with pytest.raises(websockets.InvalidStatus) as refused:
                    async with websockets.connect(srv.url.replace("http", "ws") + "/ws", origin=origin,
                                                  additional_headers={"Cookie": user.cookie_header}):
                        pass
                assert refused.value.response.status_code == 403 and b"not allowed to connect" in refused.value.response.body
                stream = await user.http.get("/stream", headers={"Origin": origin})
                assert stream.status_code == 403 and "not allowed to connect" in stream.text
            async with websockets.connect(srv.url.replace("http", "ws") + "/ws", origin=own,
                                          additional_headers={"Cookie": user.cookie_header}) as ws:
                assert '"action": "update"' in await ws.recv()
            async with user.http.stream("GET", "/stream", headers={"Origin": own}) as stream:
                assert stream.status_code == 200 and (await anext(stream.aiter_lines())).startswith("data: ")

    asyncio.run(scenario())


def test_reset_navigation_policy():
    policy = OriginPolicy(["https://partner.example"])
    own = "http://localhost:8000/"
    assert policy.allows_navigation(scope(None, sec_fetch_site="same-origin", referer=own))
    assert policy.allows_navigation(scope(None, sec_fetch_site="none"))  # typed or bookmarked
    assert not policy.allows_navigation(scope(None, sec_fetch_site="same-site", referer="http://localhost:9999/x"))
    assert not policy.allows_navigation(scope(None, sec_fetch_site="cross-site"))
    assert policy.allows_navigation(scope(None, sec_fetch_site="cross-site", referer="https://partner.example/page"))
    assert policy.allows_navigation(scope(None))  # a program
    assert policy.allows_navigation(scope(None, referer=own))  # a browser without Sec-Fetch-Site
    assert not policy.allows_navigation(scope(None, referer="http://evil.example/"))


def test_a_cross_site_reset_serves_the_users_app(server):
    srv = server(server_source("WebServerWS"))

    async def scenario():
        async with User(srv.url) as user:
            first = await user.page()
            cross = await user.http.get("/?%6E=1", headers={"Sec-Fetch-Site": "cross-site"})
            assert pid(cross.text) == pid(first.text)
            async with user.ws() as ws:
                await ws.recv()
                await click(ws, "inc")
            assert count((await user.http.get("/?n=", headers={"Sec-Fetch-Site": "same-site"})).text) == 1
            assert count((await user.http.get("/?n=1", headers={"Sec-Fetch-Site": "same-origin"})).text) == 0

    asyncio.run(scenario())
