"""Where the clicks of a crowd spend their time, htagweb against htag's in-process WebApp,
in one run:

    python bench/crowd_bench.py [--users N] [--clicks N] [--rounds N] [--json FILE]

The users arrive first (page and WebSocket each), so that only clicks are measured. Then,
in rounds alternating between the two servers:
- *at once*: every user clicks ``--clicks`` times, all users together (the crowd of
  ``runtime_bench.py`` once it has arrived): clicks per second, p50 and p99;
- *round robin*: one click at a time, each by the next user: what a click costs a user
  process that the other users' processes ran before;
- *one user*: one click at a time, always by the same user: the same click, warm.

For each: CPU per click of each kind of process (``/proc/PID/task/*/schedstat``, to the
nanosecond), of this client, and the page faults of the user processes per click. A
click costs htag's in-process server the same whoever clicks; the one of a user process
depends on how many other processes ran since it last did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from floor_bench import cpu_by_kind, kind_of  # noqa: E402
from runtime_bench import HTAG_SOURCE, HTAGWEB_SOURCE, click, htag_python, visit  # noqa: E402
from servers import Server, percentile  # noqa: E402

#: seconds for what the arrivals left behind (htagweb refills its spares) before clicks are measured
AFTERMATH = 3.0
MODES = ("at once", "round robin", "one user")


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def user_faults(server: Server) -> int:
    """Page faults (minor) of the server's user processes so far."""
    total = 0
    for process in server.processes():
        try:
            if kind_of(process) == "user processes":
                with open(f"/proc/{process.pid}/stat") as stat:
                    total += int(stat.read().rpartition(")")[2].split()[7])
        except (OSError, psutil.Error):
            pass
    return total


async def clicks(users: list, mode: str, per_user: int) -> list[float]:
    """Latencies of ``per_user`` clicks of each user (of one user in mode "one user")."""
    times: list[float] = []
    counts = [user[4] for user in users]

    async def one(n: int) -> None:
        counts[n] += 1
        elapsed, right = await click(users[n][3], counts[n])
        assert right, "a click was not counted"
        times.append(elapsed)

    if mode == "at once":

        async def clicking(n: int) -> None:
            for _ in range(per_user):
                await one(n)

        await asyncio.gather(*(clicking(n) for n in range(len(users))))
    elif mode == "round robin":
        for _ in range(per_user):
            for n in range(len(users)):
                await one(n)
    else:
        for _ in range(per_user * len(users)):
            await one(0)
    for n, count in enumerate(counts):
        users[n][4] = count
    return times


async def measure(server: Server, users: list, mode: str, per_user: int, result: dict[str, defaultdict[str, float]]) -> list[float]:
    """One round of ``mode``: its latencies; CPU seconds and faults added to ``result[mode]``."""
    before, client_before, faults_before = cpu_by_kind(server), client_cpu(), user_faults(server)
    times = await clicks(users, mode, per_user)
    after, client_after, faults_after = cpu_by_kind(server), client_cpu(), user_faults(server)
    spent = result.setdefault(mode, defaultdict(float))
    for kind in after:
        spent[kind] += after[kind] - before[kind]
    spent["client"] += client_after - client_before
    spent["user process faults"] += faults_after - faults_before
    spent["clicks"] += len(times)
    return times


async def arrive(url: str, users: int) -> list[list]:
    """``users`` new users, one after the other: [http, cookie, arrival, ws, clicks so far]."""
    return [[*(await visit(url)), 0] for _ in range(users)]


async def leave(users: list) -> None:
    for http, _, _, ws, _ in users:
        await ws.close()
        await http.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--clicks", type=int, default=20, help="clicks per user and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    names = ("htag", "htagweb")
    spent: dict[str, dict[str, defaultdict[str, float]]] = {name: {} for name in names}
    latencies: dict[str, dict[str, list[float]]] = {name: {mode: [] for mode in MODES} for name in names}
    walls: dict[str, float] = dict.fromkeys(names, 0.0)

    async def run(servers: dict[str, Server]) -> None:
        users = {name: await arrive(server.url, args.users) for name, server in servers.items()}
        await asyncio.sleep(AFTERMATH)
        for name, server in servers.items():  # warm-up: each user's first clicks
            await measure(server, users[name], "round robin", 2, {})
        for _ in range(args.rounds):
            for mode in MODES:
                for name, server in servers.items():
                    start = time.perf_counter()
                    latencies[name][mode] += await measure(server, users[name], mode, args.clicks, spent[name])
                    if mode == "at once":
                        walls[name] += time.perf_counter() - start
        for name in names:
            await leave(users[name])

    with Server(HTAG_SOURCE, python=htag_python()) as htag, Server(HTAGWEB_SOURCE.format(options="")) as htagweb:
        asyncio.run(run({"htag": htag, "htagweb": htagweb}))
    results = {name: {mode: summary(spent[name][mode], latencies[name][mode], walls[name], mode) for mode in MODES} for name in names}
    print(f"CPU per click in µs, {args.users} users, {args.clicks} clicks of each per round, {args.rounds} rounds")
    print("".join(f"{heading:>{width}}" for heading, width in HEADINGS))
    for mode in MODES:
        for name in names:
            print(line([mode, name, *(results[name][mode].get(column) for column in COLUMNS)]))
        ratios = [results["htagweb"][mode][column] / results["htag"][mode][column] if column in RATIOS else None for column in COLUMNS]
        print(line(["", "ratio", *ratios], ratio=True))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


#: a row's columns: CPU per click by kind of process (htag's one process is "server"), page faults of
#: the user processes per click, latencies
COLUMNS = ("server", "front", "user processes", "fork-server", "client", "faults", "p50 ms", "p99 ms", "clicks/s")
RATIOS = ("server", "client", "p50 ms", "p99 ms")
HEADINGS = [("", 12), ("", 8), *((column.replace("user processes", "users"), 12) for column in COLUMNS)]


def line(cells: list[str | float | None], ratio: bool = False) -> str:
    text = ""
    for cell, (heading, width) in zip(cells, HEADINGS, strict=True):
        if isinstance(cell, str) or cell is None:
            text += f"{cell or '':<{width}}" if not heading else f"{cell or '':>{width}}"
        elif ratio:
            text += f"{cell:>{width - 1}.2f}x"
        else:
            text += f"{cell:>{width}.{2 if heading in ('faults', 'p50 ms', 'p99 ms') else 0}f}"
    return text


def summary(spent: defaultdict[str, float], times: list[float], wall: float, mode: str) -> dict[str, float]:
    """Per click: µs of CPU by kind of process ("server" their sum), page faults of user processes."""
    clicks = spent["clicks"]
    row = {"client": spent["client"] / clicks * 1e6, "p50 ms": percentile(times, 50) * 1000, "p99 ms": percentile(times, 99) * 1000}
    kinds = {"front": spent["front"], "user processes": spent["user processes"], "fork-server": spent["fork-server"] + spent["zygote"]}
    if spent["user processes"]:
        row |= {kind: seconds / clicks * 1e6 for kind, seconds in kinds.items()}
        row["faults"] = spent["user process faults"] / clicks
    row["server"] = sum(kinds.values()) / clicks * 1e6
    if mode == "at once":
        row["clicks/s"] = clicks / wall
    return row


if __name__ == "__main__":
    main()
