"""Headless Debian Chromium through playwright, as the project's browser tests use it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, sync_playwright

EXECUTABLE = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: a host name that is not local: over plain HTTP, pages there are not a secure context
#: (no ``crypto.subtle``), as on a LAN address; tests reach 127.0.0.1 under it with LAN_RULE
LAN_HOST = "lanbox.test"
LAN_RULE = f"--host-resolver-rules=MAP {LAN_HOST} 127.0.0.1"


@contextmanager
def chromium(*extra_args: str) -> Iterator[Browser]:
    """A browser that is closed whatever happens."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=EXECUTABLE, headless=True, args=[*ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()
