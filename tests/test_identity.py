"""Two servers never serve each other's app: a script is known by its file, and a
runtime directory serves the apps of one server only."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest
from helpers import User
from serverprocess import ServerProcess

SCRIPT = """
from htag import Tag
from htagweb import WebServerWS


class App(Tag.App):
    def init(self):
        Tag.h1("I am {name}")


app = WebServerWS(App{options})
if __name__ == "__main__":
    print("runtime directory:", app.runtime.path, flush=True)
    app.run(port=0)
"""


def script(name: str, options: str = "") -> str:
    return SCRIPT.format(name=name, options=options)


@pytest.fixture
def folder(tmp_path: Path):
    """Servers sharing one folder, each stopped (and its default runtime directory removed) at teardown."""
    started: list[ServerProcess] = []

    def start(name: str, files: dict[str, str], **options) -> ServerProcess:
        srv = ServerProcess("", tmp_path, files)
        started.append(srv)
        return srv.start(script=name, **options)

    yield start
    for srv in started:
        print(f"--- log of {srv.args[3]} ---\n{srv.log}")
        match = re.search(r"runtime directory: (\S+)", srv.log)
        try:
            srv.stop()
        finally:
            if match and srv.args[4]:
                shutil.rmtree(match.group(1), ignore_errors=True)


def test_two_scripts_of_one_folder_serve_their_own_app(folder):
    files = {"a.py": script("A"), "b.py": script("B")}
    a = folder("a.py", files, default_runtime_dir=True)
    b = folder("b.py", files, default_runtime_dir=True)

    async def scenario():
        async with User(a.url) as user_a, User(b.url) as user_b:
            assert "I am A" in (await user_a.page()).text
            assert "I am B" in (await user_b.page()).text

    asyncio.run(scenario())
    a.halt()
    asyncio.run(scenario_b_alone(b.url))


async def scenario_b_alone(url: str) -> None:
    async with User(url) as user:
        assert "I am B" in (await user.page()).text


def test_a_runtime_directory_refuses_another_servers_app(folder, tmp_path):
    shared = Path("/tmp") / f"hw-shared-{tmp_path.name[-12:]}"  # short: Unix socket paths are limited
    files = {"a.py": script("A", f", runtime_dir={str(shared)!r}"), "b.py": script("B", f", runtime_dir={str(shared)!r}")}
    a = folder("a.py", files)
    try:
        b = ServerProcess("", tmp_path, files)
        with pytest.raises(RuntimeError, match="server did not start"):
            b.start(script="b.py")
        assert f"this runtime directory serves another application ({tmp_path / 'a.py'}:App), not {tmp_path / 'b.py'}:App" in b.log

        async def scenario():
            async with User(a.url) as user:
                assert "I am A" in (await user.page()).text

        asyncio.run(scenario())
    finally:
        a.stop()
        shutil.rmtree(shared, ignore_errors=True)
