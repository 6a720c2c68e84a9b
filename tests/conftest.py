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
