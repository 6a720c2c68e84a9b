"""Builds the parano JS crypto fallback when the Python package is built.

Parano pages need cryptography in the browser; where WebCrypto is missing (plain
HTTP to a non-local host name) they use the audited noble libraries, bundled here
from the npm registry (``htagweb/js/package-lock.json`` pins them and the bundler)
into ``htagweb/js/noble.min.js``, which is never committed. Without Node.js and npm
the package still installs, and says what plain-HTTP visitors will get.
Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

JS = Path(__file__).resolve().parent / "htagweb" / "js"
BUNDLE = "noble.min.js"


def say(text: str) -> None:
    print(f"htagweb: {text}", file=sys.stderr, flush=True)


def build_js(js: Path = JS) -> bool:
    """``npm ci`` (when node_modules is missing or older than the lock file), then the bundle.
    False, having said why, when it cannot be built."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        say(
            "WARNING: Node.js and npm not found, so the parano JS crypto fallback "
            f"({js / BUNDLE}) is not built: parano servers will refuse visitors on plain HTTP to a "
            "non-local host name (HTTPS, localhost and kiosk files still work). Install Node.js >= 20.19 "
            "and npm, then reinstall htagweb."
        )
        return False
    installed = js / "node_modules" / ".package-lock.json"
    try:
        if not installed.exists() or installed.stat().st_mtime < (js / "package-lock.json").stat().st_mtime:
            say("npm ci (noble crypto libraries and esbuild, versions pinned by package-lock.json)")
            # no install scripts: the libraries have none, and esbuild finds its binary without its own
            subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=js, check=True)
        subprocess.run([npm, "run", "--silent", "build"], cwd=js, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        say(f"WARNING: building the parano JS crypto fallback failed ({exc}): parano servers will refuse "
            "visitors on plain HTTP to a non-local host name.")  # fmt: skip
        return False
    say(f"built {js / BUNDLE} ({(js / BUNDLE).stat().st_size} bytes)")
    return True


class BuildPyWithJs(build_py):
    def run(self) -> None:
        build_js()
        super().run()


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithJs})
