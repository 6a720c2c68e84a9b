"""Daemonising: the fork-server is forked from the first worker that needs it, then
detached into a session of its own, so that a worker that dies or a Ctrl-C in the
terminal does not take it down.
"""

from __future__ import annotations

import logging
import os
import traceback

from ..appspec import AppSpec
from ..config import Config
from ..runtime import Runtime
from .loop import ForkServer

logger = logging.getLogger("htagweb")


def start(runtime: Runtime, config: Config, apps: dict[str, AppSpec]) -> None:
    """Fork a detached fork-server; return once its socket accepts connections."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork():
                os._exit(0)
            _release_inherited_fds(keep={ready_w})
            ForkServer(runtime, config, apps).run(ready_w)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)
    os.close(ready_w)
    os.waitpid(pid, 0)
    try:
        if os.read(ready_r, 1) != b"1":
            raise RuntimeError(f"htagweb fork-server failed to start in {runtime.path} (see the log above)")
    finally:
        os.close(ready_r)


def _release_inherited_fds(keep: set[int]) -> None:
    """Let go of the worker's sockets (its listening port above all) and files.

    Each inherited descriptor is pointed at /dev/null rather than closed: the
    worker's objects still alive here (servers, event loops, temp files) may
    close their descriptor number when collected, and that number must never be
    one of ours. Kept: stdio, ``keep``, and the streams of logging handlers.
    """
    keep = set(keep) | {0, 1, 2}
    for handler in logging.root.handlers + logger.handlers + logging.getLogger("uvicorn").handlers:
        stream = getattr(handler, "stream", None)
        try:
            keep.add(stream.fileno())  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            pass
    try:
        inherited = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        inherited = list(range(3, 4096))
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in inherited:
        if fd not in keep and fd != devnull:
            try:
                os.dup2(devnull, fd)
            except OSError:
                pass  # not open (any more)
