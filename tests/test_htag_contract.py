"""What htagweb relies on in htag. If a new htag release breaks this file, the
pinned range in pyproject.toml must not be widened until htagweb is adapted."""

from __future__ import annotations

import json
import os
import re
import time

import htag
import pytest
from htag import State, Tag
from htag.client_js import CLIENT_JS
from htag.runner import AppRunner
from starlette.testclient import TestClient

from htagweb.config import Config
from htagweb.host import HtagHost
from htagweb.sessions import Session
from htagweb.slot import ARRIVING, RUNNING, Watchdog, new_slot, read_slot


class Counter(Tag.App):
    def init(self) -> None:
        self.count = State(0)
        Tag.p(lambda: f"Count: {self.count.value}", _id="count")
        Tag.button("+1", _id="inc", _onclick=self.inc)

    def inc(self, event) -> None:
        self.count.value += 1


def test_tested_htag_range():
    major, minor, patch = (int(x) for x in htag.__version__.split(".")[:3])
    assert (major, minor) == (2, 0) and patch >= 28, f"htag {htag.__version__} is outside the tested range"


@pytest.mark.parametrize(
    "name",
    [
        "_render_page",
        "_handle_websocket",
        "_handle_sse",
        "handle_event",
        "broadcast_updates",
        "_trigger_mount",
        "_trigger_unmount",
        "on_destroy",
    ],
)
def test_runner_methods_exist(name):
    assert callable(getattr(AppRunner, name))


def test_tag_app_is_the_runner_and_client_speaks_our_endpoints():
    assert Tag.App is AppRunner
    for fragment in ('_base_path + "ws"', '_base_path + "stream"', '_base_path + "event"', '"X-HTAG-TOKEN"', "window.use_pure_http"):
        assert fragment in CLIENT_JS


def host_client(config: Config | None = None) -> tuple[TestClient, HtagHost]:
    host = HtagHost(Counter, Session("contract"), config or Config(), Watchdog(new_slot()))

    async def app(scope, receive, send):
        endpoint = {"/": "page", "/ws": "ws", "/event": "event", "/stream": "stream"}[scope["path"]]
        await host({**scope, "htagweb": {"endpoint": endpoint}}, receive, send)

    return TestClient(app), host


def test_page_websocket_and_event_through_the_runner():
    client, host = host_client()
    page = client.get("/").text
    assert "Count: 0" in page and "window.PARANO = null" in page
    csrf = re.search(r'HTAG_CSRF = "([0-9a-f]{32})"', page).group(1)
    assert csrf == host.instance.htag_csrf
    with client.websocket_connect("/ws") as ws:
        assert json.loads(ws.receive_text())["action"] == "update"
        ws.send_text(json.dumps({"id": "inc", "event": "click", "data": {"callback_id": "c1"}}))
        reply = json.loads(ws.receive_text())
        assert reply["callback_id"] == "c1" and "Count: 1" in reply["updates"]["count"]
    event = {"id": "inc", "event": "click", "data": {"callback_id": "c2"}, "fallback": True}
    response = client.post("/event", content=json.dumps(event), headers={"X-HTAG-TOKEN": csrf})
    assert "Count: 2" in json.loads(response.json()["payloads"][-1])["updates"]["count"]


def test_an_event_sent_again_is_answered_not_run_twice():
    """An event whose WebSocket was cut after it reached the app comes again over HTTP
    (htagweb/js/resend_cut_events.js): answered with its id, the click counted once."""
    client, host = host_client()
    csrf = re.search(r'HTAG_CSRF = "([0-9a-f]{32})"', client.get("/").text).group(1)
    with client.websocket_connect("/ws") as ws:
        ws.receive_text()
        ws.send_text(json.dumps({"id": "inc", "event": "click", "data": {"callback_id": "c1"}}))
        assert "Count: 1" in json.loads(ws.receive_text())["updates"]["count"]
    again = {"id": "inc", "event": "click", "data": {"callback_id": "c1"}, "fallback": True}
    [answer] = client.post("/event", content=json.dumps(again), headers={"X-HTAG-TOKEN": csrf}).json()["payloads"]
    assert json.loads(answer)["callback_id"] == "c1" and "Count: 1" in client.get("/").text
    other = {**again, "data": {"callback_id": "c2"}}
    [answer] = client.post("/event", content=json.dumps(other), headers={"X-HTAG-TOKEN": csrf}).json()["payloads"]
    assert "Count: 2" in json.loads(answer)["updates"]["count"]


def test_http_only_page_starts_htag_client_in_pure_http_mode():
    assert "if (!window.HTAG_EXT_INIT) { init_ws(); }" in CLIENT_JS
    assert "if (window.use_pure_http) { payload.fallback = true; }" in CLIENT_JS
    assert "var _error_overlay = document.createElement('htag-error');" in CLIENT_JS and "this.attachShadow({mode: 'open'});" in CLIENT_JS
    client, _ = host_client(Config(http_only=True))
    page = client.get("/").text
    assert "<script>window.HTAG_EXT_INIT=true</script><script>" + CLIENT_JS in page
    assert page.count("window.use_pure_http=window.use_fallback=true") == 1


def test_watchdog_publishes_across_fork():
    """The fork-server reads, in its own memory, what a user process publishes."""
    slot = new_slot()
    pid = os.fork()
    if pid == 0:
        interaction = Watchdog(slot).interaction()
        interaction.__enter__()  # and never leaves it
        os._exit(0)
    os.waitpid(pid, 0)
    busy_since, active, state, stage = read_slot(slot)
    assert 0 < busy_since <= time.monotonic() and active <= busy_since and state == RUNNING and stage == ARRIVING
