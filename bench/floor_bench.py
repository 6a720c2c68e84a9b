"""What a process per user costs at the least on this machine, against htag's
in-process WebApp, in one run:

    python bench/floor_bench.py [--users N] [--json FILE]

CPU per new user (a page, its WebSocket, one click), users one after the other:
- htag's WebApp, its whole server (one process: a new user is a few objects in it);
- htagweb, by kind of process (front, fork-server, its zygote, user processes and spares), the
  spares' refill after the arrivals included;
- the floor of any design that gives each user an OS process: the same page,
  WebSocket and click served by htagweb's user-process code (its rehearsal,
  :mod:`htagweb.rehearsal`) in one warmed process, then each in a process forked
  for it from a warmed parent that does nothing else (the parent's fork, the
  child's work and exit, the child's page faults);
- one copy-on-write page fault and one first touch of a page, here.

Then what that means for N users arriving at once on this machine's cores, counting
the servers' CPU only (the client's own CPU on the same cores comes on top).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import mmap
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_bench import HTAG_SOURCE, HTAGWEB_SOURCE, click, htag_python, visit  # noqa: E402
from servers import Server  # noqa: E402

from htagweb import rehearsal  # noqa: E402
from htagweb.config import Config
from htagweb.immortal import share  # noqa: E402
from htagweb.process import UserProcess, new_loop  # noqa: E402
from htagweb.slot import Watchdog, new_slot  # noqa: E402

#: seconds left after the arrivals for the work they leave behind (htagweb refills its spares)
AFTERMATH = 3.0
#: the crowd of the issue's target: that many new users at once
AT_ONCE = 1000
PAGE = mmap.PAGESIZE


def kind_of(process: psutil.Process) -> str:
    title = " ".join(process.cmdline())
    for kind in ("fork-server", "zygote", "user", "spare"):
        if f"htagweb {kind}" in title:
            return "user processes" if kind in ("user", "spare") else kind
    return "front"


def cpu_seconds(pid: int) -> float:
    """CPU time of all the threads of ``pid``, to the nanosecond (``/proc/PID/stat`` counts
    in ticks of 10 ms: a user process' whole arrival can round to 0)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as schedstat:
            total += int(schedstat.read().split()[0])
    return total / 1e9


def cpu_by_kind(server: Server) -> Counter[str]:
    """CPU seconds of the server's processes (none ends during a measure), by kind."""
    seconds: Counter[str] = Counter()
    for process in server.processes():
        try:
            seconds[kind_of(process)] += cpu_seconds(process.pid)
        except (OSError, psutil.Error):
            pass
    return seconds


async def arrivals(url: str, users: int) -> None:
    for _ in range(users):
        http, _, _, ws = await visit(url)
        assert (await click(ws, 1))[1], "the click was not counted"
        await ws.close()
        await http.aclose()


def server_cpu_per_user(server: Server, users: int) -> dict[str, float]:
    """ms of CPU per new user, by kind of process."""
    asyncio.run(arrivals(server.url, 5))  # warm-up
    time.sleep(AFTERMATH)
    before = cpu_by_kind(server)
    asyncio.run(arrivals(server.url, users))
    time.sleep(AFTERMATH)
    after = cpu_by_kind(server)
    return {kind: (after[kind] - before[kind]) / users * 1000 for kind in sorted(after)}


def serve_one(config: Config, slot: mmap.mmap) -> None:
    """A page, its WebSocket and a click through htagweb's user-process code, in a loop of its own."""
    loop = new_loop()
    try:
        frames = loop.run_until_complete(rehearsal.rehearse(UserProcess(config, Watchdog(slot))))
    finally:
        loop.close()
    assert any(b"Count: 1" in body for _, body in frames), "the rehearsal's click was not counted"


def floor(users: int) -> dict[str, float]:
    """In this process, warmed like a fork-server: the same user served in place, then forked for."""
    config = Config()
    rehearsal.warm_up(config)
    gc.collect()
    share()  # as the fork-server does: frozen, and immortal where supported
    slot = new_slot()
    start = time.process_time()
    for _ in range(users):
        serve_one(config, slot)
    in_place = (time.process_time() - start) / users
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    for _ in range(users):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                serve_one(config, slot)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "a forked process failed"
    parent = (time.process_time() - start) / users
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / users
    return {
        "in_place_ms": in_place * 1000,
        "fork_parent_ms": parent * 1000,
        "forked_child_ms": child * 1000,
        "forked_child_faults": (after.ru_minflt - before.ru_minflt) / users,
    }


def fault_costs(pages: int = 20000) -> dict[str, float]:
    """µs of CPU per page: written first in a new mapping, then written by a child it was shared with."""
    area = mmap.mmap(-1, pages * PAGE)
    start = time.process_time()
    for offset in range(0, pages * PAGE, PAGE):
        area[offset] = 1
    first_touch = (time.process_time() - start) / pages

    def child_cost(write: bool) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        pid = os.fork()
        if pid == 0:
            for offset in range(0, pages * PAGE, PAGE):
                if write:
                    area[offset] = 2
                else:
                    area[offset]  # noqa: B018 (the read is the point)
            os._exit(0)
        os.waitpid(pid, 0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / pages

    copy_on_write = child_cost(True) - child_cost(False)
    area.close()
    return {"first_touch_us": first_touch * 1e6, "copy_on_write_us": copy_on_write * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with Server(HTAG_SOURCE, python=htag_python()) as htag:
        htag_cpu = server_cpu_per_user(htag, args.users)
    with Server(HTAGWEB_SOURCE.format(options="")) as htagweb:
        htagweb_cpu = server_cpu_per_user(htagweb, args.users)
    least = floor(args.users)
    faults = fault_costs()
    results = {"htag": htag_cpu, "htagweb": htagweb_cpu, "floor": least, "page_faults": faults}
    htag_total, htagweb_total = sum(htag_cpu.values()), sum(htagweb_cpu.values())
    forked_total = least["fork_parent_ms"] + least["forked_child_ms"]
    print(f"CPU per new user (page, WebSocket, click), {args.users} users one after the other:")
    print(f"  htag WebApp, whole server            {htag_total:6.2f} ms")
    parts = ", ".join(f"{kind} {ms:.2f}" for kind, ms in htagweb_cpu.items())
    print(f"  htagweb, whole server                {htagweb_total:6.2f} ms  ({parts})  {htagweb_total / htag_total:.2f}x htag")
    print(f"  the same user served in place       {least['in_place_ms']:6.2f} ms  (htagweb's user-process code, one warmed process)")
    print(
        f"  the same user in a process of its own {forked_total:5.2f} ms  (fork {least['fork_parent_ms']:.2f} + child "
        f"{least['forked_child_ms']:.2f}, {least['forked_child_faults']:.0f} page faults)  {forked_total / htag_total:.2f}x htag"
    )
    print(f"page fault here: first touch {faults['first_touch_us']:.2f} µs, copy-on-write {faults['copy_on_write_us']:.2f} µs")
    cores = len(os.sched_getaffinity(0))
    print(f"{AT_ONCE:,} users at once on {cores} cores, servers' CPU alone (the client's comes on top):")
    for name, per_user in (("htag WebApp", htag_total), ("htagweb", htagweb_total), ("a process per user (floor)", forked_total)):
        seconds = AT_ONCE * per_user / 1000 / cores  # per_user in ms
        print(f"  {name:<28}{seconds:6.2f} s at the least for the last one")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
