"""Servers in subprocesses for the benchmarks, started on free ports and always stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"(?:Uvicorn running on|Listening at:) http://127\.0\.0\.1:(\d+)")

COUNTER_APP = '''
import logging
from htag import State, Tag

logging.getLogger("htag").setLevel(logging.WARNING)


class App(Tag.App):
    def init(self):
        self.count = State(0)
        Tag.p(lambda: f"Count: {self.count.value}", _id="count")
        Tag.button("+1", _id="inc", _onclick=self.inc)

    def inc(self, event):
        self.count.value += 1
'''


class Server:
    """``python -m uvicorn bench_app:app`` (or gunicorn) with ``source`` appended to the counter app."""

    def __init__(self, source: str, *args: str, python: str = sys.executable, gunicorn: bool = False) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="hwb-"))
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="hwb-rt-"))
        self.runtime_dir.rmdir()
        (self.workdir / "bench_app.py").write_text(COUNTER_APP + source.replace("RUNTIME_DIR", repr(str(self.runtime_dir))))
        self.marker = uuid.uuid4().hex
        env = {**os.environ, "HTAGWEB_BENCH_MARKER": self.marker, "PYTHONPATH": f"{ROOT}{os.pathsep}{self.workdir}"}
        if gunicorn:
            cmd = [python, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-b", "127.0.0.1:0", *args, "bench_app:app"]
        else:
            cmd = [python, "-m", "uvicorn", "bench_app:app", "--host", "127.0.0.1", "--port", "0", "--no-access-log", *args]
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.port = 0
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stderr
            for line in self.proc.stderr:
                match = READY.search(line)
                if match:
                    self.port = int(match.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60) or not self.port:
            self.stop()
            raise RuntimeError("server did not start")
        time.sleep(1.0)  # all workers up

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def processes(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("HTAGWEB_BENCH_MARKER") == self.marker:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        for proc in self.processes():
            proc.kill()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
