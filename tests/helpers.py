"""A test app exercising every runtime path, and a small protocol-level client."""

from __future__ import annotations

import json
import re
import ssl
from typing import Any

import httpx
import psutil
import websockets

APP = '''
import asyncio, json, os, time
from pathlib import Path
from htag import Tag, State
from starlette.responses import JSONResponse, PlainTextResponse
from htagweb import WebServer, WebServerWS

DESTROYED = Path(__file__).with_name("destroyed.log")


class App(Tag.App):
    def init(self):
        self.count = State(0)
        Tag.p(f"pid={os.getpid()}", _id="pid")
        Tag.p(lambda: f"Count: {self.count.value}", _id="count")
        Tag.button("+1", _id="inc", _onclick=self.inc)
        Tag.button("hang", _id="hang", _onclick=self.hang)
        Tag.button("crash", _id="crash", _onclick=self.crash)
        Tag.button("bail", _id="bail", _onclick=self.bail)
        Tag.button("session", _id="session", _onclick=self.session_event)
        Tag.button("hog", _id="hog", _onclick=self.hog)
        Tag.button("files", _id="files", _onclick=self.files)

    def inc(self, event):
        self.count.value += 1

    def hang(self, event):
        time.sleep(3600)

    def crash(self, event):
        os._exit(3)

    def bail(self, event):
        raise SystemExit("an app that gives up: not caught by htag, it ends the process' event loop")

    def hog(self, event):
        self.memory = bytearray(300 * 2**20)  # zero-filled: resident

    def files(self, event):
        self.opened = []
        try:
            for _ in range(10000):
                self.opened.append(open(os.devnull))
        except OSError:
            pass

    def session_event(self, event):
        value = event.value.get("value") if isinstance(event.value, dict) else event.value
        if value:
            self.session["from_app"] = value
        return dict(self.session)

    def on_destroy(self):
        with DESTROYED.open("a") as f:
            f.write(f"{os.getpid()}\\n")


async def set_value(request):
    request.session["from_route"] = request.query_params["v"]
    return PlainTextResponse("ok")


async def get_values(request):
    return JSONResponse(dict(request.session))
'''


def server_source(factory: str = "WebServerWS", **options: Any) -> str:
    opts = "".join(f", {k}={v!r}" for k, v in options.items())
    return APP + f'''
app = {factory}(App, runtime_dir=RUNTIME_DIR{opts})
app.add_route("/set", set_value)
app.add_route("/get", get_values)
'''


def count(text: str) -> int:
    return int(re.search(r"Count: (\d+)", text).group(1))


def pid(text: str) -> int:
    return int(re.search(r"pid=(\d+)", text).group(1))


#: one TLS context for every test client (the servers speak plain HTTP): left to itself,
#: httpx loads the CA bundle again for each client, some 40 ms of CPU
TLS = ssl.create_default_context()


class User:
    """One browser: a cookie jar, the page, WebSockets and event POSTs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=30, verify=TLS)
        self.csrf = ""

    async def __aenter__(self) -> User:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.http.aclose()

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())

    async def page(self, path: str = "/") -> httpx.Response:
        response = await self.http.get(path)
        match = re.search(r'HTAG_CSRF = "([0-9a-f]+)"', response.text)
        if match:
            self.csrf = match.group(1)
        return response

    def ws(self, path: str = "/ws") -> Any:
        ws_url = self.url.replace("http://", "ws://") + path
        return websockets.connect(ws_url, additional_headers={"Cookie": self.cookie_header}, max_size=None)

    async def post_event(self, tag_id: str, value: Any = None, fallback: bool = True, path: str = "/event") -> httpx.Response:
        data: dict[str, Any] = {"callback_id": "cb"}
        if value is not None:
            data["value"] = value
        msg = {"id": tag_id, "event": "click", "data": data, "fallback": fallback}
        return await self.http.post(path, content=json.dumps(msg), headers={"X-HTAG-TOKEN": self.csrf})


async def new_users_pids(url: str, n: int) -> list[int]:
    """``n`` new users, one after the other, each loading the page: their processes' ids."""
    pids = []
    for _ in range(n):
        async with User(url) as user:
            pids.append(pid((await user.page()).text))
    return pids


async def click(ws: Any, tag_id: str, value: Any = None, callback_id: str = "cb") -> dict[str, Any]:
    """Send an htag click; return the reply that answers it."""
    data: dict[str, Any] = {"callback_id": callback_id}
    if value is not None:
        data["value"] = value
    await ws.send(json.dumps({"id": tag_id, "event": "click", "data": data}))
    while True:
        message = json.loads(await ws.recv())
        if message.get("callback_id") == callback_id or message.get("action") == "error":
            return message


def title(process: psutil.Process) -> str:
    """What ps shows (psutil cuts a title at the NUL bytes that pad it)."""
    return " ".join(part for part in process.cmdline() if part)


def forked_by(forkserver: psutil.Process) -> list[psutil.Process]:
    """The processes a fork-server has forked (spares and user processes): its zygotes' children."""
    processes = []
    for process in forkserver.children(recursive=True):
        try:
            if not title(process).startswith("htagweb zygote ") and title(process.parent()).startswith("htagweb zygote "):
                processes.append(process)
        except (psutil.NoSuchProcess, AttributeError):  # gone meanwhile
            pass
    return processes


def alive(pids) -> set[int]:
    """Those of ``pids`` still running: neither gone nor zombies (each may go while it is looked at)."""
    found = set()
    for p in pids:
        try:
            if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                found.add(p)
        except psutil.NoSuchProcess:
            pass
    return found
