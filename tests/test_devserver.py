"""``python -m htagweb``: the development server for a folder of htag apps."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from helpers import User, click

COUNTER = """
from htag import State, Tag


class App(Tag.App):
    def init(self):
        self.n = State(0)
        Tag.p(lambda: f"VERSION-1 count {self.n.value}", _id="count")
        Tag.button("+1", _id="inc", _onclick=self.inc)

    def inc(self, event):
        self.n.value += 1
"""
FILES = {
    "counter.py": COUNTER,
    "notapp.py": "x = 1\n",
    "broken.py": "from htag import Tag\nclass App(Tag.App:\n",
    "failing.py": "from htag import Tag\nclass App(Tag.App):\n    def init(self):\n        1 / 0\n",
    "sub/hello.py": "from htag import Tag\nclass Hello(Tag.App):\n    def init(self):\n        Tag.p('hello from sub')\n",
    "_private.py": "from htag import Tag\nclass App(Tag.App):\n    def init(self):\n        Tag.p('private')\n",
    ".hidden.py": "from htag import Tag\nclass App(Tag.App):\n    def init(self):\n        Tag.p('hidden')\n",
}
OUTSIDE = "from htag import Tag\nclass App(Tag.App):\n    def init(self):\n        Tag.p('OUTSIDE-SECRET')\n"


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def folder_server(server, tmp_path):
    def start(*options: str):
        srv = server("", files=FILES, command=[".", *options])
        outside = tmp_path / "outside"
        outside.mkdir(exist_ok=True)
        (outside / "secret.py").write_text(OUTSIDE)
        (srv.workdir / "leak.py").symlink_to(outside / "secret.py")
        (srv.workdir / "linked").symlink_to(outside)
        return srv

    return start


def test_index_lists_folders_apps_and_files_without_app(folder_server):
    srv = folder_server()

    async def scenario():
        async with User(srv.url) as user:
            index = (await user.page("/")).text
            assert 'href="/counter"' in index and 'href="/sub/"' in index and 'href="/failing"' in index
            assert re.search(r"notapp</span><small[^>]*>no htag app in this file", index)
            assert re.search(r"broken</a><small[^>]*>does not parse", index)
            assert "_private" not in index and "hidden" not in index
            assert "leak" not in index and "linked" not in index  # symlinks out of the folder are not listed
            sub = (await user.page("/sub/")).text
            assert 'href="/sub/hello"' in sub and "htag app: Hello" in sub
            assert "hello from sub" in (await user.page("/sub/hello")).text

    run(scenario())
    assert "not limited" not in srv.log  # its connections are (tests/test_connections.py)


def test_app_runs_and_new_code_runs_after_edit(folder_server):
    srv = folder_server()

    async def scenario():
        async with User(srv.url) as user:
            assert "VERSION-1 count 0" in (await user.page("/counter")).text
            async with user.ws("/counter/ws") as ws:
                await ws.recv()
                assert "VERSION-1 count 1" in (await click(ws, "inc"))["updates"]["count"]
            assert "VERSION-1 count 1" in (await user.page("/counter")).text  # same code: same process
            path = srv.workdir / "counter.py"
            path.write_text(COUNTER.replace("VERSION-1", "VERSION-2"))
            os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a later mtime even on coarse clocks
            assert "VERSION-2 count 0" in (await user.page("/counter")).text

    run(scenario())
    srv.wait_log(r"user process reloaded: .*app folder:file:counter \(its source changed\)")


@pytest.mark.parametrize("debug", [True, False])
def test_broken_apps_give_error_pages_and_recover(folder_server, debug):
    srv = folder_server() if debug else folder_server("--no-debug")

    async def scenario():
        async with User(srv.url) as user:
            broken = await user.page("/broken")
            assert broken.status_code == 500 and "could not be loaded" in broken.text
            assert ("SyntaxError" in broken.text) is debug
            failing = await user.page("/failing")
            assert failing.status_code == 500 and "failed to start" in failing.text
            assert ("ZeroDivisionError" in failing.text) is debug
            assert (await user.page("/")).status_code == 200  # the server keeps running
            (srv.workdir / "broken.py").write_text(COUNTER)
            (srv.workdir / "failing.py").write_text(COUNTER.replace("1 / 0", ""))
            assert "VERSION-1 count 0" in (await user.page("/broken")).text
            assert "VERSION-1 count 0" in (await user.page("/failing")).text

    run(scenario())


def raw_get(port: int, path: str) -> tuple[int, str]:
    """A GET sent byte for byte: HTTP clients would normalise these paths."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    return int(head.split()[1]), body


