"""examples/oauth.py's whole login flow against an OpenID provider started on loopback.

The provider is small but real: it issues authorization codes, exchanges them
for access tokens and RS256 ID tokens signed with a key it publishes as JWKS
(authlib's jose), and serves the discovery document authlib's client reads.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from helpers import User, click

ROOT = Path(__file__).resolve().parent.parent

PROVIDER = '''
import secrets, time
from urllib.parse import parse_qs
from authlib.jose import JsonWebKey, jwt
from starlette.applications import Starlette
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

KEY = JsonWebKey.generate_key("RSA", 2048, is_private=True)
KEY_ID = "test-key"
CODES = {}
USER = {"sub": "alice-42", "name": "Alice Liddell", "email": "alice@example.test"}


def base(request):
    return str(request.base_url).rstrip("/")


async def discovery(request):
    b = base(request)
    return JSONResponse({
        "issuer": b, "authorization_endpoint": b + "/authorize", "token_endpoint": b + "/token",
        "jwks_uri": b + "/jwks", "userinfo_endpoint": b + "/userinfo",
        "response_types_supported": ["code"], "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    })


async def authorize(request):  # the user consents at once
    q = request.query_params
    assert q["client_id"] == "htagweb-test" and q["response_type"] == "code"
    code = secrets.token_urlsafe(16)
    CODES[code] = {"nonce": q.get("nonce"), "redirect_uri": q["redirect_uri"]}
    return RedirectResponse(f"{q['redirect_uri']}?code={code}&state={q['state']}", status_code=302)


async def token(request):
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
    grant = CODES.pop(form["code"])
    assert form["redirect_uri"] == grant["redirect_uri"]
    now = int(time.time())
    claims = {**USER, "iss": base(request), "aud": "htagweb-test", "iat": now, "exp": now + 300, "nonce": grant["nonce"]}
    id_token = jwt.encode({"alg": "RS256", "kid": KEY_ID}, claims, KEY).decode()
    return JSONResponse({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300, "id_token": id_token})


async def jwks(request):
    public = KEY.as_dict(is_private=False)
    public["kid"] = KEY_ID
    return JSONResponse({"keys": [public]})


async def userinfo(request):
    return JSONResponse(USER)


app = Starlette(routes=[
    Route("/.well-known/openid-configuration", discovery), Route("/authorize", authorize),
    Route("/token", token, methods=["POST"]), Route("/jwks", jwks), Route("/userinfo", userinfo),
])
'''


def test_login_flow_shares_the_session_with_the_app(server, monkeypatch):
    provider = server(PROVIDER)
    monkeypatch.setenv("OIDC_METADATA_URL", provider.url + "/.well-known/openid-configuration")
    monkeypatch.setenv("OIDC_CLIENT_ID", "htagweb-test")
    monkeypatch.setenv("OIDC_CLIENT_SECRET", "secret")
    example = (ROOT / "examples" / "oauth.py").read_text()
    srv = server(example.replace("app = WebServerWS(App, runtime_dir=os.environ.get(\"HTAGWEB_RUNTIME_DIR\"))",
                                 "app = WebServerWS(App, runtime_dir=RUNTIME_DIR)"))  # fmt: skip

    async def scenario():
        async with User(srv.url) as user:
            assert "Not logged in" in (await user.page()).text
            to_provider = await user.http.get("/login")
            assert to_provider.status_code == 302 and to_provider.headers["location"].startswith(provider.url + "/authorize?")
            async with User(provider.url) as browser_at_provider:
                back = await browser_at_provider.http.get(to_provider.headers["location"])
            assert back.status_code == 302 and back.headers["location"].startswith(srv.url + "/auth?code=")
            before_login = user.http.cookies["htagweb_session"]
            home = await user.http.get(back.headers["location"].removeprefix(srv.url))
            assert home.status_code == 303 and home.headers["location"] == "/"
            assert user.http.cookies["htagweb_session"] != before_login  # rotated at login
            page = await user.page()
            assert re.search(r'<p id="who">Logged in as Alice Liddell</p>', page.text)  # the app reads what the route wrote
            async with user.ws() as ws:
                await ws.recv()
            assert (await user.http.get("/logout")).status_code == 303
            async with user.ws() as ws:  # the app's next event sees the logout
                await ws.recv()
                reply = await click(ws, "refresh")
                assert "Not logged in" in reply["updates"]["who"]

    asyncio.run(scenario())
