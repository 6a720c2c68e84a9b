"""Logging as a library should do it: htagweb's and htag's loggers only, never the root.

htag logs at INFO every event it receives, with what the user typed in it
(``handle_event {... 'value': ...}``): its loggers are kept at WARNING unless the
program set their level itself. htag also prints each handler error to stdout
just before logging the same text at ERROR: user processes drop that print
(:class:`HtagErrorPrintFilter`), so an error is written once, through logging.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

FORMAT = "%(levelname)s:     %(name)s: %(message)s"
#: what uvicorn's default WebSocket protocol logs at ERROR, with a traceback, for each text message
#: that is not UTF-8, before it closes the socket 1007
NOT_UTF8 = "Invalid UTF-8 sequence received from client."
#: how htag's error prints begin (htag/runner.py), each followed by a logger.error of the same text
HTAG_ERROR_PRINTS = ("Error in ", "Error during render/update collection: ")


def quiet_htag() -> None:
    """htag's INFO lines carry what users type: below INFO unless the program chose a level."""
    htag = logging.getLogger("htag")
    if htag.level == logging.NOTSET:
        htag.setLevel(logging.WARNING)


def configure() -> None:
    """What ``app.run()`` and ``python -m htagweb`` do: htagweb's INFO lines and htag's
    warnings printed to stderr, unless the program configured logging already.
    uvicorn configures its own loggers; the root logger stays untouched."""
    quiet_htag()
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    for name in ("htagweb", "htag"):
        logger = logging.getLogger(name)
        if not any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(handler)
    htagweb = logging.getLogger("htagweb")
    if htagweb.level == logging.NOTSET:
        htagweb.setLevel(logging.INFO)


class ClientFaultFilter(logging.Filter):
    """uvicorn's ERROR with a traceback for a client's text message that is not UTF-8 becomes a
    WARNING line: the fault is the client's, and any client can send as many as it likes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == NOT_UTF8 and record.levelno == logging.ERROR:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def quiet_client_faults() -> None:
    """uvicorn's loggers tell a client's fault as a client's (see :class:`ClientFaultFilter`)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ClientFaultFilter) for f in logger.filters):
        logger.addFilter(ClientFaultFilter())


class HtagErrorPrintFilter:
    """stdout minus htag's error prints (the same text is logged right after them)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._dropped = False

    def write(self, text: str) -> int:
        dropped, self._dropped = self._dropped, False
        if text.startswith(HTAG_ERROR_PRINTS) and "Traceback (most recent call last)" in text:
            self._dropped = True
            return len(text)
        if dropped and text == "\n":  # the end of the dropped print
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


def drop_htag_error_prints() -> None:
    """In a user process: htag's handler errors reach the log once, through logging."""
    if not isinstance(sys.stdout, HtagErrorPrintFilter) and sys.stdout is not None:
        sys.stdout = HtagErrorPrintFilter(sys.stdout)  # type: ignore[assignment]
