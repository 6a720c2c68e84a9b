"""Linux control groups for the tests and benchmarks that need them (as root): a group of
its own under a controller, and the freezer."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


def unavailable(controller: str) -> str | None:
    """Why no group can be made under ``controller`` here; None if one can."""
    root = _root(controller)
    if root is None or not os.access(root, os.W_OK):
        return f"no writable cgroup {controller} controller on this machine (as root it has one)"
    return None


@contextlib.contextmanager
def cgroup(controller: str) -> Iterator[tuple[Path, Path]]:
    """(root, group): a cgroup of its own under ``controller``'s hierarchy (cgroup v1) or the
    unified one (v2); at its end, once what was moved there ended, it goes."""
    root = _root(controller)
    assert root is not None, unavailable(controller)
    group = root / f"htagweb-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        yield root, group
    finally:
        deadline = time.monotonic() + 20
        while (group / "cgroup.procs").read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)
        for left in (group / "cgroup.procs").read_text().split():  # what stops its processes already failed
            try:
                (root / "cgroup.procs").write_text(left)
            except OSError:
                pass
        group.rmdir()


def move(group: Path, pid: int) -> None:
    if str(pid) not in (group / "cgroup.procs").read_text().split():
        (group / "cgroup.procs").write_text(str(pid))


class Freezer:
    """A process frozen by the cgroup freezer (``docker pause``, ``systemctl freeze``): it
    neither runs nor reads as stopped in ``/proc`` (D under cgroup v1, S under v2). Thawed,
    it goes back to its own cgroup: what it forks later is not frozen with the next one."""

    def __init__(self, root: Path, group: Path) -> None:
        self.state, self.frozen, self.thawed = (
            (group / "freezer.state", "FROZEN", "THAWED") if root.name == "freezer" else (group / "cgroup.freeze", "1", "0")
        )
        self.root = root
        self.group = group
        #: the frozen processes, and the cgroup each came from
        self.homes: dict[int, Path] = {}

    def freeze(self, pid: int) -> None:
        self.homes[pid] = self._home(pid)
        move(self.group, pid)
        self.state.write_text(self.frozen)

    def thaw(self) -> None:
        self.state.write_text(self.thawed)
        for pid, home in self.homes.items():
            try:
                move(home, pid)
            except (ProcessLookupError, FileNotFoundError):  # it ended meanwhile
                pass
        self.homes.clear()

    def _home(self, pid: int) -> Path:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (self.root.name == "freezer" and "freezer" in controllers.split(",")) or (self.root.name != "freezer" and controllers == ""):
                return self.root / path.lstrip("/")
        return self.root


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
