"""Servers for the benchmarks: the tests' subprocess servers (tests/serverprocess.py)
serving the same counter app, an HTTP client and a percentile helper."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import TLS  # noqa: E402  (one TLS context shared by every client)
from serverprocess import LIMITED, ServerProcess  # noqa: E402

COUNTER_APP = """
import logging
from htag import State, Tag

logging.getLogger("htag").setLevel(logging.WARNING)


class App(Tag.App):
    def init(self):
        self.count = State(0)
        Tag.p(lambda: f"Count: {self.count.value}", _id="count")
        Tag.button("+1", _id="inc", _onclick=self.inc)

    def inc(self, event):
        self.count.value += 1
"""


class Server(ServerProcess):
    """``uvicorn srv:app`` (no access log) serving the counter app followed by ``source``:
    htagweb under its own HTTP protocol, as deployed; htag's ``WebApp`` (another ``python``,
    whose virtualenv has no htagweb) under uvicorn's."""

    def __init__(self, source: str, *uvicorn_args: str, python: str = sys.executable, http: str | None = None) -> None:
        http = http or (LIMITED if python == sys.executable else "auto")
        super().__init__(COUNTER_APP + source, Path(tempfile.mkdtemp(prefix="hwb-")), python=python, http=http)
        try:
            self.start("--no-access-log", *uvicorn_args)
        except BaseException:  # the error carries the server's log
            self.__exit__()
            raise

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def http_client(url: str, timeout: float = 60) -> httpx.AsyncClient:
    # trust_env=False: no proxy settings and .netrc read from the environment for each client
    return httpx.AsyncClient(base_url=url, timeout=timeout, verify=TLS, trust_env=False)


def ws_connect(url: str, cookie: str, **options: Any) -> Any:
    """The WebSocket of ``url``'s page (``proxy=None``: no proxy lookup in the environment
    at each connection, the client's CPU being the servers' too on this machine)."""
    return websockets.connect(url.replace("http", "ws") + "/ws", additional_headers={"Cookie": cookie}, proxy=None, **options)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def report(results: dict[str, float], json_path: Path | None) -> None:
    """Print one aligned line per result; write them as JSON too with ``--json``."""
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:<{width}}  {value:10.3f}")
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))
