"""Shared test harness: real servers (tests/serverprocess.py) and a real redis-server."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cgroups import Freezer, cgroup, move, unavailable
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


class RedisServer:
    """A real redis-server on a private Unix socket, which a test may stop and start again."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="hwr-"))
        self.socket = self.folder / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", "0", "--unixsocket", str(self.socket), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([*command, "--dir", str(self.folder)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # as a crash: no goodbye to its clients
            self.proc.wait(10)
            self.proc = None
        self.socket.unlink(missing_ok=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped and removed at teardown."""
    redis = RedisServer()
    try:
        redis.start()
        yield redis
    finally:
        redis.stop()
        shutil.rmtree(redis.folder, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def pids_limit():
    """``pids_limit(pid, most)``: ``pid`` moved to a cgroup of its own where at most ``most``
    tasks may live (a container's or a systemd unit's ``TasksMax=``): a fork beyond them fails
    with EAGAIN. Ask for it before ``server`` so that the server stops before the cgroup goes."""
    with _cgroup("pids") as (root, group):
        if root.name != "pids" and "pids" not in (root / "cgroup.subtree_control").read_text().split():
            (root / "cgroup.subtree_control").write_text("+pids")  # cgroup v2: groups below the root get it

        def limit(pid: int, most: int | str) -> None:
            (group / "pids.max").write_text(str(most))
            move(group, pid)

        try:
            yield limit
        finally:
            (group / "pids.max").write_text("max")


@pytest.fixture
def freezer():
    """A :class:`cgroups.Freezer`, thawed at teardown. Ask for it before ``server`` (see ``pids_limit``)."""
    with _cgroup("freezer") as (root, group):
        frozen = Freezer(root, group)
        try:
            yield frozen
        finally:
            frozen.thaw()


@contextlib.contextmanager
def _cgroup(controller: str) -> Iterator[tuple[Path, Path]]:
    """See :func:`cgroups.cgroup`; the test is skipped where none can be made (tests run as root in CI)."""
    why = unavailable(controller)
    if why is not None:
        pytest.skip(why)
    with cgroup(controller) as made:
        yield made
