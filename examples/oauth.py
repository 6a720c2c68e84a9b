"""OAuth2 / OpenID Connect login (authlib) beside an htag app, sharing the session.

    pip install authlib httpx
    OIDC_METADATA_URL=https://provider/.well-known/openid-configuration \\
    OIDC_CLIENT_ID=... OIDC_CLIENT_SECRET=... uvicorn --app-dir examples oauth:app

``/login`` sends the browser to the provider, ``/auth`` receives it back and puts
the user in the session, ``/logout`` removes it: plain Starlette routes using
``request.session``. The htag app on ``/`` reads the same session.
"""

import os

from authlib.integrations.starlette_client import OAuth
from htag import State, Tag
from starlette.requests import Request
from starlette.responses import RedirectResponse

from htagweb import WebServerWS

oauth = OAuth()
oauth.register(
    "provider",
    server_metadata_url=os.environ["OIDC_METADATA_URL"],
    client_id=os.environ["OIDC_CLIENT_ID"],
    client_secret=os.environ["OIDC_CLIENT_SECRET"],
    client_kwargs={"scope": "openid profile email"},
)


class App(Tag.App):
    def init(self) -> None:
        self.user = State(self.session.get("user"))
        Tag.h1("htagweb + OAuth2")
        Tag.p(lambda: f"Logged in as {self.user.value['name']}" if self.user.value else "Not logged in", _id="who")
        Tag.a("log in", _href="/login", _id="login")
        Tag.a(" · log out", _href="/logout", _id="logout")
        Tag.button("Refresh", _id="refresh", _onclick=self.refresh)

    def on_mount(self) -> None:  # each page load, after a login or logout round trip
        self.refresh()

    def refresh(self, event=None) -> None:
        self.user.value = self.session.get("user")


async def login(request: Request):
    return await oauth.provider.authorize_redirect(request, str(request.url_for("auth")))


async def auth(request: Request):
    token = await oauth.provider.authorize_access_token(request)
    userinfo = token["userinfo"]
    request.session["user"] = {"sub": userinfo["sub"], "name": userinfo.get("name", userinfo["sub"])}
    request.session.rotate()  # a session id planted before the login grants nothing after it
    return RedirectResponse("/", status_code=303)


async def logout(request: Request):
    request.session.pop("user", None)
    return RedirectResponse("/", status_code=303)


app = WebServerWS(App, runtime_dir=os.environ.get("HTAGWEB_RUNTIME_DIR"))
app.add_route("/login", login)
app.add_route("/auth", auth, name="auth")
app.add_route("/logout", logout)

if __name__ == "__main__":
    app.run()
