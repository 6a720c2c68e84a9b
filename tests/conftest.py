"""Shared test harness: real servers (tests/serverprocess.py) and a real redis-server."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from serverprocess import ROOT, ServerProcess

__all__ = ["ROOT", "ServerProcess"]

@pytest.fixture
def server(tmp_path: Path):
    """``server(source, *uvicorn_args, files={...})`` starts one; all are stopped at teardown."""
    started: list[ServerProcess] = []

    def start(
        source: str,
        *args: str,
        files: dict[str, str] | None = None,
        command: list[str] | None = None,
        gunicorn: bool = False,
        script: str | None = None,
    ) -> ServerProcess:
        workdir = tmp_path / f"srv{len(started)}"
        workdir.mkdir()
        srv = ServerProcess(source, workdir, files)
        started.append(srv)
        return srv.start(*args, command=command, gunicorn=gunicorn, script=script)

    yield start
    errors = []
    for srv in started:
        print(f"--- log of server {srv.workdir.name} ---\n{srv.log}")  # shown by pytest when the test fails
        try:
            srv.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors)


@pytest.fixture
def redis_url():
    """A real redis-server on a private Unix socket, stopped at teardown."""
    folder = Path(tempfile.mkdtemp(prefix="hwr-"))
    sock = folder / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
