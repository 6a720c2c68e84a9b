"""Tracebacks tell what went wrong in the app, and only that."""

from __future__ import annotations

import asyncio

from helpers import User, click

APP = """
from htag import Tag
from htagweb import WebServerWS


class Failing(Tag.App):
    def init(self):
        raise ValueError("init went wrong")


class Clicky(Tag.App):
    def init(self):
        Tag.button("boom", _id="boom", _onclick=self.boom)

    def boom(self, event):
        raise KeyError("handler went wrong")


app = WebServerWS(Failing, runtime_dir=RUNTIME_DIR, debug=True)
app.add_app("/clicky", Clicky)
"""


def test_error_pages_and_overlay_carry_no_unrelated_exception(server):
    srv = server(APP)

    async def scenario():
        async with User(srv.url) as user:
            page = await user.page()
            assert page.status_code == 500 and "init went wrong" in page.text
            assert "FileNotFoundError" not in page.text and "During handling" not in page.text
            await user.page("/clicky")
            async with user.ws("/clicky/ws") as ws:
                await ws.recv()
                error = await click(ws, "boom")
                assert "handler went wrong" in error["traceback"]
                assert "FileNotFoundError" not in error["traceback"] and "During handling" not in error["traceback"]

    asyncio.run(scenario())
    srv.wait_log("init went wrong")
    assert "FileNotFoundError" not in srv.log and "During handling" not in srv.log
