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


@contextmanager
def chromium(*extra_args: str) -> Iterator[Browser]:
    """A browser that is closed whatever happens."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=EXECUTABLE, headless=True, args=[*ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()