TRAVERSALS = [
    "/../outside/secret",
    "/%2e%2e/outside/secret",
    "/%2E%2E/%2E%2E/etc/passwd",
    "/sub/../../outside/secret",
    "/sub/%2e%2e/%2e%2e/outside/secret",
    "/..%2foutside%2fsecret",
    "/%2fetc%2fpasswd",
    "//etc/passwd",
    "/etc/passwd",
    "/leak",
    "/linked/",
    "/linked/secret",
    "/_private",
    "/.hidden",
    "/%2ehidden",
    "/sub/.",
    "/counter.py",
    "/notapp",
    "/nothing",
]


def test_nothing_outside_the_folder_can_be_reached(folder_server):
    srv = folder_server()
    for path in TRAVERSALS:
        status, body = raw_get(srv.port, path)
        assert status in (400, 404), (path, status)
        assert "OUTSIDE-SECRET" not in body and "root:" not in body and "private" not in body.lower().replace("_private", "")

    async def websocket_refused():
        async with User(srv.url) as user:
            await user.page("/")
            with pytest.raises(Exception):  # noqa: B017 - any refusal will do; a connection must not open
                async with user.ws("/leak/ws") as ws:
                    await ws.recv()

    run(websocket_refused())


def test_one_module_app_and_http_only(server):
    srv = server("", files={"single.py": COUNTER}, command=["single:App", "--http-only"])

    async def scenario():
        async with User(srv.url) as user:
            page = (await user.page("/")).text
            assert "VERSION-1 count 0" in page and "window.use_pure_http=window.use_fallback=true" in page
            payloads = (await user.post_event("inc")).json()["payloads"]
            assert "VERSION-1 count 1" in json.loads(payloads[-1])["updates"]["count"]

    run(scenario())


def test_htagserver_as_an_asgi_app(server):
    srv = server("from htagweb import HtagServer\napp = HtagServer('.', runtime_dir=RUNTIME_DIR)\n", files={"counter.py": COUNTER})

    async def scenario():
        async with User(srv.url) as user:
            assert 'href="/counter"' in (await user.page("/")).text
            assert "VERSION-1 count 0" in (await user.page("/counter")).text

    run(scenario())


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "htagweb", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--host", "--port", "--http-only", "--parano", "--debug", "--no-debug", "--timeout-inactivity", "--timeout-interaction"):
        assert option in out
    assert "module:App" in out and "folder" in out


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


def test_in_the_browser_index_open_click_edit_reload(folder_server):
    from playwright.sync_api import expect, sync_playwright

    srv = folder_server()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.goto(srv.url + "/")
            expect(page.locator("header h1")).to_have_text("htag apps in /")
            expect(page.locator("li.no-app", has_text="notapp")).to_contain_text("no htag app in this file")
            expect(page.locator("header p")).to_contain_text(". — served by htagweb")  # the folder, as started from it
            page.click("text=counter")
            expect(page).to_have_url(srv.url + "/counter")
            page.click("#inc")
            page.click("#inc")
            expect(page.locator("#count")).to_have_text("VERSION-1 count 2")
            path = srv.workdir / "counter.py"
            path.write_text(COUNTER.replace("VERSION-1", "VERSION-2"))
            os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
            page.reload()
            expect(page.locator("#count")).to_have_text("VERSION-2 count 0")
            page.click("#inc")
            expect(page.locator("#count")).to_have_text("VERSION-2 count 1")
        finally:
            browser.close()


def test_parano_option_serves_the_bootstrap(server):
    srv = server("", files={"counter.py": COUNTER}, command=[".", "--parano"])

    async def scenario():
        async with User(srv.url) as user:
            page = (await user.page("/counter")).text
            assert "Connecting securely" in page and "VERSION-1" not in page
            assert (await user.http.get("/_htagweb/identity")).json()["fingerprint"].startswith("SHA256:")

    run(scenario())


def test_the_examples_that_build_their_own_server_say_why_they_cannot_run_here(server):
    files = {name: (ROOT / "examples" / name).read_text() for name in ("counter.py", "multi.py", "oauth.py")}
    srv = server("", files=files, command=["."])

    async def scenario():
        async with User(srv.url) as user:
            index = (await user.page("/")).text
            assert 'href="/counter"' in index
            for name in ("multi", "oauth"):
                assert f'href="/{name}"' not in index
                card = re.search(rf"{name}</span><small[^>]*>([^<]*)<", index)
                assert card and "builds its own server" in card.group(1) and f"python {name}.py" in card.group(1), index
                page = await user.page(f"/{name}")
                assert page.status_code == 404 and "builds its own server" in page.text

    run(scenario())
    assert "KeyError" not in srv.log  # oauth.py was never imported (it needs its provider's settings)


def test_one_app_from_the_wrong_folder_fails_at_start_up(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HTAGWEB_RUNTIME_DIR": str(tmp_path / "rt")}
    result = subprocess.run(
        [sys.executable, "-m", "htagweb", "counter:App", "--port", "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert f"cannot find module 'counter' in {tmp_path}" in result.stderr
