"""What the fork-server holds before it forks is immortal on CPython 3.12 and 3.13
(htagweb/immortal.py): a user process that uses those objects writes nothing to their
pages. On Python 3.11 they are only frozen. CI runs this file on both."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

from helpers import User

from htagweb.immortal import IMMORTAL

#: the interpreters whose immortal objects htagweb marks (3.14 changed the value: left alone)
MARKS = sys.implementation.name == "cpython" and (3, 12) <= sys.version_info < (3, 14)

SHARE = """
import gc, json, sys
from htagweb import immortal
before = {"list": [1.5, "built " + str(len(sys.argv))]}
made = immortal.share()
after = {"list": [2.5]}
held = [before, before["list"], before["list"][0], before["list"][1], after] * 10
before["list"].append("still a list")
print(json.dumps({
    "made": made,
    "before": [sys.getrefcount(o) for o in (before, before["list"], before["list"][0], before["list"][1])],
    "after": sys.getrefcount(after),
    "frozen": gc.get_freeze_count(),
    "list": before["list"],
}))
"""


def test_share_makes_what_is_there_immortal_and_freezes_it():
    result = json.loads(subprocess.run([sys.executable, "-c", SHARE], capture_output=True, text=True, check=True).stdout)
    assert result["frozen"] > 1000 and result["list"] == [1.5, "built 1", "still a list"]
    assert result["after"] < 50  # what comes after is counted as ever
    if MARKS:  # a dict, a list, a float and a string made at run time: counts no reference changes
        assert result["made"] > 1000 and result["before"] == [IMMORTAL] * 4
    else:
        assert result["made"] == 0 and all(count < 50 for count in result["before"])


APP = """
import os, sys
from htag import Tag
from htagweb import WebServerWS

SEEN = []  # made at import, before the fork-server forks


class App(Tag.App):
    def init(self):
        SEEN.append(os.getpid())
        Tag.p(f"refs={sys.getrefcount(App)} seen={SEEN}")


app = WebServerWS(App, runtime_dir=RUNTIME_DIR, spare_processes=2)
"""


def test_a_user_process_uses_the_app_class_without_counting_and_writes_its_own_copy(server):
    srv = server(APP)

    async def pages() -> list[str]:
        texts = []
        for _ in range(2):
            async with User(srv.url) as user:
                texts.append((await user.page()).text)
        return texts

    first, second = (re.search(r"refs=(\d+) seen=\[(\d+)\]", text) for text in asyncio.run(pages()))
    assert first and second and first.group(2) != second.group(2)  # one process each, each its own SEEN
    refs = int(first.group(1))
    assert refs == IMMORTAL if MARKS else refs < 1000
