"""htagweb with several workers, in one run: python bench/workers_bench.py [--quick]

- 200 users arriving at once, each loading the page, opening its WebSocket and
  clicking 10 times, on 1, 2 and 4 uvicorn workers: clicks/s, p99 latency, lost or
  wrong replies;
- how many idle users fit in 4 GiB: users are added 100 at a time and the memory
  of every process of the server (PSS: shared pages counted once) is summed, until
  it passes 4 GiB.

``--arrivals N`` measures only N new users arriving on 4 workers (each loading
the page, opening its WebSocket and clicking once): lost, over 2 s, and the
arrival times; at once, or ``--rate R`` new users a second. htag's in-process
WebApp (one process: its sessions live in it) takes the same arrivals in the
same run, for the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_bench import HTAG_SOURCE, htag_python  # noqa: E402
from servers import Server, http_client, percentile, ws_connect  # noqa: E402

# new_processes_per_minute=0, max_connections_per_address=0, max_processes_per_address=0: every user of the bench comes from 127.0.0.1
SOURCE = (
    "\nfrom htagweb import WebServerWS\n"
    "app = WebServerWS(App, runtime_dir=RUNTIME_DIR, max_processes=5000, timeout_inactivity=3600, new_processes_per_minute=0,"
    " max_connections_per_address=0, max_processes_per_address=0)\n"
)
GIB = 2**30


async def one_user(url: str, clicks: int, latencies: list[float]) -> int:
    """A user's visit; returns the number of lost or wrong replies."""
    async with http_client(url) as http:
        await http.get("/")
        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
    wrong = 0
    async with ws_connect(url, cookie, open_timeout=60) as ws:
        await ws.recv()
        for n in range(1, clicks + 1):
            start = time.perf_counter()
            await ws.send(json.dumps({"id": "inc", "event": "click", "data": {"callback_id": str(n)}}))
            try:
                while (reply := json.loads(await asyncio.wait_for(ws.recv(), 30))).get("callback_id") != str(n):
                    pass
            except asyncio.TimeoutError:
                wrong += 1
                continue
            latencies.append(time.perf_counter() - start)
            if f"Count: {n}<" not in reply["updates"].get("count", ""):
                wrong += 1
    return wrong


async def crowd(url: str, users: int, clicks: int) -> dict[str, float]:
    latencies: list[float] = []
    start = time.perf_counter()
    results = await asyncio.gather(*(one_user(url, clicks, latencies) for _ in range(users)), return_exceptions=True)
    elapsed = time.perf_counter() - start
    failed = sum(1 for r in results if isinstance(r, BaseException))
    wrong = sum(r for r in results if isinstance(r, int))
    return {
        "clicks_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "lost_or_wrong": wrong + failed * clicks,
        "failed_users": failed,
        "total_s": elapsed,
    }


def server_pss(server: Server) -> tuple[int, int]:
    """(bytes of PSS summed over all processes of the server, number of processes)."""
    total, count = 0, 0
    for proc in server.processes():
        try:
            total += proc.memory_full_info().pss
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total, count


async def add_idle_users(url: str, users: int) -> None:
    async def visit() -> None:
        async with http_client(url, 120) as http:
            assert "Count: 0" in (await http.get("/")).text

    for start in range(0, users, 50):
        await asyncio.gather(*(visit() for _ in range(min(50, users - start))))


async def arrivals(url: str, users: int, rate: float | None = None) -> dict[str, float]:
    """``users`` new users, at once or ``rate`` a second: page, WebSocket, one click each."""
    times: list[float] = []

    async def arrive(n: int) -> None:
        if rate:
            await asyncio.sleep(n / rate)
        start = time.perf_counter()
        async with http_client(url, 120) as http:
            await http.get("/")
            cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        async with ws_connect(url, cookie, open_timeout=120) as ws:
            await ws.recv()
            await ws.send(json.dumps({"id": "inc", "event": "click", "data": {"callback_id": "1"}}))
            while (reply := json.loads(await asyncio.wait_for(ws.recv(), 120))).get("callback_id") != "1":
                pass
            if "Count: 1<" not in reply["updates"].get("count", ""):
                raise AssertionError("wrong count")
        times.append(time.perf_counter() - start)

    results = await asyncio.gather(*(arrive(n) for n in range(users)), return_exceptions=True)
    lost = sum(1 for r in results if isinstance(r, BaseException))
    return {
        "users": users,
        "lost": lost,
        "over_2s": sum(t > 2 for t in times) + lost,
        "p50_s": percentile(times, 50),
        "p99_s": percentile(times, 99),
        "max_s": max(times) if times else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--arrivals", type=int, help="only: that many new users on 4 workers, and on htag's WebApp")
    parser.add_argument("--rate", type=float, help="with --arrivals: new users a second (default: all at once)")
    args = parser.parse_args()
    if args.arrivals:
        servers = {"htag": lambda: Server(HTAG_SOURCE, python=htag_python()), "htagweb": lambda: Server(SOURCE, "--workers", "4")}
        for name, server in servers.items():
            with server() as running:
                asyncio.run(crowd(running.url, 5, 2))  # warm-up
                print(name, json.dumps(asyncio.run(arrivals(running.url, args.arrivals, args.rate))), flush=True)
        return
    users, clicks = (50, 5) if args.quick else (200, 10)
    results: dict[str, object] = {}
    for workers in (1, 2, 4):
        with Server(SOURCE, "--workers", str(workers)) as server:
            asyncio.run(crowd(server.url, 5, 2))  # warm-up
            results[f"{workers}_workers"] = asyncio.run(crowd(server.url, users, clicks))
            print(f"{workers} worker(s):", json.dumps(results[f"{workers}_workers"]))
    limit = GIB if args.quick else 4 * GIB
    with Server(SOURCE) as server:
        idle, memory = 0, server_pss(server)[0]
        steps = []
        while memory < limit and idle < 3000:
            asyncio.run(add_idle_users(server.url, 100))
            idle += 100
            memory, processes = server_pss(server)
            steps.append({"idle_users": idle, "pss_gib": round(memory / GIB, 3), "processes": processes})
            print("idle users:", steps[-1])
        user_pss = [p.memory_full_info() for p in server.processes() if re.search(r"python", p.name())]
        results["idle"] = {"limit_gib": limit / GIB, "steps": steps, "reached_at_users": idle if memory >= limit else None}
        results["idle_user_uss_mib_median"] = sorted(m.uss for m in user_pss)[len(user_pss) // 2] / 2**20
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
