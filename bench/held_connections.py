"""Connections held without a request, from one address, then a new user from another:

    python bench/held_connections.py [--connections N] [--json FILE]

htagweb with its defaults, served twice in one run, its worker's limit of open files then
set to 1,024 (``--worker-files``; soft and hard: a worker raises its soft limit to the hard
one, which is often far higher, and this machine's client cannot open that many):

- under uvicorn's own HTTP protocol (``uvicorn server:app``), as before htagweb had one;
- under htagweb's (``--http htagweb.connections:HTTPProtocol``, what ``app.run()`` uses).

For each: N (1,200) connections from 127.0.0.1, each sending half a request head
(slowloris); how many the server holds, answered with a 429, or closed unanswered (a
connection closed at once may be reset before its client reads the 429);
then a newcomer from 127.0.0.2 (page, WebSocket, first click): its time, or its error;
then, once ``timeout_request_head`` (10 s) has passed, how many it still holds.

Then, on a new server each: 50 connections from 127.0.0.1 each send 4 MB of pipelined
``GET /_htagweb/health`` and read no answer; 3 s later, how much the worker grew, then the
newcomer from 127.0.0.2 as above.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flood_bench import HTAGWEB_SOURCE, newcomer  # noqa: E402
from servers import LIMITED, Server  # noqa: E402

HALF_A_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"


async def still_open(connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> tuple[int, int]:
    """(connections the server still holds, those it answered with a 429)."""

    async def look(reader: asyncio.StreamReader) -> bytes | None:
        try:
            return await asyncio.wait_for(reader.read(), 0.5)
        except asyncio.TimeoutError:
            return None
        except ConnectionError:
            return b""

    answers = await asyncio.gather(*(look(reader) for reader, _ in connections))
    return sum(a is None for a in answers), sum(a is not None and a.startswith(b"HTTP/1.1 429") for a in answers)


async def scenario(url: str, port: int, n: int) -> dict[str, float | str]:
    connections = []
    for _ in range(n):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:  # this client's own limit
            break
        writer.write(HALF_A_HEAD)
        connections.append((reader, writer))  # a writer let go closes its connection
    await asyncio.sleep(1)
    held, refused = await still_open(connections)
    result: dict[str, float | str] = {"opened": float(len(connections)), "held": float(held), "refused_429": float(refused)}
    result["closed_unanswered"] = float(len(connections) - held - refused)  # beyond the few refusals read before they close
    start = time.perf_counter()
    try:
        result["newcomer_ms"] = await asyncio.wait_for(newcomer(url), 15) * 1000
    except Exception as exc:
        result["newcomer_ms"] = f"{type(exc).__name__} after {time.perf_counter() - start:.1f} s"
    await asyncio.sleep(11)
    result["held_after_11s"] = float((await still_open(connections))[0])
    for _, writer in connections:
        writer.close()
    return result


async def pipelined(url: str, port: int, worker: psutil.Process) -> dict[str, float | str]:
    request = b"GET /_htagweb/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    before = worker.memory_info().rss
    connections = []
    for _ in range(50):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request * (4 * 1024 * 1024 // len(request)))
        connections.append((reader, writer))
    await asyncio.sleep(3)
    result: dict[str, float | str] = {"pipelined_growth_mb": (worker.memory_info().rss - before) / 2**20}
    start = time.perf_counter()
    try:
        result["pipelined_newcomer_ms"] = await asyncio.wait_for(newcomer(url), 15) * 1000
    except Exception as exc:
        result["pipelined_newcomer_ms"] = f"{type(exc).__name__} after {time.perf_counter() - start:.1f} s"
    for _, writer in connections:
        writer.transport.abort()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1200)
    parser.add_argument("--worker-files", type=int, default=1024, help="the worker's limit of open files")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this client's: room for its connections
    results = {}
    for name, http in (("uvicorn's protocol", "auto"), ("htagweb's protocol", LIMITED)):
        with Server(HTAGWEB_SOURCE.format(options=""), http=http) as server:
            assert server.proc is not None
            psutil.Process(server.proc.pid).rlimit(psutil.RLIMIT_NOFILE, (args.worker_files, args.worker_files))
            results[name] = asyncio.run(scenario(server.url, server.port, args.connections))
        with Server(HTAGWEB_SOURCE.format(options=""), http=http) as server:
            assert server.proc is not None
            results[name].update(asyncio.run(pipelined(server.url, server.port, psutil.Process(server.proc.pid))))
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    keys = list(next(iter(results.values())))
    print(f"{'':<22}" + "".join(f"{name:>40}" for name in results))
    for key in keys:
        cells = "".join(f"{v:>40.0f}" if isinstance(v, float) else f"{v:>40}" for v in (r[key] for r in results.values()))
        print(f"{key:<22}{cells}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
