"""htagweb against htag's own in-process WebApp, same app, same client, one run:

    python bench/runtime_bench.py [--quick] [--json FILE] [--no-pin] [--spare-processes N] [--merge-memory] [--workers N]

htag 2.0.28's WebApp needs Starlette 0.52 (it calls the add_websocket_route that
Starlette 1.x removed), so it runs from its own virtualenv, bench/.venv-htag-3.X (the Python
version this script runs on: both on the same interpreter), created here on first use. Both servers run under the same uvicorn
(uvicorn[standard], default options, no access log).

Measured with a protocol-level client (httpx + websockets):
- new-user cold start: GET / until the WebSocket's initial payload, paced (a quiet
  pause before each) and back to back (5 new users in a row, each round);
- click round trip over one WebSocket, p50/p99;
- 50 new users arriving at once, 20 clicks each: throughput, p99, worst cold
  start, lost or wrong replies;
- memory per idle user: USS/PSS of htagweb's user processes; growth of htag's
  single process per added user.

``--workers N`` serves htagweb with N uvicorn workers (one per core is how it is
deployed; htag's WebApp keeps every user in its one process and cannot use more).
``--merge-memory`` serves htagweb with ``merge_memory=True`` and turns Linux's KSM
on for the whole run (root only; bench/ksm.py), so that every measure includes what
ksmd's scanning costs; the idle users are measured once ksmd has gone over them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ksm import ksm_running, ksmd_cpu_seconds, settle  # noqa: E402
from servers import Server, http_client, percentile, ws_connect  # noqa: E402

from htagweb import manage  # noqa: E402

HERE = Path(__file__).resolve().parent
#: one per Python version: htag and htagweb are compared on the same interpreter
VENV = HERE / f".venv-htag-{sys.version_info.major}.{sys.version_info.minor}"
#: pause after each new user, so that what a server does in the background for it
#: (htagweb forks and rehearses its next spare) is done before anything else is measured
QUIET = 0.1
WAKE_UP_CLICKS = 10
#: new users arriving back to back, in each round
BACK_TO_BACK = 5
HTAG_SOURCE = "\nfrom htag import WebApp\napp = WebApp(App).app\n"
# new_processes_per_minute=0, max_connections_per_address=0, max_processes_per_address=0: every user of the bench comes from 127.0.0.1
HTAGWEB_SOURCE = (
    "\nfrom htagweb import WebServerWS\n"
    "app = WebServerWS(App, runtime_dir=RUNTIME_DIR, timeout_inactivity=3600, new_processes_per_minute=0,"
    " max_connections_per_address=0, max_processes_per_address=0{options})\n"
)


def htag_python() -> str:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "htag==2.0.28", "starlette==0.52.1", "uvicorn[standard]"], check=True)
    return str(python)


async def visit(url: str) -> tuple[httpx.AsyncClient, str, float, object]:
    """A new user: GET the page, open the WebSocket, wait for the initial payload."""
    http = http_client(url)
    start = time.perf_counter()
    await http.get("/")
    cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
    ws = await ws_connect(url, cookie, open_timeout=60)
    await ws.recv()
    return http, cookie, time.perf_counter() - start, ws


async def click(ws, n: int) -> tuple[float, bool]:
    start = time.perf_counter()
    await ws.send(json.dumps({"id": "inc", "event": "click", "data": {"callback_id": str(n)}}))
    while (reply := json.loads(await asyncio.wait_for(ws.recv(), 30))).get("callback_id") != str(n):
        pass
    return time.perf_counter() - start, f"Count: {n}<" in json.dumps(reply.get("updates", {})).replace("\\u003c", "<")


async def cold_starts(url: str, users: int) -> list[float]:
    times = []
    for _ in range(users):
        http, _, elapsed, ws = await visit(url)
        times.append(elapsed)
        await ws.close()
        await http.aclose()
    return times


async def clicks(url: str, count: int) -> list[float]:
    http, _, _, ws = await visit(url)
    times = [(await click(ws, n))[0] for n in range(1, count + 1)]
    await ws.close()
    await http.aclose()
    return times


async def crowd(url: str, users: int, per_user: int) -> dict[str, float]:
    latencies: list[float] = []
    arrivals: list[float] = []
    wrong = 0

    async def one() -> None:
        nonlocal wrong
        http, _, elapsed, ws = await visit(url)
        arrivals.append(elapsed)
        for n in range(1, per_user + 1):
            try:
                latency, right = await click(ws, n)
            except asyncio.TimeoutError:
                wrong += 1
                continue
            latencies.append(latency)
            wrong += not right
        await ws.close()
        await http.aclose()

    start = time.perf_counter()
    failures = [r for r in await asyncio.gather(*(one() for _ in range(users)), return_exceptions=True) if r is not None]
    elapsed = time.perf_counter() - start
    return {
        "clicks_per_s": len(latencies) / elapsed,
        "click_p99_ms": percentile(latencies, 99) * 1000,
        "click_max_ms": max(latencies) * 1000,
        "arrival_max_ms": max(arrivals) * 1000 if arrivals else float("nan"),
        "users_over_1s": sum(a > 1 for a in arrivals) + len(failures),
        "lost_or_wrong": wrong + len(failures) * per_user,
    }


async def idle_users(url: str, users: int) -> list:
    visits = [await visit(url) for _ in range(users)]
    for http, _, _, ws in visits:
        await ws.close()
        await http.aclose()
    return visits


async def alternate(
    servers: list[Server], rounds: int, per_round: int
) -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
    """Cold starts, and clicks of one user kept per server (500 clicks of one user, as
    the target says), in rounds alternating between the servers so that a noisy
    moment of this 2-core machine hits both alike. Each cold start is followed by
    a pause (QUIET), then a few clicks not counted: a click measured right after a
    pause would mostly measure how fast an idle CPU wakes up. Then, each round, a few
    new users back to back (no pause between them: what the server does in the
    background for one competes with the next)."""
    starts: list[list[float]] = [[] for _ in servers]
    back_to_back: list[list[float]] = [[] for _ in servers]
    times: list[list[float]] = [[] for _ in servers]
    users = [await visit(server.url) for server in servers]
    for _, _, _, ws in users:  # warm-up
        for i in range(30):
            await click(ws, i + 1)
    counts = [30] * len(servers)
    for _ in range(rounds):
        for n, server in enumerate(servers):
            starts[n] += await cold_starts(server.url, 1)
            await asyncio.sleep(QUIET)
            ws = users[n][3]
            for measured in [False] * WAKE_UP_CLICKS + [True] * per_round:
                counts[n] += 1
                elapsed = (await click(ws, counts[n]))[0]
                if measured:
                    times[n].append(elapsed)
            back_to_back[n] += await cold_starts(server.url, BACK_TO_BACK)
            await asyncio.sleep(QUIET)
    for http, _, _, ws in users:
        await ws.close()
        await http.aclose()
    return starts, back_to_back, times


def latencies(servers: list[Server], quick: bool) -> list[dict[str, float]]:
    starts, back_to_back, times = asyncio.run(alternate(servers, 10 if quick else 50, 10))
    return [
        {
            "cold_start_p50_ms": percentile(starts[n], 50) * 1000,
            "cold_start_p99_ms": percentile(starts[n], 99) * 1000,
            "cold_start_b2b_p50_ms": percentile(back_to_back[n], 50) * 1000,
            "cold_start_b2b_p99_ms": percentile(back_to_back[n], 99) * 1000,
            "click_p50_ms": percentile(times[n], 50) * 1000,
            "click_p99_ms": percentile(times[n], 99) * 1000,
        }
        for n in range(len(servers))
    ]


def user_process_pids(server: Server) -> list[int]:
    """Asked to the fork-server, which knows them all."""
    return [user.pid for user in manage.users(server.runtime_dir)]


def measure(server: Server, quick: bool, is_htagweb: bool, result: dict[str, float], merging: bool = False) -> dict[str, float]:
    for key, value in asyncio.run(crowd(server.url, 50, 5 if quick else 20)).items():
        result[f"crowd_{key}"] = value
    main_process = psutil.Process(server.proc.pid)
    before = main_process.memory_full_info().uss
    users = 20
    asyncio.run(idle_users(server.url, users))
    if merging:
        print(f"ksmd went over the idle users in {settle():.0f} s")
    if is_htagweb:
        infos = sorted((psutil.Process(pid).memory_full_info() for pid in user_process_pids(server)), key=lambda m: m.uss)
        result["idle_user_uss_mb"] = infos[len(infos) // 2].uss / 1e6
        result["idle_user_pss_mb"] = infos[len(infos) // 2].pss / 1e6
    else:
        result["idle_user_uss_mb"] = (main_process.memory_full_info().uss - before) / users / 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--spare-processes", type=int, help="htagweb's spare_processes (default: its own default)")
    parser.add_argument("--workers", type=int, default=1, help="htagweb's uvicorn workers (default 1)")
    parser.add_argument("--merge-memory", action="store_true", help="htagweb with merge_memory=True, KSM on for the run (root)")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cold starts and clicks with every server process on one core and the client on another (default)",
    )
    args = parser.parse_args()
    results = {}
    options = "" if args.spare_processes is None else f", spare_processes={args.spare_processes}"
    options += ", merge_memory=True" if args.merge_memory else ""
    all_cores = os.sched_getaffinity(0)
    pinned = args.pin and len(all_cores) >= 2
    if pinned:
        server_core, client_core = sorted(all_cores)[:2]
        os.sched_setaffinity(0, {server_core})  # inherited by the servers and all their processes
    with (
        ksm_running() if args.merge_memory else contextlib.nullcontext(),
        Server(HTAG_SOURCE, python=htag_python()) as htag,
        Server(HTAGWEB_SOURCE.format(options=options), "--workers", str(args.workers)) as htagweb,
    ):
        ksmd_before = ksmd_cpu_seconds() if args.merge_memory else 0.0
        if pinned:
            os.sched_setaffinity(0, {client_core})
        first, second = latencies([htag, htagweb], args.quick)
        if pinned:  # the crowd and the memory measures run on every core
            os.sched_setaffinity(0, all_cores)
            for process in htag.processes() + htagweb.processes():
                process.cpu_affinity(sorted(all_cores))
        results["htag"] = measure(htag, args.quick, False, first)
        results["htagweb"] = measure(htagweb, args.quick, True, second, args.merge_memory)
        if args.merge_memory:
            print(f"ksmd used {ksmd_cpu_seconds() - ksmd_before:.1f} s of CPU during the run")
    print(f"{'metric':<28}{'htag WebApp':>14}{'htagweb':>12}{'ratio':>9}")
    for key in results["htag"]:
        a, b = results["htag"][key], results["htagweb"][key]
        ratio = b / a if a else float("nan")
        print(f"{key:<28}{a:>14.3f}{b:>12.3f}{ratio:>9.2f}")
    if "idle_user_pss_mb" in results["htagweb"]:
        print(f"{'idle_user_pss_mb':<28}{'':>14}{results['htagweb']['idle_user_pss_mb']:>12.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
