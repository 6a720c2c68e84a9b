"""Operating a running server: ``python -m htagweb ps`` / ``kill`` and the same in Python."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from helpers import User, click, count, pid, server_source

from htagweb import manage


def run(coro):
    return asyncio.run(coro)


def htagweb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "htagweb", *args], capture_output=True, text=True, timeout=60)


def test_ps_lists_the_live_user_processes(server):
    srv = server(server_source("WebServerWS", spare_processes=2))

    async def scenario():
        async with User(srv.url) as alice, User(srv.url) as bob:
            alice_pid = pid((await alice.page()).text)
            bob_pid = pid((await bob.page()).text)
            async with alice.ws() as ws:
                await ws.recv()
                await click(ws, "inc")
            return {alice_pid: alice.http.cookies["htagweb_session"][:8], bob_pid: bob.http.cookies["htagweb_session"][:8]}

    sessions = run(scenario())
    found = manage.users(srv.runtime_dir)
    assert {user.pid: user.session for user in found} == sessions  # spares are not users
    for user in found:
        assert user.app == "srv:App" and user.state == "idle" and user.rss > 2**20 and 0 <= user.idle <= user.age
    listed = htagweb("ps", "--runtime-dir", str(srv.runtime_dir))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["SESSION", "PID", "AGE", "IDLE", "RSS", "STATE", "APP"]
    assert sorted((line.split()[0], int(line.split()[1]), line.split()[-1]) for line in lines[1:]) == sorted(
        (label, user_pid, "srv:App") for user_pid, label in sessions.items()
    )


def test_kill_ends_a_session_its_on_destroy_runs_and_the_user_is_told(server):
    srv = server(server_source("WebServerWS"))

    async def scenario():
        async with User(srv.url) as victim, User(srv.url) as other:
            victim_pid = pid((await victim.page()).text)
            other_pid = pid((await other.page()).text)
            label = victim.http.cookies["htagweb_session"][:8]
            async with victim.ws() as ws:
                await ws.recv()
                await click(ws, "inc")
                ended = await asyncio.to_thread(htagweb, "kill", label[:5], "--app", "srv:App", "--runtime-dir", str(srv.runtime_dir))
                assert ended.returncode == 0, ended.stderr
                assert ended.stdout.strip() == f"ending pid {victim_pid}: session {label}, app srv:App"
                message = json.loads(await ws.recv())
                assert message["action"] == "error" and "ended by the server's administrator" in message["traceback"]
            srv.wait_log(rf"user process ended on request: pid {victim_pid}")
            assert (srv.workdir / "destroyed.log").read_text().split() == [str(victim_pid)]  # its on_destroy ran
            again = await victim.page()
            assert pid(again.text) != victim_pid and count(again.text) == 0
            assert pid((await other.page()).text) == other_pid  # nobody else's
            other_label = other.http.cookies["htagweb_session"][:8]
            assert [user.pid for user in manage.kill(other_label, runtime_dir=srv.runtime_dir)] == [other_pid]
            assert manage.kill(other_label, app="other:App", runtime_dir=srv.runtime_dir) == []

    run(scenario())


def test_ps_and_kill_say_clearly_when_no_server_runs(tmp_path):
    listed = htagweb("ps", "--runtime-dir", str(tmp_path))
    assert listed.returncode == 1 and f"no server is running with the runtime directory {tmp_path}" in listed.stderr
    with pytest.raises(manage.ManageError, match="no server is running"):
        manage.kill("abc", runtime_dir=tmp_path)
    with pytest.raises(manage.ManageError, match="a session prefix is needed"):
        manage.kill("", runtime_dir=tmp_path)
