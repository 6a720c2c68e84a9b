"""A flood of anonymous page loads, and the users around it, on htagweb and on htag's
own in-process WebApp (same app, same client, one run):

    python bench/flood_bench.py [--quick] [--json FILE] [--gets N]

- a user opens the page, its WebSocket and clicks, before the flood;
- N (2,000) cookieless GETs of / from 127.0.0.1, 20 at a time, while that user
  clicks every 50 ms: flood throughput, answers by status, the user's click p50/p99;
- then a newcomer from 127.0.0.2: page, WebSocket, first click, timed;
- what the flood left: user processes (htagweb), growth of the server's memory.

htagweb runs with its defaults (max_processes 500, new_processes_per_minute 60) and
with max_processes=40, the issue's setting. htag's WebApp runs from bench/.venv-htag-3.X
(see runtime_bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_bench import HTAG_SOURCE, click, htag_python, visit  # noqa: E402
from servers import TLS, Server, percentile, ws_connect  # noqa: E402

HTAGWEB_SOURCE = "\nfrom htagweb import WebServerWS\napp = WebServerWS(App, runtime_dir=RUNTIME_DIR{options})\n"


async def flood(url: str, gets: int, concurrency: int = 20) -> tuple[float, dict[int, int]]:
    statuses: dict[int, int] = {}

    async def one_by_one(n: int) -> None:
        async with httpx.AsyncClient(base_url=url, verify=TLS, trust_env=False, timeout=60) as http:
            for _ in range(n):
                http.cookies.clear()
                status = (await http.get("/")).status_code
                statuses[status] = statuses.get(status, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(one_by_one(gets // concurrency) for _ in range(concurrency)))
    return time.perf_counter() - start, statuses


async def newcomer(url: str) -> float:
    """Page, WebSocket and first click of a new user from another loopback address."""
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2", verify=TLS)
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, transport=transport, trust_env=False, timeout=60) as http:
        page = await http.get("/")
        assert page.status_code == 200, page.status_code
        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        async with ws_connect(url, cookie, local_addr=("127.0.0.2", 0), open_timeout=60) as ws:
            await ws.recv()
            _, right = await click(ws, 1)
            assert right
    return time.perf_counter() - start


async def scenario(server: Server, gets: int) -> dict[str, float]:
    http, _, _, ws = await visit(server.url)
    n = 0
    for n in range(1, 21):  # warm-up
        await click(ws, n)
    memory_before = sum(p.memory_full_info().uss for p in server.processes() if p.is_running())
    clicks: list[float] = []
    flooding = asyncio.create_task(flood(server.url, gets))
    while not flooding.done():
        n += 1
        elapsed, right = await click(ws, n)
        assert right, "a click of the user active before the flood got a wrong answer"
        clicks.append(elapsed)
        await asyncio.sleep(0.05)
    duration, statuses = await flooding
    arrival = await newcomer(server.url)
    n += 1
    after, right = await click(ws, n)
    assert right
    await ws.close()
    await http.aclose()
    processes = [p for p in server.processes() if p.is_running()]
    memory_after = sum(p.memory_full_info().uss for p in processes)
    return {
        "flood_gets_per_s": gets / duration,
        **{f"flood_{status}": float(count) for status, count in sorted(statuses.items())},
        "user_click_p50_ms": percentile(clicks, 50) * 1000,
        "user_click_p99_ms": percentile(clicks, 99) * 1000,
        "user_click_after_ms": after * 1000,
        "newcomer_ms": arrival * 1000,
        "server_processes_after": float(len(processes)),
        "memory_growth_mb": (memory_after - memory_before) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 GETs instead of 2,000")
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    gets = 500 if args.quick else args.gets
    results: dict[str, dict[str, float]] = {}
    setups = [("htag", HTAG_SOURCE, htag_python()), ("htagweb", HTAGWEB_SOURCE.format(options=""), sys.executable),
              ("htagweb_max40", HTAGWEB_SOURCE.format(options=", max_processes=40"), sys.executable)]  # fmt: skip
    for name, source, python in setups:
        with Server(source, python=python) as server:
            results[name] = asyncio.run(scenario(server, gets))
    keys = sorted({key for result in results.values() for key in result}, key=lambda k: (not k.startswith("flood"), k))
    print(f"{'metric':<26}{'htag WebApp':>13}{'htagweb':>11}{'ratio':>8}{'max 40':>10}{'ratio':>8}")
    for key in keys:
        base = results["htag"].get(key, 0.0)
        row = f"{key:<26}{base:>13.1f}"
        for name in ("htagweb", "htagweb_max40"):
            value = results[name].get(key, 0.0)
            row += f"{value:>11.1f}" if name == "htagweb" else f"{value:>10.1f}"
            row += f"{value / base:>8.2f}" if base else f"{'':>8}"
        print(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
