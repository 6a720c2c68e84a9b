"""Shared test harness: real servers (tests/serverprocess.py) and a real redis-server."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
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
            _move(group, pid)

        try:
            yield limit
        finally:
            (group / "pids.max").write_text("max")


class Freezer:
    """A process frozen by the cgroup freezer (``docker pause``, ``systemctl freeze``): it
    neither runs nor reads as stopped in ``/proc`` (D under cgroup v1, S under v2)."""

    def __init__(self, root: Path, group: Path) -> None:
        self.state, self.frozen, self.thawed = (
            (group / "freezer.state", "FROZEN", "THAWED") if root.name == "freezer" else (group / "cgroup.freeze", "1", "0")
        )
        self.group = group

    def freeze(self, pid: int) -> None:
        _move(self.group, pid)
        self.state.write_text(self.frozen)

    def thaw(self) -> None:
        self.state.write_text(self.thawed)


@pytest.fixture
def freezer():
    """A :class:`Freezer`, thawed at teardown. Ask for it before ``server`` (see ``pids_limit``)."""
    with _cgroup("freezer") as (root, group):
        frozen = Freezer(root, group)
        try:
            yield frozen
        finally:
            frozen.thaw()


@contextlib.contextmanager
def _cgroup(controller: str) -> Iterator[tuple[Path, Path]]:
    """(root, group): a cgroup of its own under ``controller``'s hierarchy (cgroup v1) or the
    unified one (v2); at its end, once what was moved there ended, it goes."""
    root = _root(controller)
    if root is None or not os.access(root, os.W_OK):
        pytest.skip(f"no writable cgroup {controller} controller on this machine (tests run as root in CI)")
    group = root / f"htagweb-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        yield root, group
    finally:
        deadline = time.monotonic() + 20
        while (group / "cgroup.procs").read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)
        for left in (group / "cgroup.procs").read_text().split():  # the server's stop already failed the test
            try:
                (root / "cgroup.procs").write_text(left)
            except OSError:
                pass
        group.rmdir()


def _move(group: Path, pid: int) -> None:
    if str(pid) not in (group / "cgroup.procs").read_text().split():
        (group / "cgroup.procs").write_text(str(pid))


def _root(controller: str) -> Path | None:
    """Where ``controller`` is: its own hierarchy (cgroup v1) or the unified one (v2, where the
    freezer is built in)."""
    if Path(f"/sys/fs/cgroup/{controller}/cgroup.procs").exists():
        return Path(f"/sys/fs/cgroup/{controller}")
    unified = Path("/sys/fs/cgroup")
    try:
        controllers = (unified / "cgroup.controllers").read_text().split()
    except OSError:
        return None
    return unified if controller in controllers or controller == "freezer" else None
