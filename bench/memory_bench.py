"""Where htagweb's memory per user goes, by kind of process (one run, about 20 s):

    python bench/memory_bench.py [--json FILE] [--merge-memory]

The counter app of runtime_bench.py under WebServerWS, its default pool of spares.
Reported: the median USS (Private_Clean + Private_Dirty of /proc/PID/smaps, in MB)
of the fork-server, of its sleeping and rehearsed spares, and of user processes by
how they came: 20 users one after the other (page, WebSocket's initial payload,
gone), 30 users at once clicking 5 times each, 8 users 0.3 s apart (they get
rehearsed spares); then the USS of the median one-after-the-other user by mapping
(``[anon]`` holds pymalloc's arenas), and as root, its pages by what they are next
to its zygote's (unchanged copies, changed copies, fresh pages). bench/RESULTS.md, "USS per idle user", says what
the numbers are made of. ``--merge-memory``: the same with ``merge_memory=True`` and
Linux's KSM on (root; bench/ksm.py), each kind measured once ksmd has gone over it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import re
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ksm import ksm_running, ksmd_cpu_seconds, settle  # noqa: E402
from runtime_bench import HTAGWEB_SOURCE, clicks, cold_starts  # noqa: E402
from servers import Server, report  # noqa: E402

from htagweb import manage  # noqa: E402

MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")
PAGE = os.sysconf("SC_PAGE_SIZE")
#: in a /proc/PID/pagemap entry: the page is in memory; its frame number
PRESENT, FRAME = 1 << 63, (1 << 55) - 1


def uss_by_mapping(pid: int) -> dict[str, int]:
    """Bytes each mapping of ``pid`` holds alone, by its name (a file's base name)."""
    found: collections.Counter[str] = collections.Counter()
    name = ""
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            mapping = MAPPING.match(line)
            if mapping:
                name = Path(mapping.group(1)).name if "/" in mapping.group(1) else mapping.group(1) or "[anon]"
            elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                found[name] += int(line.split()[1]) * 1024
    return found


def private_pages(pid: int, parent: int) -> collections.Counter[str]:
    """The pages ``pid`` holds alone, by what they are next to its parent's (the zygote it was
    forked from): "unchanged" (a copy whose bytes are the parent's again: written, then set
    back, as a reference count taken and dropped), "changed" (a copy), "fresh" (no page of
    the parent there). Needs root (/proc/kpagecount, the pages' frame numbers)."""
    found: collections.Counter[str] = collections.Counter()
    with open(f"/proc/{pid}/pagemap", "rb") as ours, open(f"/proc/{parent}/pagemap", "rb") as theirs, open(
        "/proc/kpagecount", "rb"
    ) as counts, open(f"/proc/{pid}/mem", "rb") as our_mem, open(f"/proc/{parent}/mem", "rb") as their_mem:
        for line in open(f"/proc/{pid}/maps"):
            start, end = (int(bound, 16) for bound in line.split()[0].split("-"))
            if "w" not in line.split()[1]:
                continue
            for address in range(start, end, PAGE):
                ours.seek(address // PAGE * 8)
                entry = int.from_bytes(ours.read(8), "little")
                frame = entry & FRAME
                if not entry & PRESENT or not frame:
                    continue
                counts.seek(frame * 8)
                if int.from_bytes(counts.read(8), "little") != 1:  # shared
                    continue
                theirs.seek(address // PAGE * 8)
                if not int.from_bytes(theirs.read(8), "little") & PRESENT:
                    found["fresh"] += 1
                    continue
                our_mem.seek(address)
                their_mem.seek(address)
                found["unchanged" if our_mem.read(PAGE) == their_mem.read(PAGE) else "changed"] += 1
    return found


def uss(pid: int) -> int:
    return sum(uss_by_mapping(pid).values())


def median_pid(pids: list[int]) -> int:
    return sorted(pids, key=uss)[len(pids) // 2]


def has_event_loop(pid: int) -> bool:
    """Whether the process has an event loop (its epoll descriptor): a spare that rehearsed."""
    fds = Path(f"/proc/{pid}/fd")
    return any(os.readlink(fds / fd) == "anon_inode:[eventpoll]" for fd in os.listdir(fds))


def users(server: Server) -> set[int]:
    return {user.pid for user in manage.users(server.runtime_dir)}


async def crowd(url: str, count: int, per_user: int) -> None:
    await asyncio.gather(*(clicks(url, per_user) for _ in range(count)))


async def one_after_the_other(url: str, count: int, pause: float = 0.0) -> None:
    for _ in range(count):
        await cold_starts(url, 1)
        await asyncio.sleep(pause)


def measure(server: Server, merging: bool) -> tuple[dict[str, float], int]:
    results: dict[str, float] = {}
    kinds: dict[str, list[int]] = {}
    asyncio.run(one_after_the_other(server.url, 1))  # the fork-server starts, the pool fills
    time.sleep(2)
    seen = users(server)
    processes = {p.pid: " ".join(p.cmdline()) for p in server.processes()}
    forkserver = [pid for pid, title in processes.items() if title.startswith("htagweb fork-server")]
    spares = [pid for pid, title in processes.items() if title.startswith("htagweb spare")]
    rehearsed = [pid for pid in spares if has_event_loop(pid)]  # a sleeping one has none yet
    asleep = [pid for pid in spares if pid not in rehearsed]
    for kind, pids in (("fork-server", forkserver), ("spare rehearsed", rehearsed), ("spare asleep", asleep)):
        results[f"{kind} (MB)"] = uss(median_pid(pids)) / 1e6  # now: spares become users later
    for kind, arrivals in (
        ("user, one after the other", one_after_the_other(server.url, 20)),
        ("user of a crowd, 5 clicks", crowd(server.url, 30, 5)),
        ("user 0.3 s apart", one_after_the_other(server.url, 8, 0.3)),
    ):
        asyncio.run(arrivals)
        time.sleep(1)
        kinds[kind] = sorted(users(server) - seen)
        seen |= set(kinds[kind])
    if merging:
        settle()
    for kind, pids in kinds.items():
        results[f"{kind} (MB)"] = uss(median_pid(pids)) / 1e6
    return results, median_pid(kinds["user, one after the other"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--merge-memory", action="store_true", help="merge_memory=True, KSM on for the run (root)")
    args = parser.parse_args()
    options = ", merge_memory=True" if args.merge_memory else ""
    with ksm_running() if args.merge_memory else contextlib.nullcontext(), Server(HTAGWEB_SOURCE.format(options=options)) as server:
        ksmd_before = ksmd_cpu_seconds() if args.merge_memory else 0.0
        results, typical = measure(server, args.merge_memory)
        if args.merge_memory:
            results["ksmd CPU during the run (s)"] = ksmd_cpu_seconds() - ksmd_before
        for name, size in sorted(uss_by_mapping(typical).items(), key=lambda item: -item[1]):
            if size >= 16384:
                results[f"  its {name} (MB)"] = size / 1e6
        if os.geteuid() == 0:
            for kind, pages in sorted(private_pages(typical, psutil.Process(typical).ppid()).items()):
                results[f"  its pages {kind}, next to its zygote's (MB)"] = pages * PAGE / 1e6
    report(results, args.json)


if __name__ == "__main__":
    main()
