"""Parano mode against plain htagweb, in one run: python bench/parano_bench.py [--quick]

- WebSocket interaction round trip, p50/p99 over N clicks, plain and parano (the
  parano client is tests/paranoclient.py: Python, pycryptodome);
- server CPU time of one key exchange (what a new user costs the server, and what a
  flood of hellos costs it per request), measured in the server process over HTTP;
- throughput of the encryption layer (channel seal/open), MB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from paranoclient import ParanoUser, click_message, text  # noqa: E402
from servers import Server, http_client, percentile, report, ws_connect  # noqa: E402

from htagweb import cipher  # noqa: E402

# the same flags for both servers; without permessage-deflate, which parano servers
# should run without (ciphertext does not compress: app.run() turns it off for them)
ARGS = ("--ws-per-message-deflate", "false")
# new_processes_per_minute=0, max_connections_per_address=0, max_processes_per_address=0: every user of a bench comes from 127.0.0.1
SOURCE = (
    "\nfrom htagweb import WebServerWS\n"
    "app = WebServerWS(App, runtime_dir=RUNTIME_DIR, new_processes_per_minute=0, max_connections_per_address=0,"
    " max_processes_per_address=0{})\n"
)


async def plain_user(url: str) -> tuple[httpx.AsyncClient, Any]:
    http = http_client(url)
    await http.get("/")
    cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
    ws = await ws_connect(url, cookie)
    await ws.recv()
    return http, ws


async def parano_user(url: str) -> tuple[ParanoUser, Any, Any]:
    user = ParanoUser(url)
    await user.connect()
    ws = await user.websocket().__aenter__()
    channel = await user.open_websocket(ws)
    channel.open(await ws.recv())
    return user, ws, channel


async def compare(plain_url: str, parano_url: str, clicks: int) -> tuple[list[float], list[float]]:
    """One user on each server, kept; rounds of clicks alternate between them."""
    _, plain_ws = await plain_user(plain_url)
    user, parano_ws, channel = await parano_user(parano_url)
    plain_times: list[float] = []
    parano_times: list[float] = []
    n = 0
    for _ in range(20):
        for _ in range(clicks // 20):
            n += 1
            start = time.perf_counter()
            await plain_ws.send(click_message("inc", str(n)).decode())
            while json.loads(await plain_ws.recv()).get("callback_id") != str(n):
                pass
            plain_times.append(time.perf_counter() - start)
        for _ in range(clicks // 20):
            n += 1
            start = time.perf_counter()
            await parano_ws.send(user.event_frame(channel, click_message("inc", str(n))))
            while json.loads(text(channel.open(await parano_ws.recv()))).get("callback_id") != str(n):
                pass
            parano_times.append(time.perf_counter() - start)
    return plain_times, parano_times


def key_exchange_cpu(rounds: int) -> float:
    """CPU seconds of one key exchange in-process (ECDH, ECDSA signature, HKDF, ticket)."""
    identity = cipher.IdentityKey(cipher.ECC.generate(curve="P-256"))
    sealer = cipher.TicketSealer([os.urandom(32)])
    key = cipher.ECC.generate(curve="P-256")
    hello = cipher.ClientHello.parse(ParanoUser.hello(key.public_key().export_key(format="SEC1", compress=False), "http://x"))
    start = time.process_time()
    for _ in range(rounds):
        cipher.key_exchange(hello, identity, sealer, 3600)
    return (time.process_time() - start) / rounds


async def server_cpu_per_hello(server: Server, rounds: int) -> float:
    """Server CPU seconds (its worker, over HTTP) per key exchange."""
    main = psutil.Process(server.proc.pid)
    worker = max([main, *main.children(recursive=True)], key=lambda p: p.cpu_times().user)
    async with http_client(server.url) as http:
        hellos = []
        for _ in range(rounds):
            key = cipher.ECC.generate(curve="P-256")
            hellos.append(ParanoUser.hello(key.public_key().export_key(format="SEC1", compress=False), server.url))

        before = sum(worker.cpu_times()[:2])
        for body in hellos:
            assert (await http.post("/_htagweb/kx", content=body)).status_code == 200
        return (sum(worker.cpu_times()[:2]) - before) / len(hellos)


def layer_throughput(size: int, rounds: int) -> tuple[float, float]:
    """MB/s of sealing and of opening ``size``-byte messages on one channel."""
    ticket = cipher.Ticket(int(time.time()) + 60, os.urandom(16), os.urandom(32), os.urandom(32))
    sender = cipher.Channel(ticket, b"W", os.urandom(16))
    payload = os.urandom(size)
    start = time.perf_counter()
    boxes = [sender.seal(payload) for _ in range(rounds)]
    seal_rate = size * rounds / (time.perf_counter() - start) / 1e6
    key = sender.outbound_key
    start = time.perf_counter()
    for n, message in enumerate(boxes):
        box = cipher.accept_box(message)[1] if n == 0 else cipher.data_box(message)
        cipher.open_box(key, b"W", cipher.S2C, sender.channel_id, n, box)
    return seal_rate, size * rounds / (time.perf_counter() - start) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    clicks = 100 if args.quick else 500
    results: dict[str, float] = {}
    # servers on one core, this client on the other: both servers meet the same scheduling
    os.sched_setaffinity(0, {1})
    with Server(SOURCE.format(""), *ARGS) as plain, Server(SOURCE.format(", parano=True"), *ARGS) as parano:
        os.sched_setaffinity(0, {0})
        asyncio.run(compare(plain.url, parano.url, 200))  # warm-up
        plain_times, parano_times = asyncio.run(compare(plain.url, parano.url, clicks))
        results["key_exchange_request_server_cpu_ms"] = asyncio.run(server_cpu_per_hello(parano, 50 if args.quick else 200)) * 1000
    for name, times in (("plain", plain_times), ("parano", parano_times)):
        results[f"{name}_click_p50_ms"] = percentile(times, 50) * 1000
        results[f"{name}_click_p99_ms"] = percentile(times, 99) * 1000
    results["click_p50_overhead_pct"] = (results["parano_click_p50_ms"] / results["plain_click_p50_ms"] - 1) * 100
    results["key_exchange_in_process_cpu_ms"] = key_exchange_cpu(50 if args.quick else 300) * 1000
    seal, unseal = layer_throughput(64 * 1024, 200 if args.quick else 2000)
    results["seal_64k_MBps"], results["open_64k_MBps"] = seal, unseal
    seal_small, open_small = layer_throughput(300, 2000 if args.quick else 20000)
    results["seal_300B_MBps"], results["open_300B_MBps"] = seal_small, open_small
    report(results, args.json)


if __name__ == "__main__":
    main()
