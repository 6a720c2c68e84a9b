"""One table of settings (htagweb.config.Config): the servers and the command line take theirs from it."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import subprocess
import sys

import pytest
from htag import Tag

from htagweb import WebServer, WebServerWS
from htagweb.config import Config


class App(Tag.App):
    pass


@pytest.fixture(autouse=True)
def htag_logging():
    """A server quiets htag's logger for the processes it forks: not for the tests that follow."""
    htag_logger = logging.getLogger("htag")
    level = htag_logger.level
    yield
    htag_logger.setLevel(level)


def test_a_server_takes_the_settings_of_config_and_nothing_else(tmp_path):
    server = WebServerWS(App, runtime_dir=str(tmp_path / "rt"), timeout_inactivity=7, metrics=True, max_body_size=10)
    assert (server.config.timeout_inactivity, server.config.metrics, server.config.max_body_size) == (7, True, 10)
    assert server.config.http_only is False and WebServer(App, runtime_dir=str(tmp_path / "rt2")).config.http_only is True
    with pytest.raises(TypeError, match="unknown setting.*timeout_inactvity"):
        WebServerWS(App, runtime_dir=str(tmp_path / "rt3"), timeout_inactvity=7)
    # no restated list of settings: the signature names only what is not a setting
    assert list(inspect.signature(WebServer.__init__).parameters) == ["self", "app", "routes", "middleware", "settings"]


def test_the_secret_is_not_shown_in_a_config():
    assert "s3cret" not in repr(Config(secret="s3cret"))
    assert {f.name for f in dataclasses.fields(Config)} >= {"timeout_inactivity", "session_store", "parano", "metrics", "runtime_dir"}


def test_the_command_line_takes_its_defaults_from_config():
    shown = subprocess.run([sys.executable, "-m", "htagweb", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert f"(default {Config.timeout_inactivity:g})" in " ".join(shown.split())
    assert f"(default {Config.timeout_interaction:g})" in " ".join(shown.split())


def test_a_message_on_the_wire_has_max_body_size_and_under_parano_room_for_its_envelope():
    assert Config(max_body_size=10_000).max_message_size == 10_000
    assert Config(max_body_size=10_000, parano=True).max_message_size == 11_024
    assert Config(max_body_size=10, parano=True).max_message_size == 4096 + 1024  # a click fits, sealed


def test_an_address_holds_a_quarter_of_max_processes_unless_told():
    assert Config().processes_per_address == 125
    assert Config(max_processes=3).processes_per_address == 1  # at least one
    assert Config(max_processes_per_address=0).processes_per_address == 0  # no limit
