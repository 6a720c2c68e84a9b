"""What reaches the log: never what a user types, each error once, and the root
logger left to the program that owns it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from helpers import User, click

MARKER = "Zoé secret-value-123"

APP = """
from htag import Tag
from htagweb import WebServerWS


class App(Tag.App):
    def init(self):
        Tag.input(_id="secret", _onchange=self.typed)
        Tag.button("boom", _id="boom", _onclick=self.boom)

    def typed(self, event):
        pass

    def boom(self, event):
        raise KeyError("handler went wrong")
"""
RUN = APP + """

if __name__ == "__main__":
    WebServerWS(App, runtime_dir=RUNTIME_DIR, debug=False).run(port=0)
"""


async def type_and_fail(url: str) -> None:
    async with User(url) as user:
        await user.page()
        async with user.ws() as ws:
            await ws.recv()
            await click(ws, "secret", value=MARKER)
            assert (await click(ws, "boom"))["action"] == "error"


@pytest.mark.parametrize("how", ["app.run", "python -m htagweb --no-debug"])
def test_what_users_type_is_not_logged_and_errors_are_logged_once(server, how):
    if how == "app.run":
        srv = server(RUN, script="srv.py")
    else:
        srv = server("", files={"typing_app.py": APP}, command=["typing_app:App", "--no-debug"])
    asyncio.run(type_and_fail(srv.url))
    srv.wait_log("handler went wrong")
    srv.stop()
    assert "secret-value-123" not in srv.log
    assert srv.log.count("KeyError: 'handler went wrong'") == 1, srv.log
    assert "user process spawned" in srv.log  # htagweb's own INFO lines are still there


def test_run_leaves_the_root_logger_alone():
    from htagweb.logs import configure

    root = logging.getLogger()
    kept, root.handlers = root.handlers, []  # as in a program that configured no logging
    loggers = [logging.getLogger(name) for name in ("htagweb", "htag")]
    before = [(list(logger.handlers), logger.level) for logger in loggers]
    try:
        configure()
        assert root.handlers == [] and root.level == logging.WARNING
        assert logging.getLogger("htagweb").isEnabledFor(logging.INFO)
        assert not logging.getLogger("htag").isEnabledFor(logging.INFO)
        assert logging.getLogger("htag").isEnabledFor(logging.WARNING)
    finally:
        root.handlers = kept
        for logger, (handlers, level) in zip(loggers, before, strict=True):
            logger.handlers, logger.level = handlers, level
