"""Several htag apps and plain Starlette routes in one server, sharing the session.

    python examples/multi.py          # or: uvicorn --app-dir examples multi:app

- ``/``         a counter that remembers, in the session, who you said you are
- ``/counter``  the counter of examples/counter.py, as a second app
- ``/login?name=...`` and ``/whoami``: Starlette routes using ``request.session``
"""

from htag import State, Tag
from starlette.responses import JSONResponse, RedirectResponse

from htagweb import WebServerWS


class Home(Tag.App):
    def init(self) -> None:
        self.name = State(self.session.get("name", "stranger"))
        Tag.h1(lambda: f"Hello {self.name.value}", _id="hello")
        Tag.p("Sign in with /login?name=you (a plain Starlette route); this app reads the same session.")
        Tag.button("Who am I?", _id="refresh", _onclick=self.refresh)
        Tag.button("Forget me", _id="forget", _onclick=self.forget)
        Tag.a("the counter app", _href="/counter")

    def on_mount(self) -> None:  # each page load: the session may have changed meanwhile
        self.refresh()

    def refresh(self, event=None) -> None:
        self.name.value = self.session.get("name", "stranger")

    def forget(self, event) -> None:
        self.session.pop("name", None)  # seen by /whoami on its next request
        self.name.value = "stranger"


async def login(request):
    request.session["name"] = request.query_params.get("name", "anonymous")
    request.session.rotate()  # a new session id at login: one planted before grants nothing
    return RedirectResponse("/", status_code=303)


async def whoami(request):
    return JSONResponse({"name": request.session.get("name")})


app = WebServerWS(Home)
app.add_app("/counter", "counter:App")
app.add_route("/login", login)
app.add_route("/whoami", whoami)

if __name__ == "__main__":
    app.run()
