"""The fork-server's listening socket, where workers (and ``htagweb ps``) connect.

Accepting takes a descriptor. A fork-server that has none left (it holds two per process,
and ``max_processes`` may be set above its limit of open files) cannot accept: the
connection waits in the backlog, and the listener is left alone for :data:`ACCEPT_RETRY`
seconds, as asyncio's own servers do, instead of raising out of the loop (which ended
every user's process) or spinning on a socket that stays readable.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable
from pathlib import Path

from .children import listen

logger = logging.getLogger("htagweb")

#: seconds before a connection is accepted again after a refusal (no descriptor left)
ACCEPT_RETRY = 1.0


class Listener:
    def __init__(self, path: Path, selector: selectors.BaseSelector, on_connection: Callable[[socket.socket], None]) -> None:
        self.sock = listen(path)
        self.sock.setblocking(False)
        self.selector = selector
        self.on_connection = on_connection
        #: since when accepting is paused (None: it is not)
        self.paused_at: float | None = None
        #: accepting failed, and has not worked again since
        self.refused = False
        self.selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def fileno(self) -> int:
        return self.sock.fileno()

    def timeout(self) -> float:
        """Seconds until accepting resumes (a long time if it is not paused)."""
        if self.paused_at is None:
            return 3600.0
        return max(0.0, self.paused_at + ACCEPT_RETRY - time.monotonic())

    def resume_when_due(self) -> None:
        if self.paused_at is not None and not self.timeout():
            self.paused_at = None
            self.selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def _accept(self, mask: int) -> None:
        try:
            sock, _ = self.sock.accept()
        except BlockingIOError:
            return
        except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: it waits in the backlog
            if not self.refused:
                logger.warning("fork-server: cannot accept a connection (%s): it waits, tried again every %gs", exc, ACCEPT_RETRY)
            self.refused = True
            self.paused_at = time.monotonic()
            self.selector.unregister(self.sock)
            return
        if self.refused:
            logger.info("fork-server: connections are accepted again")
            self.refused = False
        sock.setblocking(False)
        self.on_connection(sock)
