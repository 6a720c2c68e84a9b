"""Servers in subprocesses on free loopback ports, always stopped, for the tests
and the benchmarks.

Every server is started with a marker in its environment; every process that
carries the marker (workers, fork-server, user processes all inherit it) must be
gone when it is stopped, or the leftovers are killed and an AssertionError raised.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import psutil

from htagweb.connections import PROTOCOL_PATH

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"(?:Uvicorn running on|Listening at:) http://127\.0\.0\.1:(\d+)")


#: htagweb's HTTP protocol, with its limits on connections
LIMITED = PROTOCOL_PATH

def marked_processes(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("HTAGWEB_TEST_MARKER") == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


class ServerProcess:
    """A server in a subprocess, ``srv.py`` written from ``source`` in its work folder.

    In ``source``, ``RUNTIME_DIR`` names a fresh private runtime directory.
    """

    def __init__(
        self, source: str, workdir: Path, extra_files: dict[str, str] | None = None, python: str = sys.executable, http: str = LIMITED
    ) -> None:
        self.workdir = workdir
        self.python = python
        #: uvicorn's --http: htagweb's protocol, as deployed (docs/deploy.md)
        self.http = http
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="hw-"))  # short: Unix socket paths are limited
        self.runtime_dir.rmdir()  # htagweb creates it, private
        header = f"RUNTIME_DIR = {str(self.runtime_dir)!r}\n"
        (workdir / "srv.py").write_text(header + textwrap.dedent(source))
        for name, text in (extra_files or {}).items():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            (workdir / name).write_text(textwrap.dedent(text))
        self.marker = uuid.uuid4().hex
        #: the server's output goes to a file, not a pipe: no reader thread competes with a client in this process
        self.log_path = workdir / f"server-{self.marker[:8]}.log"  # several servers may share a folder
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(
        self,
        *uvicorn_args: str,
        command: list[str] | None = None,
        gunicorn: bool = False,
        script: str | None = None,
        default_runtime_dir: bool = False,
    ) -> ServerProcess:
        """``uvicorn srv:app`` with ``uvicorn_args`` (gunicorn's arguments with ``gunicorn``),
        ``python -m htagweb`` with ``command``, or ``python SCRIPT`` with ``script`` (its
        ``app.run(port=0)`` serving on a free port). ``default_runtime_dir``: no
        ``HTAGWEB_RUNTIME_DIR`` in the environment (the caller removes the directory)."""
        self.args = (uvicorn_args, command, gunicorn, script, default_runtime_dir)
        env = {
            **os.environ,
            "HTAGWEB_TEST_MARKER": self.marker,
            # process titles (htagweb's, gunicorn's) must not overwrite the environment the marker is read from
            "SPT_NOENV": "1",
            "HTAGWEB_RUNTIME_DIR": str(self.runtime_dir),
            "PYTHONPATH": f"{ROOT}{os.pathsep}{self.workdir}",
            "PYTHONUNBUFFERED": "1",  # every print reaches the log as in a terminal, even from a process ended by os._exit
        }
        if default_runtime_dir:
            del env["HTAGWEB_RUNTIME_DIR"]
        if script is not None:
            cmd = [self.python, script]
        elif command is not None:
            cmd = [self.python, "-m", "htagweb", *command, "--port", "0"]
        elif gunicorn:
            cmd = [self.python, "-m", "gunicorn", "-k", "htagweb.workers.UvicornWorker", "-b", "127.0.0.1:0", *uvicorn_args, "srv:app"]
        else:
            cmd = [self.python, "-m", "uvicorn", "srv:app", "--host", "127.0.0.1", "--port", "0", "--no-proxy-headers"]
            cmd += ["--http", self.http, *uvicorn_args]
        # a process group of its own, as a server started from a terminal: Ctrl-C signals the group
        with open(self.log_path, "a") as output:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        self.port = 0
        while not self.port and self.proc.poll() is None and time.monotonic() < deadline:
            match = READY.search(self.log)
            if match:
                self.port = int(match.group(1))
            else:
                time.sleep(0.02)
        if not self.port:
            self.stop()
            raise RuntimeError("server did not start:\n" + self.log)
        flag = next((f for f in ("--workers", "-w") if f in uvicorn_args), None)
        workers = int(uvicorn_args[uvicorn_args.index(flag) + 1]) if flag else 1
        self.wait_log(rf"(Application startup complete[\s\S]*){{{workers}}}", timeout=60)
        return self

    def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait for a log line (the server's own account of an event, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log)
            if match:
                return match
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}:\n{self.log}")

    def restart(self) -> ServerProcess:
        """Stop (checked as ``stop`` does) and start again on the same runtime directory."""
        self.halt()
        self.log_path.unlink(missing_ok=True)
        uvicorn_args, command, gunicorn, script, default_runtime_dir = self.args
        return self.start(*uvicorn_args, command=command, gunicorn=gunicorn, script=script, default_runtime_dir=default_runtime_dir)

    def processes(self) -> list[psutil.Process]:
        """Every live process of this server: workers, fork-server, user processes."""
        return marked_processes(self.marker)

    def stop(self) -> None:
        """Stop, then remove the runtime directory."""
        try:
            self.halt()
        finally:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def halt(self, sig: int = signal.SIGINT, group: bool = True) -> None:
        """Ctrl-C as in a terminal (SIGINT to the server's process group), or ``sig``
        (to the group, or the server's main process only); then nothing of ours may be left."""
        if self.proc and self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        deadline = time.monotonic() + 15
        while marked_processes(self.marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        leftovers = marked_processes(self.marker)
        for proc in leftovers:
            proc.kill()
        sockets = list(self.runtime_dir.rglob("*.sock")) if self.runtime_dir.exists() else []
        assert not leftovers, f"processes left after stop: {leftovers}\n{self.log}"
        assert not sockets, f"sockets left after stop: {sockets}"
