"""The examples the README runs, served for real."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from helpers import User, click

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def source(name: str) -> str:
    """An example with its server given the test's runtime directory."""
    text = (EXAMPLES / name).read_text()
    return text.replace("app = WebServerWS(Home)", "app = WebServerWS(Home, runtime_dir=RUNTIME_DIR)")


def test_multi_app_example(server):
    srv = server(source("multi.py"), files={"counter.py": (EXAMPLES / "counter.py").read_text()})

    async def scenario():
        async with User(srv.url) as user:
            assert "Hello stranger" in (await user.page("/")).text
            before_login = user.http.cookies["htagweb_session"]
            assert (await user.http.get("/login", params={"name": "Ada"})).status_code == 303
            assert user.http.cookies["htagweb_session"] != before_login  # rotated at login
            assert "Hello Ada" in (await user.page("/")).text  # the app reads what the route wrote
            async with user.ws("/ws") as ws:
                await ws.recv()
                assert "Hello stranger" in (await click(ws, "forget"))["updates"]["hello"]
            assert (await user.http.get("/whoami")).json() == {"name": None}  # and the route sees the app's change
            counter = await user.page("/counter")
            assert "Count: 0" in counter.text
            async with user.ws("/counter/ws") as ws:
                await ws.recv()
                assert "Count: 1" in json.dumps((await click(ws, "inc"))["updates"])

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "name, factory, expected", [("hello.py", "WebServer", "Hello from htagweb"), ("counter.py", "WebServerWS", "Count: 0")]
)
def test_hello_and_counter_examples(server, name, factory, expected):
    text = (EXAMPLES / name).read_text().split('if __name__ == "__main__":')[0]
    srv = server(text + f"\nfrom htagweb import {factory}\napp = {factory}(App, runtime_dir=RUNTIME_DIR)\n")

    async def scenario():
        async with User(srv.url) as user:
            assert expected in (await user.page("/")).text

    asyncio.run(scenario())
