"""docs/deploy.md, for real: two instances, one redis-server, nginx sticky on the cookie."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from helpers import User, click, count, server_source

SECRET = "the-same-secret-on-both-machines"
CONFIG = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    map $http_cookie $htagweb_session {{
        "~(?:^|;\\s*)(?:__Host-)?htagweb_session=(?<sid>[^;]+)" $sid;
        default "";
    }}
    upstream htagweb {{
        hash $htagweb_session consistent;
        server 127.0.0.1:{one} max_fails=1 fail_timeout=30s;
        server 127.0.0.1:{two} max_fails=1 fail_timeout=30s;
    }}
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://htagweb;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def nginx():
    folder = Path(tempfile.mkdtemp(prefix="hwn-"))
    started: list[subprocess.Popen[bytes]] = []

    def start(one: int, two: int) -> str:
        port = free_port()
        (folder / "nginx.conf").write_text(CONFIG.format(dir=folder, one=one, two=two, port=port))
        cmd = ["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off; user root;"]
        started.append(subprocess.Popen(cmd, stderr=subprocess.PIPE))
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                assert started[0].poll() is None and time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)

    try:
        yield start
    finally:
        for proc in started:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def test_user_keeps_the_session_when_their_instance_stops(server, redis_url, nginx):
    one = server(server_source("WebServerWS", session_store=redis_url, secret=SECRET, trust_proxy_headers=True))
    two = server(server_source("WebServerWS", session_store=redis_url, secret=SECRET, trust_proxy_headers=True))
    url = nginx(one.port, two.port)

    async def scenario():
        async with User(url) as user:
            await user.http.get("/get")  # the session cookie, which nginx's hash needs (see docs/deploy.md)
            first = await user.page()
            await user.http.get("/set", params={"v": "survives"})
            async with user.ws() as ws:  # WebSocket through nginx
                await ws.recv()
            served_by = one if "user process spawned" in one.log else two
            other = two if served_by is one else one
            assert "user process spawned" not in other.log  # sticky: all on one instance
            assert count(first.text) == 0
            served_by.halt()  # that machine goes away
            assert (await user.http.get("/get")).json() == {"from_route": "survives"}  # session moved
            moved = await user.page()
            assert moved.status_code == 200 and count(moved.text) == 0  # live state did not
            assert "user process spawned" in other.log

    asyncio.run(scenario())


def test_behind_nginx_the_connections_of_many_users_are_not_limited_as_one_address(server, redis_url, nginx):
    """Behind a proxy every connection has the proxy's address: with trust_proxy_headers (as
    docs/deploy.md says) the limit of connections per address is the proxy's to apply, and
    many users through it each keep their WebSocket."""
    options = {"session_store": redis_url, "secret": SECRET, "trust_proxy_headers": True, "max_connections_per_address": 2}
    one = server(server_source("WebServerWS", **options))
    url = nginx(one.port, one.port)

    async def scenario():
        users = [User(url) for _ in range(4)]
        sockets = []
        try:
            for user in users:
                assert count((await user.page()).text) == 0
                sockets.append(await user.ws())
                await sockets[-1].recv()
            for ws in sockets:
                assert count((await click(ws, "inc"))["updates"]["count"]) == 1
        finally:
            for ws in sockets:
                await ws.close()
            for user in users:
                await user.http.aclose()

    asyncio.run(scenario())
    assert "refused connections" not in one.log
