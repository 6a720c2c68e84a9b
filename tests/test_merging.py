"""``merge_memory``: the fork-server and every process it forks opted in to Linux's
same-page merging (KSM), and a word in the log when the machine merges nothing."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from helpers import User, click, pid, server_source

from htagweb.merging import why_unmerged


def merge_any(process: int) -> str:
    """What the kernel says of ``process``: "yes" when all its anonymous memory may be merged."""
    stat = dict(line.split(": ", 1) for line in Path(f"/proc/{process}/ksm_stat").read_text().splitlines() if ": " in line)
    return stat["ksm_merge_any"]


async def user_arrives(url: str) -> int:
    """A user loads the page and clicks over the WebSocket (its arrival is over); its process' pid."""
    async with User(url) as user:
        page = await user.page()
        async with user.ws() as ws:
            await ws.recv()
            assert "Count: 1<" in json.dumps(await click(ws, "inc")).replace("\\u003c", "<")
        return pid(page.text)


def spares(srv) -> list[int]:
    return [p.pid for p in srv.processes() if " ".join(p.cmdline()).startswith("htagweb spare")]


def wait_merge_any(process: int) -> None:
    """Wait (20 s at most) for ``process`` to opt in: it does once its user's arrival is over."""
    deadline = time.monotonic() + 20
    while merge_any(process) != "yes":
        assert time.monotonic() < deadline, f"user process {process} never opted in to KSM"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/ksm_stat").exists(), reason="this kernel has no KSM (/proc/PID/ksm_stat)")
def test_merge_memory_opts_user_processes_in_and_says_when_ksm_does_not_run(server):
    plain = server(server_source("WebServerWS", spare_processes=2))
    merged = server(server_source("WebServerWS", merge_memory=True, spare_processes=2))
    plain_user = asyncio.run(user_arrives(plain.url))
    wait_merge_any(asyncio.run(user_arrives(merged.url)))
    assert merge_any(plain_user) == "no"
    # a spare is not merged before its user comes: that would undo the copies its rehearsal made
    deadline = time.monotonic() + 20
    while not spares(merged):  # the pool refills once the CPUs are calm (or a second later)
        assert time.monotonic() < deadline, "the pool of spares was never refilled"
        time.sleep(0.05)
    assert all(merge_any(spare) == "no" for spare in spares(merged))
    unmerged = why_unmerged()
    if unmerged:  # the machine's switch, which a test does not turn: a fresh Debian machine has it off
        merged.wait_log(r"WARNING:.*merge_memory is set, but KSM does not run on this machine \(/sys/kernel/mm/ksm/run is 0\)")
    else:
        assert "merge_memory is set" not in merged.log
    assert "merge_memory" not in plain.log


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("1\n", None),
        ("0\n", "KSM does not run on this machine ({path} is 0): nothing is merged until root writes 1 to it"),
        ("2\n", "KSM does not run on this machine ({path} is 2): nothing is merged until root writes 1 to it"),
        (None, "this machine has no KSM ({path}: No such file or directory)"),
    ],
)
def test_why_unmerged_reads_the_machines_switch(tmp_path, content, said):
    path = tmp_path / "run"
    if content is not None:
        path.write_text(content)
    assert why_unmerged(path) == (said.format(path=path) if said else None)
