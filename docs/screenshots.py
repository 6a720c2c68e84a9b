"""Regenerates docs/index.png: ``python -m htagweb examples``, run from the repository's
root as the README shows it, photographed in headless Debian Chromium.

    .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="hws-") as folder:
        log = Path(folder) / "server.log"
        env = {**os.environ, "HTAGWEB_RUNTIME_DIR": str(Path(folder) / "rt")}
        with open(log, "w") as output:
            server = subprocess.Popen(
                [sys.executable, "-m", "htagweb", "examples", "--port", "0"], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + 30
            while not (match := re.search(r"Uvicorn running on (http://\S+)", log.read_text())):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start:\n" + log.read_text())
                time.sleep(0.05)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
                page = browser.new_page(viewport={"width": 1000, "height": 420})
                page.goto(match.group(1) + "/")
                page.wait_for_selector("ul.entries")
                page.screenshot(path=str(ROOT / "docs" / "index.png"))
                browser.close()
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(30)
    print("wrote docs/index.png")


if __name__ == "__main__":
    main()
